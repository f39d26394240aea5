"""The labelling engine shared by final and step labels: inputs to work units, units through the generator and the
sandbox a chunk at a time, results into the cache.

Bounded work: programs longer than ``max_code_chars`` and (for step labels) programs with more than ``max_steps``
steps are skipped as bad rows with that reason; prefixes are cut one chunk at a time, so memory grows with the
program, not with the sum of its prefixes. An exception from the executor on one program becomes that program's
failure (``runtime_error`` with the reason), is not cached (a rerun retries it), and never loses the batch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from datasets import Dataset
from tqdm.auto import tqdm

from ..sandbox import ExecutionResult, SandboxedExecutor, TestSuite
from ..steps import Step
from .cache import CACHE_VERSION, LabelCache, MemoryCache, content_hash, parse_shard, shard_of
from .generators.base import Generator, RolloutRequest, complete_prefixes
from .stats import LabelingStats

if TYPE_CHECKING:
    from ..problems import Problem

logger = logging.getLogger("dreamprm_trl.labeling")
DEFAULT_MAX_CODE_CHARS = 100_000  # longer programs are skipped (bad row "too large")
DEFAULT_MAX_STEPS = 64  # label_steps: more steps are skipped (bad row "too many steps"); K x M programs each
EXECUTOR_ERROR = "executor error"  # reason prefix of a program whose run raised in the executor

Trajectories = Mapping[str, Sequence[str]] | Iterable[tuple[str, str]]


def pairs_of(trajectories: Trajectories) -> list[tuple[str, str]]:
    if isinstance(trajectories, Mapping):
        return [(task_id, code) for task_id, codes in trajectories.items() for code in codes]
    return [(task_id, code) for task_id, code in trajectories]


def problem_index(problems: Iterable[Problem]) -> dict[str, Problem]:
    index: dict[str, Problem] = {}
    for problem in problems:
        if problem.task_id in index:
            raise ValueError(f"Duplicate task_id {problem.task_id!r} in problems; task ids must be unique.")
        index[problem.task_id] = problem
    return index


def suite_of(problem: Problem) -> TestSuite | None:
    try:
        suite = TestSuite.from_problem(problem)
    except ValueError:
        return None
    return suite if len(suite) > 0 else None


def problem_key(problem: Problem, suite: TestSuite) -> dict[str, Any]:
    return {"task_id": problem.task_id, "prompt": problem.prompt, "tests": suite.to_dict()}


def default_executor(executor: SandboxedExecutor | None) -> SandboxedExecutor:
    return executor if executor is not None else SandboxedExecutor(progress=False)


@dataclass
class Item:
    """One trajectory to label, with everything its cache keys are made of."""

    problem: Problem
    suite: TestSuite
    code: str
    steps: list[Step]
    final_key: str
    prefix_keys: list[str] = field(default_factory=list)

    def prefix(self, k: int) -> str:
        """The program's first ``k`` steps (built on demand: all prefixes together are quadratic in size)."""
        return "".join(s.text for s in self.steps[:k])


def items_to_label(
    pairs: list[tuple[str, str]],
    index: dict[str, Problem],
    exec_cfg: dict[str, Any],
    stats: LabelingStats,
    splitter: Callable[[str], list[Step]],
    need_steps: bool,
    max_code_chars: int | None,
    max_steps: int | None = None,
) -> list[Item]:
    """Trajectories that can be labelled; every other one becomes a counted bad row with its reason."""
    items = []
    for task_id, code in pairs:
        problem = index.get(task_id)
        if problem is None:
            stats.bad(task_id, "no problem: no Problem with this task_id was given; check the task ids against "
                               "the problems")
            continue
        suite = suite_of(problem)
        if suite is None:
            stats.bad(task_id, "no tests: the problem has no tests to run")
            continue
        if max_code_chars is not None and len(code) > max_code_chars:
            stats.bad(task_id, f"too large: {len(code)} characters > max_code_chars={max_code_chars}; raise "
                               "max_code_chars (--max_code_chars) to label it")
            continue
        steps = splitter(code)
        if need_steps and (not steps or any(s.kind == "block" for s in steps)):
            stats.bad(task_id, "unparsable: the program does not parse, so it has no function steps")
            continue
        if need_steps and max_steps is not None and len(steps) > max_steps:
            stats.bad(task_id, f"too many steps: {len(steps)} steps > max_steps={max_steps}; raise max_steps "
                               "(--max_steps) to label it")
            continue
        key = content_hash({"v": CACHE_VERSION, "kind": "final", "problem": problem_key(problem, suite), "code": code,
                     "executor": exec_cfg})
        items.append(Item(problem, suite, code, steps, key))
    return items


