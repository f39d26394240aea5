"""The experiment's data: problems and candidate pools, the three-way split by problem, the labels every
variant needs (through the resumable cache) and each variant's ``(train, meta)`` datasets."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from dreamprm_trl.training.splits import split_by_task
from dreamprm_trl.labeling import label_final, label_steps
from dreamprm_trl.labeling.generators import PoolGenerator, make_generator
from dreamprm_trl.problems import Problem, load_bundled_classeval_candidates, load_candidates, load_problems
from dreamprm_trl.sandbox import SandboxedExecutor
from dreamprm_trl.schema import CODE, MC_LABELS, PROMPT, STEPS, TASK_ID, VERDICT, group_by_task
from dreamprm_trl.steps import get_splitter, parses

from .arguments import VARIANTS, ExperimentArguments

logger = logging.getLogger(__name__)


def split_problems(task_ids: Sequence[str], eval_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic split of distinct problems ``(kept, held_out)``: `training.split_by_task`'s seeded hash rule."""
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}.")
    kept, held = split_by_task(task_ids, eval_fraction, seed)
    return [task_ids[i] for i in kept], [task_ids[i] for i in held]


def classeval_pool() -> dict[str, list[str]]:
    """Bundled ClassEval candidates interleaved across the 5 models (the first N mix every model)."""
    models = ("ChatGPT", "GPT-4", "CodeGeeX", "ChatGLM", "Vicuna")
    per_model = [load_bundled_classeval_candidates([m]) for m in models]
    tasks = {t for pool in per_model for t in pool}
    out = {}
    for t in sorted(tasks):
        groups = [pool.get(t, []) for pool in per_model]
        out[t] = [g[i] for i in range(max(map(len, groups))) for g in groups if i < len(g)]
    return out


def load_data(args: ExperimentArguments) -> tuple[list[Problem], dict[str, list[str]]]:
    """Problems and candidate pools of ``args.dataset`` (or of ``--problems/--candidates``)."""
    if args.problems is not None:
        sources = [(load_problems(args.problems), args.candidates or args.problems)]
    else:
        names = ["classeval", "humaneval"] if args.dataset == "both" else [args.dataset]
        sources = [(load_problems(n), n) for n in names]
    problems, pool = [], {}
    for probs, cand in sources:
        probs = probs[: args.max_problems] if args.max_problems else probs
        pool.update(classeval_pool() if cand == "classeval" else load_candidates(cand, probs))
        problems += probs
    missing = {p.task_id for p in problems if len(pool.get(p.task_id, [])) < 2}
    if missing:
        logger.warning("%d problems have fewer than 2 candidates and are left out: %s", len(missing),
                       sorted(missing)[:5])
    problems = [p for p in problems if p.task_id not in missing]
    return problems, {p.task_id: pool[p.task_id][: args.pool_size] for p in problems}


def execution_allowed(args: ExperimentArguments) -> bool:
    """Opt-in rule: the bundled candidates (shipped and run by this project's tests) may run by default; anything
    else needs ``--allow_code_execution`` or ``HF_ALLOW_CODE_EVAL=1`` (checked by the executor)."""
    if args.allow_code_execution is not None:
        return args.allow_code_execution
    return args.candidates is None and args.problems is None and args.generator == "pool"


def three_way_split(task_ids: Sequence[str], args: ExperimentArguments) -> dict[str, list[str]]:
    """Disjoint ``eval`` (held out), ``trajectory`` (MC-labelled) and ``meta`` (complete programs) problems."""
    train, held = split_problems(task_ids, args.eval_fraction, args.split_seed)
    if args.dev_split:
        train, held = split_problems(train, args.eval_fraction, args.split_seed + 1)
    if len(train) < 2:
        raise ValueError(f"Only {len(train)} training problems; use more problems (--max_problems) or a smaller "
                         "--eval_fraction.")
    trajectory, meta = split_problems(train, args.meta_fraction, args.split_seed + 2)
    return {"eval": held, "trajectory": trajectory, "meta": meta}


