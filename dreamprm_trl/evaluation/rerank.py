"""Best-of-N with a process reward model: score N candidate programs, return them best first.

``rerank`` is the pure PRM ranking (what the paper reports). With ``public_tests`` it becomes the hybrid that
practical systems use: candidates are first run on the public examples of the statement (HumanEval docstring
examples, LiveCodeBench public cases); those that fail rank below every candidate that passes, and the PRM orders
candidates within each group. ``rerank_file`` is the batch entry point behind ``dreamprm-code rerank``.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Protocol, Sequence

from ..sandbox import SandboxedExecutor, TestSuite
from ..schema import CODE, TASK_ID, VERDICT, group_by_task
from ..steps import get_splitter
from .metrics import rerank_metrics

__all__ = ["Ranked", "rerank", "rerank_many", "best_of_n", "ranking_values", "public_test_verdicts", "rerank_file",
           "saved_splitter", "record_splitter", "load_prm"]

#: Key of ``prm_config.json`` naming the step splitter a PRM was trained with (a `steps.SPLITTERS` name).
SPLITTER_KEY = "step_splitter"


class StepScorer(Protocol):
    """Anything that scores ``(prompt, code)`` pairs step by step (e.g. `FunctionStepPRM`)."""

    def score_batch(self, pairs: Sequence[tuple[str, str]], batch_size: int = 8, progress: bool = True) -> list: ...


@dataclass
class Ranked:
    """One candidate after reranking. ``public_pass`` is None when public tests were not run."""

    index: int
    code: str
    score: float
    step_scores: list[float] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    public_pass: bool | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _prompt_of(problem: Any) -> str:
    if isinstance(problem, str):
        return problem
    prompt = getattr(problem, "prompt", None)
    if prompt is None and isinstance(problem, Mapping):
        prompt = problem.get("prompt")
    if not isinstance(prompt, str):
        raise TypeError(
            f"Cannot read a prompt from {type(problem).__name__}; pass a Problem (with .prompt) or the prompt string."
        )
    return prompt


def _public_suite(problem: Any, public_tests: Any) -> TestSuite | None:
    if public_tests is None or public_tests is False:
        return None
    if isinstance(public_tests, TestSuite):
        return public_tests
    if public_tests is True:
        suite = getattr(problem, "public_tests", None)
        if suite is None and isinstance(problem, Mapping):
            suite = problem.get("public_tests")
        if isinstance(suite, Mapping):
            suite = TestSuite.from_dict(suite)
        if suite is not None and not isinstance(suite, TestSuite):
            raise TypeError(f"problem.public_tests must be a TestSuite or None, got {type(suite).__name__}.")
        return suite  # a problem without public examples is not filtered
    raise TypeError(f"public_tests must be None, True or a TestSuite, got {type(public_tests).__name__}.")


def saved_splitter(prm: Any) -> Any:
    """The step splitter ``prm`` was trained with (``prm.config.step_splitter``, a `steps.SPLITTERS` name); None
    (the scorer's own default, function-as-step) for a scorer without a PRM config."""
    name = getattr(getattr(prm, "prm_config", None), SPLITTER_KEY, None)
    return get_splitter(name) if name else None


def record_splitter(save_directory: str, name: str) -> None:
    """Write the training step splitter ``name`` into ``save_directory/config.json`` (`PRMConfig.step_splitter`)
    so that `load_prm`, `rerank_file` and ``dreamprm-code rerank`` split candidates the way the PRM was trained."""
    from transformers.utils import CONFIG_NAME

    get_splitter(name)  # validates the name
    path = os.path.join(save_directory, CONFIG_NAME)
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    config[SPLITTER_KEY] = name
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)


def load_prm(path: str | os.PathLike) -> Any:
    """`FunctionStepPRM.from_pretrained(path)`, with a one-line error naming ``path`` when nothing loads from it."""
    from ..prm import FunctionStepPRM

    try:
        return FunctionStepPRM.from_pretrained(str(path))
    except OSError as err:
        raise OSError(f"model {str(path)!r}: cannot load a PRM from it; pass a save_pretrained directory or a "
                      f"Hub repo id ({err})") from None


