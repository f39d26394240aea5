"""Monte-Carlo step labels (DreamPRM-Code section 3): for each prefix (first k steps) of a trajectory, sample M
completions from a policy and label the step with the fraction that pass (soft, noisy). The last step's label is the
program's own verdict, flagged clean.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from datasets import Dataset

from .. import schema
from ..sandbox import SandboxedExecutor
from ..steps import Step, split_steps
from .cache import CACHE_VERSION, content_hash
from .generators.base import Generator
from .stats import LabelingStats, report
from .units import (
    DEFAULT_MAX_CODE_CHARS, DEFAULT_MAX_STEPS, Item, Trajectories, items_to_label, problem_key, run_units, setup,
    to_dataset, verdict_units, verdicts,
)

if TYPE_CHECKING:
    from ..problems import Problem

__all__ = ["label_steps", "COLUMNS"]

#: The columns `label_steps` writes, in order.
COLUMNS = [schema.TASK_ID, schema.PROMPT, schema.CODE, schema.STEPS, schema.MC_LABELS, "rollout_counts", "pass_counts",
           "rollout_outcomes", "per_test", schema.VERDICT, "source", "generator", schema.LABEL_FIXED]


def label_steps(
    problems: Iterable[Problem],
    trajectories: Trajectories,
    generator: Generator,
    rollouts: int = 16,
    temperature: float = 0.3,
    executor: SandboxedExecutor | None = None,
    cache_dir: str | os.PathLike | None = None,
    shard: tuple[int, int] | str = (0, 1),
    splitter: Callable[[str], list[Step]] = split_steps,
    max_new_tokens: int = 512,
    source: str = "",
    chunk_programs: int = 128,
    progress: bool = True,
    return_stats: bool = False,
    max_code_chars: int | None = DEFAULT_MAX_CODE_CHARS,
    max_steps: int | None = DEFAULT_MAX_STEPS,
) -> Dataset | tuple[Dataset, LabelingStats]:
    """Monte-Carlo step labels: ``mc_labels[k]`` = share of ``rollouts`` completions of ``steps[:k+1]`` that pass.

    The last step's label is the program's own verdict (``rollout_counts[-1] == 1``): a clean label, flagged in
    ``label_fixed`` (``[False, ..., False, True]``) so the trainer keeps it a fixed target and never a
    meta-parameter; only the non-final prefixes' Monte-Carlo labels are learnable. A prefix whose rollouts
    all came back empty or skipped (e.g. a pool without donors) gets ``None`` and is counted in the stats.
    Rows: ``task_id, prompt, code, steps, mc_labels, rollout_counts, pass_counts, rollout_outcomes, per_test,
    passed, source, generator, label_fixed`` (`COLUMNS`; ``passed`` is the program's verdict, `schema.VERDICT`, as
    in `label_final`; ``generator`` is the generator's config as JSON). ``rollout_outcomes[k]`` lists each
    rollout's verdict in order, so the labels for any M' < M are read off its first M' entries; ``per_test``
    is the program's per-test verdicts (see :func:`step_ground_truth`).

    With ``cache_dir`` set, every finished unit (a prefix with its rollout batch, or a program's verdict) is
    appended to an fsync'd cache keyed by a hash of (problem, prefix, generator config, rollouts, temperature,
    max_new_tokens, executor config); rerunning the same call resumes where a crash left off. Prefixes shared
    by several trajectories are rolled out once (unless the generator excludes the source trajectory, as
    :class:`~dreamprm_trl.labeling.generators.PoolGenerator` does). ``shard=(i, n)`` (or ``"i/n"``) labels only the
    trajectories :func:`shard_of` assigns to shard i. Programs that do not parse, problems without tests and
    programs the executor skips are bad rows: counted, warned about, never silently dropped.

    Work proceeds in chunks of about ``chunk_programs`` programs (generate, execute, append to the cache):
    larger chunks keep more generation requests in flight, smaller ones lose less to a crash and move the
    progress bar (programs executed, pass rate so far) more often.

    Bounds: a program longer than ``max_code_chars`` or with more than ``max_steps`` steps (``max_steps - 1``
    prefixes, each rolled out ``rollouts`` times) is a bad row with that reason (None: no cap). Prefix texts
    are built one chunk at a time, so memory stays linear in the program's size.
    """
    if rollouts < 1:
        raise ValueError(f"rollouts must be >= 1, got {rollouts}.")
    executor, stats, index, mine, cache = setup(problems, trajectories, executor, shard, cache_dir)
    items = items_to_label(mine, index, executor.config(), stats, splitter, need_steps=True,
                           max_code_chars=max_code_chars, max_steps=max_steps)
    cfg = {"generator": generator.config(), "rollouts": rollouts, "temperature": temperature,
           "max_new_tokens": max_new_tokens, "executor": executor.config()}
    units = _prefix_units(items, cfg, exclude_source=bool(getattr(generator, "excludes_source", False)))

    run_units(verdict_units(items), cache, executor, stats, "label steps: programs", progress)
    judged = verdicts(items, cache, stats)
    wanted = {key for item, _ in judged for key in item.prefix_keys}
    run_units([u for u in units if u["key"] in wanted], cache, executor, stats, "label steps: rollouts", progress,
              generator, rollouts, temperature, max_new_tokens, chunk_programs)

    gen_json = json.dumps(cfg["generator"], sort_keys=True, default=str)
    rows = [_row(item, final, [cache.get(key)["outcomes"] for key in item.prefix_keys], stats,
                 source or item.problem.source, gen_json) for item, final in judged]
    stats.labelled = len(rows)
    report(stats)
    ds = to_dataset(rows, COLUMNS)
    return (ds, stats) if return_stats else ds


def _prefix_units(items: list[Item], cfg: dict[str, Any], exclude_source: bool) -> list[dict[str, Any]]:
    """One rollout unit per non-final prefix of every item, keyed by everything that determines its outcomes."""
    units = []
    for item in items:
        pkey = problem_key(item.problem, item.suite)
        exclude = item.code if exclude_source else None
        for k in range(1, len(item.steps)):
            key = content_hash({"v": CACHE_VERSION, "kind": "prefix", "problem": pkey, "prefix": item.prefix(k),
                                "exclude": exclude, **cfg})
            item.prefix_keys.append(key)
            units.append({"key": key, "task_id": item.problem.task_id, "suite": item.suite, "item": item, "k": k,
                          "exclude": exclude})
    return units


def _row(item: Item, final: dict[str, Any], outcomes: list[list[bool]], stats: LabelingStats, source: str,
         gen_json: str) -> dict[str, Any]:
    """One labelled trajectory: a pass rate per prefix (None without rollouts), the verdict as the last label."""
    labels: list[float | None] = []
    for outs in outcomes:
        stats.prefixes_without_rollouts += not outs
        labels.append(sum(outs) / len(outs) if outs else None)
    passed = bool(final[schema.VERDICT])
    outcomes = [*outcomes, [passed]]
    labels.append(float(passed))
    return {
        schema.TASK_ID: item.problem.task_id, schema.PROMPT: item.problem.prompt, schema.CODE: item.code,
        schema.STEPS: [s.text for s in item.steps], schema.MC_LABELS: labels,
        "rollout_counts": [len(o) for o in outcomes], "pass_counts": [sum(o) for o in outcomes],
        "rollout_outcomes": outcomes, "per_test": final["per_test"], schema.VERDICT: passed, "source": source,
        "generator": gen_json, schema.LABEL_FIXED: [False] * (len(labels) - 1) + [True],
    }