def build_datasets(args: ExperimentArguments, problems: list[Problem], pool: dict[str, list[str]],
                   split: dict[str, list[str]], executor: SandboxedExecutor, need: set[str]) -> dict[str, Any]:
    """Label once what the requested variants need, through the resumable cache: the verdicts of all N
    candidates of every problem, and MC labels of the trajectory problems' first ``trajectories`` parsing candidates
    for each step splitter in use (same trajectories, same rollouts per prefix, same number of prefixes)."""
    groups = {t: progs[: args.num_candidates] for t, progs in pool.items()}
    cache = Path(args.cache_dir)
    out: dict[str, Any] = {"final": label_final(problems, groups, executor=executor, cache_dir=cache / "final")}
    traj_ids = set(split["trajectory"])
    traj_problems = [p for p in problems if p.task_id in traj_ids]
    # The same trajectories for every splitter: the first candidates that parse (function steps need a parse).
    trajectories = {t: [c for c in groups[t] if parses(c)][: args.trajectories] for t in split["trajectory"]}
    out["trajectories"] = trajectories
    for name in sorted({VARIANTS[m].splitter for m in need if VARIANTS[m].labels == "mc"}):
        splitter = get_splitter(name)
        generator = (PoolGenerator(pool, splitter=splitter, seed=args.split_seed) if args.generator == "pool"
                     else make_generator(args.generator, model=args.generator_model, base_url=args.base_url))
        out[f"mc_{name}"] = label_steps(
            traj_problems, trajectories, generator, rollouts=args.rollouts, temperature=args.rollout_temperature,
            executor=executor, cache_dir=cache / f"mc_{name}", splitter=splitter, source=name,
        )
    return out


def prefix_rows(mc: Any) -> Any:
    """The trained rows of a step-splitting variant: each trajectory cut before its final step, with the MC labels
    of its non-final prefixes (the final verdict is clean, never a learnable label). Trajectories with no
    labelled prefix (one step, or no rollouts) give no row."""
    cut = mc.map(lambda r: {STEPS: r[STEPS][:-1], MC_LABELS: r[MC_LABELS][:-1]})
    return cut.filter(lambda r: any(v is not None for v in r[MC_LABELS]))


def complete_rows(final: Any, keep: Callable[[dict], bool], splitter: str) -> list[dict]:
    """Complete programs (rows of ``final`` for which ``keep(row)``) with their verdicts, cut with ``splitter``:
    ``{"task_id", "prompt", "steps", "passed"}``."""
    split = get_splitter(splitter)
    return [{TASK_ID: r[TASK_ID], PROMPT: r[PROMPT], STEPS: [s.text for s in split(r[CODE])],
             VERDICT: bool(r[VERDICT])} for r in final if r[CODE] and keep(r)]


def variant_data(name: str, args: ExperimentArguments, data: dict[str, Any],
                 split: dict[str, list[str]]) -> tuple[Any, Any]:
    """``(train_dataset, meta_dataset)`` of variant ``name`` (see the module docstring for the data flow)."""
    from datasets import Dataset

    variant = VARIANTS[name]
    meta_ids = set(split["meta"])
    meta = complete_rows(data["final"], lambda r: r[TASK_ID] in meta_ids, variant.splitter)
    as_final = [{TASK_ID: r[TASK_ID], PROMPT: r[PROMPT], STEPS: r[STEPS],
                 MC_LABELS: [None] * (len(r[STEPS]) - 1) + [float(r[VERDICT])]} for r in meta]
    if variant.labels == "final":
        trajectories = {(t, c) for t, codes in data["trajectories"].items() for c in codes}
        own = complete_rows(data["final"], lambda r: (r[TASK_ID], r[CODE]) in trajectories, "program")
        own = [{**r, MC_LABELS: [float(r.pop(VERDICT))]} for r in own]
        return Dataset.from_list(own + as_final), None
    prefixes = prefix_rows(data[f"mc_{variant.splitter}"]).select_columns([TASK_ID, PROMPT, STEPS, MC_LABELS])
    if variant.meta_method == "none":
        return Dataset.from_list(prefixes.to_list() + as_final), None
    return prefixes, Dataset.from_list(meta)


def eval_groups(final: Any, problems: list[Problem], eval_ids: list[str]
                ) -> tuple[list[Problem], list[list[str]], list[list[bool]]]:
    """The held-out problems that have labelled candidates, with their candidates' code and verdicts (rows of
    ``final``, `label_final`'s dataset, grouped by problem)."""
    by_task = group_by_task(final[TASK_ID], final[CODE], [bool(v) for v in final[VERDICT]])
    held = set(eval_ids)
    eval_problems = [p for p in problems if p.task_id in held and p.task_id in by_task]
    return eval_problems, [by_task[p.task_id][0] for p in eval_problems], [by_task[p.task_id][1] for p in eval_problems]
