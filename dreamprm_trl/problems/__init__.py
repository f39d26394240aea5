"""Coding problems from every source as one `Problem` type, loaded offline, plus the data the project ships.

- `problem`: `Problem`, the benchmark preludes, and the round trip through ``datasets.Dataset`` rows;
- `humaneval`, `mbpp`, `classeval`, `livecodebench`: one loader per benchmark, each returning ``list[Problem]``
  whose ``tests`` is an ``sandbox.TestSuite``; bad rows raise ``ValueError`` naming the file, row and field;
- `bundled`: the shipped ClassEval tasks and the HumanEval / ClassEval candidates;
- `rows`: the one reader of JSON / JSON Lines row files; `files`: problems and candidates named by a CLI spec.
"""

from .bundled import (
    BUNDLED, load_bundled_classeval, load_bundled_classeval_candidates, load_bundled_humaneval_candidates,
    load_bundled_humaneval_reference_labels,
)
from .classeval import load_classeval
from .files import load_candidates, load_problems
from .humaneval import docstring_asserts, load_humaneval
from .livecodebench import load_livecodebench
from .mbpp import load_mbpp
from .problem import PRELUDES, STYLES, Problem, problems_from_dataset, problems_to_dataset
from .rows import read_rows

__all__ = [
    "BUNDLED", "PRELUDES", "STYLES", "Problem", "docstring_asserts", "load_bundled_classeval",
    "load_bundled_classeval_candidates", "load_bundled_humaneval_candidates", "load_bundled_humaneval_reference_labels",
    "load_candidates", "load_classeval", "load_humaneval", "load_livecodebench", "load_mbpp", "load_problems",
    "problems_from_dataset", "problems_to_dataset", "read_rows",
]
