"""`split_by_task`: train and meta rows with disjoint problems (the meta set judges programs of unseen tasks)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def split_by_task(
    task_ids: Sequence[str], meta_fraction: float = 0.2, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Row indices ``(train, meta)`` with disjoint problems: a seeded ``meta_fraction`` of the distinct task ids
    goes to the meta set (at least one task each side). A task's side depends only on its id and ``seed`` (a
    seeded hash rank), so the experiment's problem splits use the same rule. Pure, no model needed."""
    tasks = sorted(set(task_ids))
    if len(tasks) < 2 or not 0.0 < meta_fraction < 1.0:
        raise ValueError(
            f"split_by_task needs >= 2 distinct task ids (got {len(tasks)}) and meta_fraction in (0, 1) "
            f"(got {meta_fraction})."
        )
    ranked = sorted(tasks, key=lambda t: hashlib.sha256(f"{seed}:{t}".encode()).hexdigest())
    n_meta = min(max(1, round(meta_fraction * len(tasks))), len(tasks) - 1)
    meta_tasks = set(ranked[:n_meta])
    train = [i for i, t in enumerate(task_ids) if t not in meta_tasks]
    meta = [i for i, t in enumerate(task_ids) if t in meta_tasks]
    return train, meta
