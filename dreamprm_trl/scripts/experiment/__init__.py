"""The test-time-scaling experiment: label, train every PRM variant, rerank held-out candidates, one table.

This is the logic behind ``dreamprm-code train``, ``accelerate launch examples/train.py`` and
``benchmarks/bench_quality.py`` (all parse arguments with `dreamprm_trl.scripts.train.make_parser` and call
:func:`run_experiment`). With no arguments it runs offline on bundled ClassEval
(``--dataset classeval``): class-level programs whose methods are the steps (5 per program on average), 5 LLMs'
candidates per task, Monte-Carlo step labels from :class:`~dreamprm_trl.labeling.generators.PoolGenerator`, and
method-level tests that give every step its true label. ``--dataset humaneval`` (CodeGen-16B candidates, almost all
single-function programs) and ``--dataset both`` stay available.

Data flow (the paper's, and the same for every variant):

* problems are split three ways, disjoint: **held-out** problems (reranked, never trained on), **trajectory**
  problems (``trajectories`` candidates each, Monte-Carlo labelled) and **meta** problems (their
  ``num_candidates`` complete programs with clean unit-test verdicts);
* trained rows are the trajectories' **non-final prefixes** with their MC labels (a complete program's verdict is
  clean and never a learnable label);
* label correction and reweighting use the meta programs as the meta set (the trainer warms up on both); the
  variants without a meta step train on the prefixes plus the meta programs (final step labelled with its
  verdict), so every PRM sees the same problems, trajectories and rollouts; the ORM trains on the same
  trajectories' and meta programs' verdicts, one step per program;
* line-as-step uses :func:`~dreamprm_trl.steps.split_line_chunks`: as many line-aligned steps as the program has
  functions, so it gets the same number of labelled prefixes and the same rollout budget; only where the cuts
  fall differs.

The table: reranked pass@1 of each row on the held-out problems, with its CI, its paired difference to random,
and to "parses, then random" (drop candidates that do not parse, pick at random): the floor any learnt scorer
must clear. The public-test rows filter with the statement's examples (none in ClassEval: they equal random
there). On ClassEval, the MAE and AUROC of the MC labels and of the corrected labels against method-level truth
are reported in the same run.

Files: `arguments` (the flags and the variants), `data` (loading, splits, labels, each variant's datasets),
`variants` (backbone, PRM, training, scoring), `table` (rows, CIs, Markdown report), `run` (`run_experiment`).
"""

from .arguments import DATASETS, DEMO_TRAINING_DEFAULTS, QUICK, VARIANTS, ExperimentArguments, Variant
from .data import split_problems, three_way_split
from .run import run_experiment
from .table import format_table, render

__all__ = ["DATASETS", "DEMO_TRAINING_DEFAULTS", "ExperimentArguments", "QUICK", "VARIANTS", "Variant",
           "format_table", "render", "run_experiment", "split_problems", "three_way_split"]
