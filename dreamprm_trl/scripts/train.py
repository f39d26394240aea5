"""Train DreamPRM-Code and print the test-time-scaling table: the one code path behind ``dreamprm-code train`` and
``accelerate launch examples/train.py`` (both call `main`).

Flags are the fields of `ExperimentArguments` (the model as ``--backbone``, your files as ``--problems`` /
``--candidates`` or the bundled sets as ``--dataset``, the variants, the labelling) and of `FunctionStepPRMConfig`
(every training field), parsed by a `trl.TrlParser`; ``--config run.yaml`` sets any of them from YAML (flags on
the command line win). Defaults are the embedded CPU demo's (`DEMO_TRAINING_DEFAULTS`), shown in ``--help``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dreamprm_trl.training import FunctionStepPRMConfig

from .experiment import DEMO_TRAINING_DEFAULTS, ExperimentArguments, render, run_experiment

DESCRIPTION = ("Label, train every PRM variant and print the reranking table on held-out problems. "
               "--config FILE.yaml sets any flag below from YAML; flags given on the command line win.")


def make_parser(prog: str | None = None, parser_class: type | None = None) -> Any:
    """The `trl.TrlParser` of `ExperimentArguments` and `FunctionStepPRMConfig`, with the demo's defaults.

    ``parser_class`` is a `TrlParser` subclass to build instead (the CLI's, whose usage errors are one line)."""
    from trl import TrlParser

    parser = (parser_class or TrlParser)((ExperimentArguments, FunctionStepPRMConfig), prog=prog,
                                         description=DESCRIPTION)
    parser.set_defaults(**DEMO_TRAINING_DEFAULTS)
    return parser


def main(argv: Sequence[str] | None = None, prog: str | None = None, parser_class: type | None = None
         ) -> dict[str, Any]:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and ``--config``, run `run_experiment`, print the table on the
    main process, and return the results."""
    parser = make_parser(prog, parser_class)
    experiment_args, training_args = parser.parse_args_and_config(None if argv is None else list(argv))
    results = run_experiment(experiment_args, training_args)
    if training_args.process_index == 0:
        print(render(results))
    return results