def _sort_key(r: Ranked) -> tuple:
    score = -math.inf if math.isnan(r.score) else r.score
    return (r.public_pass is False, -score, r.index)


def ranking_values(ranked: Sequence[Ranked]) -> list[float]:
    """Per candidate, in input order, a value whose order is the ranking's and whose ties are its ties.

    Feed these to `evaluation.metrics.rerank_metrics` to score a (possibly hybrid) ranking: ``-(dense rank)`` of the key
    (public tests failed, PRM score), so equal PRM scores within a group stay tied.
    """
    keys = sorted({_sort_key(r)[:2] for r in ranked})
    dense = {key: i for i, key in enumerate(keys)}
    values = [0.0] * len(ranked)
    for r in ranked:
        values[r.index] = -float(dense[_sort_key(r)[:2]])
    return values


def public_test_verdicts(
    suites: Sequence[TestSuite | None],
    candidates: Sequence[Sequence[str]],
    executor: SandboxedExecutor | None = None,
    progress: bool = True,
) -> list[list[bool | None]]:
    """Per candidate, whether it passes its problem's public ``suite`` (None where a problem has none), in one
    parallel run of the sandbox."""
    jobs = [(code, suite) for suite, group in zip(suites, candidates) if suite is not None for code in group]
    verdicts = iter(())
    if jobs:
        executor = executor if executor is not None else SandboxedExecutor(progress=progress)
        verdicts = iter([bool(r.passed) for r in executor.run_many(jobs)])
    return [[next(verdicts) if suite is not None else None for _ in group] for suite, group in zip(suites, candidates)]


def rerank_many(
    prm: StepScorer,
    problems: Sequence[Any],
    candidates: Sequence[Sequence[str]],
    aggregation: str | None = None,
    public_tests: Any = None,
    executor: SandboxedExecutor | None = None,
    batch_size: int = 8,
    progress: bool = True,
    splitter: Any = None,
) -> list[list[Ranked]]:
    """`rerank` for many problems at once: one scoring pass over all candidates and one parallel test run.

    ``public_tests`` is None (pure PRM), True (each problem's ``public_tests``, where it has any) or one
    `TestSuite` (or None) per problem.
    """
    if len(problems) != len(candidates):
        raise ValueError(f"{len(problems)} problems but {len(candidates)} candidate lists; pass one list per problem.")
    if isinstance(public_tests, (list, tuple)):
        if len(public_tests) != len(problems):
            raise ValueError(f"{len(public_tests)} public test suites for {len(problems)} problems.")
        suites = [_public_suite(p, t) for p, t in zip(problems, public_tests)]
    else:
        suites = [_public_suite(p, public_tests) for p in problems]
    for i, group in enumerate(candidates):
        if isinstance(group, str) or not all(isinstance(c, str) for c in group):
            raise TypeError(f"candidates[{i}] must be a list of program source strings.")

    pairs = [(_prompt_of(p), code) for p, group in zip(problems, candidates) for code in group]
    splitter = splitter if splitter is not None else saved_splitter(prm)
    kwargs = {"splitter": splitter} if splitter is not None else {}
    scored = prm.score_batch(pairs, batch_size=batch_size, progress=progress, **kwargs) if pairs else []
    if len(scored) != len(pairs):
        raise RuntimeError(f"score_batch returned {len(scored)} results for {len(pairs)} candidates.")

    public = public_test_verdicts(suites, candidates, executor, progress)

    out, k = [], 0
    for group, group_public in zip(candidates, public):
        ranked = []
        for index, (code, public_pass) in enumerate(zip(group, group_public)):
            s = scored[k]
            k += 1
            ranked.append(
                Ranked(index, code, float(s.aggregate(aggregation)), [float(x) for x in s.scores], list(s.steps),
                       public_pass)
            )
        out.append(sorted(ranked, key=_sort_key))
    return out


