"""What a labelling run did (`LabelingStats`), including every input it could not label and why."""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["LabelingStats", "report"]

logger = logging.getLogger("dreamprm_trl.labeling")


@dataclass
class LabelingStats:
    """What a labelling run did, including every input it could not label and why."""

    trajectories: int = 0
    labelled: int = 0
    other_shard: int = 0
    programs_executed: int = 0
    programs_passed: int = 0
    units_from_cache: int = 0
    units_computed: int = 0
    prefixes_without_rollouts: int = 0
    executor_errors: int = 0
    bad_rows: list[dict[str, str]] = field(default_factory=list)

    @property
    def pass_rate(self) -> float:
        return self.programs_passed / self.programs_executed if self.programs_executed else float("nan")

    def bad(self, task_id: str, reason: str) -> None:
        self.bad_rows.append({"task_id": task_id, "reason": reason})

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "pass_rate": self.pass_rate}

    def summary(self) -> str:
        reasons: dict[str, int] = {}
        for row in self.bad_rows:
            kind = row["reason"].split(":", 1)[0]
            reasons[kind] = reasons.get(kind, 0) + 1
        bad = ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items())) or "none"
        return (
            f"{self.labelled}/{self.trajectories} trajectories labelled ({self.other_shard} in other shards), "
            f"{self.programs_executed} programs executed (pass rate {self.pass_rate:.3f}), "
            f"{self.units_from_cache} units from cache, {self.units_computed} computed, "
            f"{self.prefixes_without_rollouts} prefixes without rollouts, "
            f"{self.executor_errors} executor errors (failed, not cached); bad rows: {bad}"
        )


def report(stats: LabelingStats) -> None:
    """Log the summary; warn when inputs were skipped (bad rows, prefixes without rollouts, executor errors)."""
    logger.info(stats.summary())
    if stats.bad_rows or stats.prefixes_without_rollouts or stats.executor_errors:
        warnings.warn(f"Labelling skipped {len(stats.bad_rows)} bad row(s): {stats.summary()}", stacklevel=3)
