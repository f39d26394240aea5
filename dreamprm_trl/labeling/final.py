"""Clean labels: each candidate program's unit-test verdict (the meta set, and the last step of every trajectory)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from datasets import Dataset

from .. import schema
from ..sandbox import SandboxedExecutor
from ..steps import Step, split_steps
from .stats import LabelingStats, report
from .units import (
    DEFAULT_MAX_CODE_CHARS, Trajectories, items_to_label, run_units, setup, to_dataset, verdict_units, verdicts,
)

if TYPE_CHECKING:
    from ..problems import Problem

__all__ = ["label_final", "COLUMNS"]

#: The columns `label_final` writes, in order.
COLUMNS = [schema.TASK_ID, schema.PROMPT, schema.CODE, schema.STEPS, schema.VERDICT, "per_test", "status"]


def label_final(
    problems: Iterable[Problem],
    candidates: Trajectories,
    executor: SandboxedExecutor | None = None,
    splitter: Callable[[str], list[Step]] = split_steps,
    cache_dir: str | os.PathLike | None = None,
    shard: tuple[int, int] | str = (0, 1),
    progress: bool = True,
    return_stats: bool = False,
    max_code_chars: int | None = DEFAULT_MAX_CODE_CHARS,
) -> Dataset | tuple[Dataset, LabelingStats]:
    """Clean labels: run each candidate program (full source) against its problem's tests.

    ``candidates`` maps task id to programs (or is an iterable of ``(task_id, program)``). Rows:
    ``task_id, prompt, code, steps, passed, per_test, status``. Programs that do not parse are kept (they are
    genuine failures; their steps are blank-line blocks). Candidates without a problem, problems without tests,
    programs longer than ``max_code_chars`` (None: no cap) and programs the executor skips (missing third-party
    imports) are bad rows: counted in the returned stats and warned about, never silently dropped. A program on
    which the executor raises is a failure whose ``status`` is ``runtime_error`` (the exception is logged and
    counted in ``stats.executor_errors``), and is not cached, so a rerun retries it.
    """
    executor, stats, index, mine, cache = setup(problems, candidates, executor, shard, cache_dir)
    items = items_to_label(mine, index, executor.config(), stats, splitter, need_steps=False,
                           max_code_chars=max_code_chars)
    run_units(verdict_units(items), cache, executor, stats, "label final", progress)
    rows = [
        {schema.TASK_ID: item.problem.task_id, schema.PROMPT: item.problem.prompt, schema.CODE: item.code,
         schema.STEPS: [s.text for s in item.steps], schema.VERDICT: rec[schema.VERDICT], "per_test": rec["per_test"],
         "status": rec["status"]}
        for item, rec in verdicts(items, cache, stats)
    ]
    stats.labelled = len(rows)
    report(stats)
    ds = to_dataset(rows, COLUMNS)
    return (ds, stats) if return_stats else ds