def rerank(
    prm: StepScorer,
    problem: Any,
    candidates: Sequence[str],
    aggregation: str | None = None,
    public_tests: Any = None,
    executor: SandboxedExecutor | None = None,
    batch_size: int = 8,
    progress: bool = False,
    splitter: Any = None,
) -> list[Ranked]:
    """Rank ``candidates`` (full program sources) for ``problem`` best first.

    Args:
        prm: a step scorer such as `FunctionStepPRM` (``score_batch(pairs, batch_size, progress)``).
        problem: a `Problem` (its ``prompt`` is shown to the PRM) or the prompt string.
        candidates: full, runnable program sources.
        aggregation: how step scores become one program score (``min | mean | last | prod | logodds``); None
            (the default) uses the aggregation the PRM was trained and saved with (``prm_config.aggregation``).
        public_tests: None for the pure PRM ranking; True for ``problem.public_tests`` (a problem without
            public examples is not filtered); or a `TestSuite`. Candidates failing the public tests rank below
            all that pass.
        executor: the `SandboxedExecutor` for public tests (default: a new one with default limits).
        splitter: step splitter passed to the PRM (e.g. `steps.split_lines` for a line-as-step PRM); None (the
            default) uses the one the PRM was trained with (`saved_splitter`), else function-as-step.

    Ties keep the input order (the sort is stable).
    """
    return rerank_many(
        prm, [problem], [candidates], aggregation, public_tests, executor, batch_size, progress, splitter
    )[0]


def best_of_n(prm: StepScorer, problem: Any, candidates: Sequence[str], **kwargs: Any) -> Ranked:
    """The top candidate of `rerank` (same arguments)."""
    if not candidates:
        raise ValueError("best_of_n needs at least one candidate.")
    return rerank(prm, problem, candidates, **kwargs)[0]


# ------------------------------------------------------------------------------------------------ file-level API
def _candidate_rows(spec: Any, problems: Sequence[Any]) -> dict[str, list[dict]]:
    """Per task, the candidate programs (``code``) with the other fields of their input rows, in file order.

    Programs come from `problems.load_candidates` (the one reader of candidate files); for the bundled HumanEval
    candidates, ``passed`` is the shipped reference label and ``sample_idx`` the sample's position.
    """
    from pathlib import Path

    from ..problems import load_candidates, read_rows

    codes = load_candidates(spec, problems)
    if spec == "humaneval":
        from ..problems import load_bundled_humaneval_reference_labels

        labels = load_bundled_humaneval_reference_labels()
        extras = {t: [{"sample_idx": i, VERDICT: p} for i, p in enumerate(labels[t])] for t in codes}
    elif isinstance(spec, (str, os.PathLike)) and Path(spec).is_file():
        rows = read_rows(spec)
        rest = [{k: v for k, v in row.items() if k not in (CODE, "completion")} for row in rows]
        extras = {t: extra for t, (extra,) in group_by_task([row[TASK_ID] for row in rows], rest).items()}
    else:
        extras = {t: [{TASK_ID: t} for _ in cs] for t, cs in codes.items()}
    return {t: [{TASK_ID: t, **extra, CODE: code} for extra, code in zip(extras[t], programs)]
            for t, programs in codes.items()}


def _json_float(x: float) -> float | None:
    """NaN as JSON ``null`` (``NaN`` is not JSON; strict readers reject it)."""
    return None if math.isnan(x) else x


def _name(problems: Any) -> str:
    return str(problems) if isinstance(problems, (str, os.PathLike)) else "problems"


