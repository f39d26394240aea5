"""The row format, in one place: column names, label and verdict keys, the ignore index, grouping by task.

Every stage reads and writes rows through these names. Standard library only (the sandbox side, the labelling
side and the trainer all import it).

- step rows: ``{"task_id", "prompt", "steps", "mc_labels" | "labels", "label_fixed"?}``; one label per step, ``None``
  where a step has none (the collator turns it into `IGNORE_INDEX`);
- complete programs: ``{"task_id", "prompt", "code" | "steps", "passed"}``, the clean unit-test verdict.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

TASK_ID = "task_id"
PROMPT = "prompt"
STEPS = "steps"
CODE = "code"
COMPLETIONS = "completions"  # TRL's stepwise-supervision name for the steps
STEP_COLUMNS = (STEPS, CODE, COMPLETIONS)

LABELS = "labels"  # TRL's stepwise-supervision name
MC_LABELS = "mc_labels"  # what `label_steps` writes: Monte-Carlo pass rates, the verdict as the last step's label
LABEL_COLUMNS = (LABELS, MC_LABELS)  # the order a reader tries them in when no `label_key` is given
VERDICT = "passed"  # a complete program's unit-test verdict (bool): the clean label
LABEL_FIXED = "label_fixed"  # per step: True where the label is clean (a verdict), never a meta-parameter
ROW_ID = "row_id"
WEIGHT = "weight"

IGNORE_INDEX = -100  # a step with no label, or a padded step slot (PyTorch's cross-entropy convention)


def label_key(columns: Iterable[str], key: str | None = None) -> str | None:
    """The step-label column among ``columns``: ``key`` if given, else the first of `LABEL_COLUMNS` present."""
    cols = set(columns)
    if key is not None:
        return key if key in cols else None
    return next((k for k in LABEL_COLUMNS if k in cols), None)


def group_by_task(task_ids: Sequence[Any], *columns: Sequence[Any]) -> dict[Any, tuple[list[Any], ...]]:
    """Group parallel ``columns`` by ``task_ids``, keeping first-seen task order and the order within a task.

    ``group_by_task(["a", "b", "a"], [1, 2, 3])`` is ``{"a": ([1, 3],), "b": ([2],)}``.
    """
    for i, col in enumerate(columns):
        if len(col) != len(task_ids):
            raise ValueError(f"group_by_task: column {i} has {len(col)} values for {len(task_ids)} task ids.")
    groups: dict[Any, tuple[list[Any], ...]] = {}
    for j, task in enumerate(task_ids):
        lists = groups.setdefault(task, tuple([] for _ in columns))
        for out, col in zip(lists, columns):
            out.append(col[j])
    return groups
