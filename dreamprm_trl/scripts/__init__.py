"""Recipes built on the library, like ``trl/scripts``: the test-time-scaling experiment (`experiment`), the
training entry point shared by ``dreamprm-code train`` and ``examples/train.py`` (`train`), and the demo and
test backbones (`demo_backbones`). Nothing in the library proper imports from here."""
