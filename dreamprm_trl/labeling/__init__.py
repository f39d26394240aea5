"""Step labels for process reward models: clean whole-program verdicts and Monte-Carlo prefix labels.

- `final`: :func:`label_final` runs each candidate program against its problem's tests (the clean meta set);
- `monte_carlo`: :func:`label_steps` labels each prefix with the pass rate of M policy rollouts;
- `ground_truth`: :func:`step_ground_truth`, method-level truth for ClassEval-style problems, to measure that noise;
- `generators`: the rollout policies; `cache`: the resumable cache and sharding; `units`: the engine both
  labellers share; `stats`: what a run did; `save`: writing the result.
"""

from .cache import LabelCache, parse_shard, shard_of
from .final import label_final
from .ground_truth import step_ground_truth
from .monte_carlo import label_steps
from .save import save_labels
from .stats import LabelingStats
from .units import DEFAULT_MAX_CODE_CHARS, DEFAULT_MAX_STEPS, EXECUTOR_ERROR

__all__ = [
    "DEFAULT_MAX_CODE_CHARS", "DEFAULT_MAX_STEPS", "EXECUTOR_ERROR", "LabelCache", "LabelingStats", "label_final",
    "label_steps", "parse_shard", "save_labels", "shard_of", "step_ground_truth",
]