def _error_result(err: BaseException) -> ExecutionResult:
    reason = f"{EXECUTOR_ERROR}: {type(err).__name__}: {err}"
    return ExecutionResult(passed=False, status="runtime_error", reason=reason[:500])


def _run_guarded(executor: SandboxedExecutor, pairs: list[tuple[str, TestSuite]]) -> list[ExecutionResult]:
    """``executor.run_many(pairs)``, where an exception costs only the program that raised it.

    When the batch raises, each program is run alone; one that raises again gets a failed result whose reason
    starts with :data:`EXECUTOR_ERROR`. (Refusals that concern every program, such as the missing opt-in, are
    raised earlier: ``setup`` runs an empty batch.)
    """
    try:
        return executor.run_many(pairs)
    except Exception as err:  # noqa: BLE001 - any executor failure must cost one program, not the batch
        if len(pairs) == 1:
            logger.warning("The executor raised on one program: %s: %s", type(err).__name__, err)
            return [_error_result(err)]
        logger.warning("The executor raised on a batch of %d programs (%s: %s); running them one by one.",
                       len(pairs), type(err).__name__, err)
    return [_run_guarded(executor, [pair])[0] for pair in pairs]


def _rollout_request(unit: dict[str, Any]) -> RolloutRequest:
    item: Item = unit["item"]
    return RolloutRequest(item.problem.task_id, item.problem.prompt, item.prefix(unit["k"]), unit["exclude"])