def rerank_file(
    model: Any,
    problems: Any,
    candidates: Any,
    out: str,
    aggregation: str | None = None,
    public_tests: bool = False,
    batch_size: int = 8,
    executor: SandboxedExecutor | None = None,
    progress: bool = True,
    n_bootstrap: int = 1000,
    splitter: Any = None,
) -> dict:
    """Rerank a candidates file and write one JSON line per candidate, best first within each task.

    Args:
        model: a PRM object, or a local directory / Hub id loaded with `load_prm` (its saved step splitter
            and aggregation are the defaults).
        problems: a list of `Problem`, or a spec for `problems.load_problems` (``"humaneval"``,
            ``"classeval"``, a ``save_to_disk`` directory or a JSON/JSONL(.gz) file of ``Problem.to_row()`` rows).
        candidates: a spec for `problems.load_candidates`: ``"humaneval"`` / ``"classeval"`` (bundled) or a
            JSONL(.gz) file of rows with ``task_id`` and ``code`` (full program) or ``completion`` (joined to the
            problem's ``starter_code``). Other fields (e.g. ``passed``, ``sample_idx``) are copied to the output.
        out: output JSON Lines: the input fields plus the full ``code``, ``rank``, ``candidate_index``, ``score``,
            ``step_scores`` and ``public_pass``; a NaN score is written as ``null``. Written to a temporary file
            and renamed, so a crash never leaves a partial file.
        aggregation: None (default) for the PRM's saved aggregation, or one of ``min | mean | last | prod | logodds``.
        public_tests: rank candidates failing their problem's ``public_tests`` last (hybrid ranking); problems
            without public tests are ranked by the PRM alone.
        splitter: a step splitter or a `steps.SPLITTERS` name; None (default) for the one the PRM was saved with.

    Raises:
        ValueError: a task id appears twice among the problems, a candidate's task id is not among them, or every
            program score is NaN (nothing is written then).

    Returns:
        A summary: ``num_problems``, ``num_candidates``, ``out`` and, when every candidate has a ``passed``
        label, ``metrics``: `rerank_metrics` of this ranking (reranked pass@1 vs random pick vs oracle).
    """
    by_id = _problems_by_id(problems)
    groups = _candidate_rows(candidates, list(by_id.values()))
    unknown = [t for t in groups if t not in by_id]
    if unknown:
        raise ValueError(
            f"{candidates}: task_id {unknown[0]!r} is not in the problems file "
            f"({len(unknown)} unknown task ids); pass the matching --problems."
        )
    if isinstance(model, (str, os.PathLike)):  # loaded once the inputs are known to be good
        model = load_prm(model)
    task_ids = list(groups)
    codes = [[r[CODE] for r in groups[t]] for t in task_ids]
    ranked = rerank_many(
        model, [by_id[t] for t in task_ids], codes, aggregation, True if public_tests else None, executor,
        batch_size, progress, get_splitter(splitter) if isinstance(splitter, str) else splitter,
    )
    num_scores = sum(len(group) for group in ranked)
    if num_scores and all(math.isnan(r.score) for group in ranked for r in group):
        raise ValueError(
            f"Every one of the {num_scores} program scores is NaN (aggregation {aggregation!r}), so there is no "
            f"ranking; {out} was not written. Check the model (NaN weights?) and that the programs have steps."
        )
    _write_ranked(out, [groups[t] for t in task_ids], ranked)
    summary: dict = {"num_problems": len(task_ids), "num_candidates": sum(len(c) for c in codes), "out": str(out)}
    if all(VERDICT in r for t in task_ids for r in groups[t]):
        scores = [ranking_values(group) for group in ranked]
        passed = [[bool(r[VERDICT]) for r in groups[t]] for t in task_ids]
        summary["metrics"] = rerank_metrics(scores, passed, n_bootstrap=n_bootstrap)
    return summary


def _problems_by_id(problems: Any) -> dict[str, Any]:
    """Problems (a list, or a spec for `labeling.load_problems`) by task id; a task id given twice is an error."""
    spec = problems
    if isinstance(problems, (str, os.PathLike)):
        from ..problems import load_problems

        problems = load_problems(str(problems))
    problems = list(problems)
    by_id = {p.task_id: p for p in problems}
    if len(by_id) != len(problems):
        dup = next(t for t, n in Counter(p.task_id for p in problems).items() if n > 1)
        raise ValueError(f"{_name(spec)}: task_id {dup!r} appears more than once; each problem needs its own "
                         "task_id (remove or rename the duplicates).")
    return by_id


def _write_ranked(out: str, rows: Sequence[list[dict]], ranked: Sequence[list[Ranked]]) -> None:
    """One JSON line per candidate, best first within each task, written to ``out.tmp`` and renamed (a crash
    never leaves a partial file); a NaN score is written as ``null``."""
    tmp = f"{out}.tmp"
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(tmp, "w", encoding="utf-8") as f:
        for task_rows, group in zip(rows, ranked):
            for rank, r in enumerate(group):
                row = dict(task_rows[r.index])
                row.update(rank=rank, candidate_index=r.index, score=_json_float(r.score),
                           step_scores=[_json_float(x) for x in r.step_scores], public_pass=r.public_pass)
                f.write(json.dumps(row, allow_nan=False) + "\n")
    os.replace(tmp, out)