def run_units(
    units: list[dict[str, Any]],
    cache: LabelCache,
    executor: SandboxedExecutor,
    stats: LabelingStats,
    desc: str,
    progress: bool,
    generator: Generator | None = None,
    rollouts: int = 0,
    temperature: float = 0.0,
    max_new_tokens: int = 0,
    chunk_programs: int = 128,
) -> None:
    """Compute every unit not yet in ``cache``, a chunk at a time; each finished chunk is appended at once.

    A unit is ``{"key", "task_id", "suite", "code"}`` (one program's verdict) or ``{"key", "task_id", "suite",
    "item", "k", "exclude"}`` (the prefix ``item.prefix(k)`` rolled out ``rollouts`` times; its text exists only
    while its chunk runs). Rollouts the executor skips (status ``skipped``, e.g. a missing third-party import)
    are not counted as passes or failures. A unit with an executor error is kept for this run only.
    """
    todo = _todo(units, cache, stats)
    per_unit = rollouts if generator is not None else 1
    chunk = max(1, chunk_programs // max(1, per_unit))
    bar = tqdm(total=len(todo) * per_unit, desc=desc, unit="prog", disable=not progress or not todo)
    for start in range(0, len(todo), chunk):
        batch = todo[start : start + chunk]
        if generator is not None:
            programs = complete_prefixes(generator, [_rollout_request(u) for u in batch], rollouts,
                                         temperature=temperature, max_new_tokens=max_new_tokens)
        else:
            programs = [[u["code"]] for u in batch]
        pairs = [(prog, u["suite"]) for u, progs in zip(batch, programs) for prog in progs]
        counts = [len(progs) for progs in programs]
        results = _run_guarded(executor, pairs) if pairs else []
        del programs, pairs  # a chunk's program texts are freed before the next chunk is generated
        _store(batch, counts, results, cache, stats, rollout=generator is not None)
        bar.update(len(batch) * per_unit)
        bar.set_postfix(executed=stats.programs_executed, pass_rate=f"{stats.pass_rate:.3f}")
    bar.close()


def _todo(units: list[dict[str, Any]], cache: LabelCache, stats: LabelingStats) -> list[dict[str, Any]]:
    """The units not in ``cache``, each key once, in order; the others are counted as from the cache."""
    todo, seen = [], set()
    for unit in units:
        if unit["key"] in cache:
            stats.units_from_cache += 1
        elif unit["key"] not in seen:
            seen.add(unit["key"])
            todo.append(unit)
    return todo


def _store(batch: list[dict[str, Any]], counts: list[int], results: list[ExecutionResult], cache: LabelCache,
           stats: LabelingStats, rollout: bool) -> None:
    """Append a chunk's records to ``cache`` (those with an executor error are held for this run only)."""
    records, held, pos = [], [], 0
    for unit, count in zip(batch, counts):
        res = results[pos : pos + count]
        pos += count
        errors = sum(r.reason.startswith(EXECUTOR_ERROR) for r in res)
        stats.executor_errors += errors
        (held if errors else records).append(_unit_record(unit, res, rollout))
        stats.programs_executed += len(res)
        stats.programs_passed += sum(bool(r.passed) for r in res)
    cache.append(records)
    cache.hold(held)
    stats.units_computed += len(batch)


def _unit_record(unit: dict[str, Any], res: list[ExecutionResult], rollout: bool) -> dict[str, Any]:
    rec: dict[str, Any] = {"key": unit["key"], "v": CACHE_VERSION, "task_id": unit["task_id"]}
    if rollout:
        rec["outcomes"] = [bool(r.passed) for r in res if r.status != "skipped"]
        rec["skipped"] = sum(r.status == "skipped" for r in res)
    else:
        r = res[0]
        rec.update(passed=bool(r.passed), status=str(r.status), per_test=[bool(v) for v in r.per_test],
                   reason=str(getattr(r, "reason", ""))[:500])
    return rec


def verdicts(items: list[Item], cache: LabelCache, stats: LabelingStats) -> list[tuple[Item, dict[str, Any]]]:
    """Each item with its program's cached verdict; programs the executor skipped become bad rows."""
    out = []
    for item in items:
        rec = cache.get(item.final_key)
        if rec["status"] == "skipped":
            stats.bad(item.problem.task_id, f"skipped: {rec.get('reason') or 'the executor skipped the program'}")
            continue
        out.append((item, rec))
    return out


def setup(
    problems: Iterable[Problem],
    trajectories: Trajectories,
    executor: SandboxedExecutor | None,
    shard: tuple[int, int] | str,
    cache_dir: str | os.PathLike | None,
) -> tuple[SandboxedExecutor, LabelingStats, dict[str, Problem], list[tuple[str, str]], LabelCache]:
    """Check the executor once, index the problems, keep this shard's trajectories and open the cache."""
    shard = parse_shard(shard)
    executor = default_executor(executor)
    executor.run_many([])  # the opt-in and sandbox checks raise here, before any work, not once per program
    stats = LabelingStats()
    index = problem_index(problems)
    pairs = pairs_of(trajectories)
    stats.trajectories = len(pairs)
    mine = [(t, c) for t, c in pairs if shard_of(t, c, shard[1]) == shard[0]]
    stats.other_shard = len(pairs) - len(mine)
    cache = LabelCache(cache_dir, shard) if cache_dir is not None else MemoryCache()
    return executor, stats, index, mine, cache


def verdict_units(items: list[Item]) -> list[dict[str, Any]]:
    """One verdict unit (run the whole program once) per item."""
    return [{"key": i.final_key, "task_id": i.problem.task_id, "suite": i.suite, "code": i.code} for i in items]


def to_dataset(rows: list[dict[str, Any]], columns: list[str]) -> Dataset:
    """``rows`` as a Dataset; with no rows, an empty one that still has ``columns``."""
    if not rows:
        return Dataset.from_dict({c: [] for c in columns})
    return Dataset.from_list(rows)
