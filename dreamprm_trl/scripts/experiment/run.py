"""`run_experiment`: label, train every requested variant, rank the held-out candidates, write one table."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from dreamprm_trl.training import FunctionStepPRMConfig
from dreamprm_trl.evaluation.rerank import public_test_verdicts
from dreamprm_trl.sandbox import SandboxedExecutor
from dreamprm_trl.problems import Problem
from dreamprm_trl.steps import get_splitter, parses

from .arguments import FLOOR, MAIN_VARIANT, VARIANTS, ExperimentArguments
from .data import (
    build_datasets, eval_groups, execution_allowed, load_data, prefix_rows, three_way_split, variant_data,
)
from .table import make_title, results, write
from .variants import build_backbone, filtered, label_quality, score_groups, train_variant

logger = logging.getLogger(__name__)

#: Table labels of the rankings that are not trained variants: baselines and filter-then-score hybrids.
LABELS = {"random": "random pick (mean pass@1)", FLOOR: "parses, then random pick",
          "parses_dreamprm": "parses, then DreamPRM-Code", "public_random": "public-test filter, then random pick",
          "public_dreamprm": "public-test filter, then DreamPRM-Code"}


def _methods(args: ExperimentArguments) -> list[str]:
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in VARIANTS]
    if unknown:
        raise ValueError(f"Unknown methods {unknown} in --methods; choose from {list(VARIANTS)}.")
    return names


def _train_and_score(names: list[str], args: ExperimentArguments, config: FunctionStepPRMConfig, data: dict,
                     split: dict, problems: list[Problem], evaluated: tuple[list[Problem], list[list[str]]],
                     backbone: tuple[Any, Any]) -> tuple[dict, dict, dict | None]:
    """Train each variant of ``names`` and score the held-out candidates with it: ``(rankings, skipped,
    label_quality)``. The main variant is saved to ``config.output_dir`` (and pushed with ``push_to_hub``)."""
    eval_problems, groups = evaluated
    ranked, skipped, quality = {}, {}, None
    for name in names:
        variant = VARIANTS[name]
        rows, meta = variant_data(name, args, data, split)
        if len(rows) == 0:  # e.g. HumanEval: single-function trajectories have no non-final prefix to learn from
            skipped[name] = "no labelled non-final prefix (single-step trajectories)"
            logger.warning("Variant %r skipped: %s; use --dataset classeval or both.", name, skipped[name])
            continue
        prm, trainer = train_variant(name, args, config, rows, meta, backbone)
        ranked[name] = score_groups(prm, eval_problems, groups, get_splitter(variant.splitter), None,
                                    config.per_device_eval_batch_size)
        if name == MAIN_VARIANT:
            quality = label_quality(prefix_rows(data["mc_function"]), trainer.corrected_labels(),
                                    {p.task_id: p for p in problems})
            trainer.accelerator.unwrap_model(trainer.model).config.step_splitter = variant.splitter  # rerank reads it
            trainer.save_model(config.output_dir)
            if config.push_to_hub:
                trainer.push_to_hub()
    return ranked, skipped, quality


def _all_rankings(trained: dict, parse_ok: list[list[bool]], public: list[list[bool | None]]) -> tuple[dict, dict]:
    """Baselines, trained variants and the filter-then-score hybrids, in table order, with their labels."""
    flat = [[0.0] * len(g) for g in parse_ok]
    ranked = {"random": flat, FLOOR: filtered(flat, parse_ok), **trained}
    if MAIN_VARIANT in trained:
        ranked["parses_dreamprm"] = filtered(trained[MAIN_VARIANT], parse_ok)
    ranked["public_random"] = filtered(flat, public)
    if MAIN_VARIANT in trained:
        ranked["public_dreamprm"] = filtered(trained[MAIN_VARIANT], public)
    labels = {key: VARIANTS[key].label if key in trained else LABELS[key] for key in ranked}
    return ranked, labels


def run_experiment(args: ExperimentArguments, config: FunctionStepPRMConfig) -> dict[str, Any]:
    """Label, train each requested variant, evaluate all on the held-out problems; write and return the results."""
    start = time.time()
    names = _methods(args)
    problems, pool = load_data(args)
    split = three_way_split([p.task_id for p in problems], args)
    executor = SandboxedExecutor(timeout=args.exec_timeout, memory_mb=args.exec_memory_mb, workers=args.exec_workers,
                                 allow_code_execution=execution_allowed(args))
    with config.main_process_first(desc="labelling"):  # the main process fills the cache, the others read it
        data = build_datasets(args, problems, pool, split, executor, set(names))
    labelled = time.time()

    eval_problems, groups, passed = eval_groups(data["final"], problems, split["eval"])
    public = public_test_verdicts([p.public_tests for p in eval_problems], groups, executor)
    parse_ok = [[parses(c) for c in g] for g in groups]
    backbone = build_backbone(args, config, [c for t in split["trajectory"] + split["meta"] for c in pool[t]])
    trained, skipped, quality = _train_and_score(names, args, config, data, split, problems,
                                                 (eval_problems, groups), backbone)
    ranked, labels = _all_rankings(trained, parse_ok, public)

    out = results(args, ranked, labels, passed)
    out["label_quality"] = quality
    out["eval"] = {"task_ids": [p.task_id for p in eval_problems], "passed": passed, "rankings": ranked,
                   "public_pass": public, "parses": parse_ok}
    out["setup"] = {
        "dataset": args.problems or args.dataset, "split": "dev" if args.dev_split else "held-out",
        "num_trajectory_problems": len(split["trajectory"]), "num_meta_problems": len(split["meta"]),
        "num_eval_problems": len(eval_problems), "candidates_per_problem": args.num_candidates,
        "trajectories_per_problem": args.trajectories, "rollouts": args.rollouts, "backbone": args.backbone,
        "skipped_variants": skipped,
        "public_test_contradictions": _contradictions(eval_problems, executor),
        "labelling_seconds": round(labelled - start, 1), "seconds": round(time.time() - start, 1),
        "arguments": dataclasses.asdict(args),
    }
    out["title"] = make_title(out["setup"])
    if config.process_index == 0:
        write(out, args.results_dir)
    return out


def _contradictions(problems: list[Problem], executor: SandboxedExecutor) -> int:
    """Problems whose reference solution (``metadata["canonical_solution"]``, HumanEval) fails the public examples:
    prompt examples that contradict the hidden tests, kept as public tests and counted here."""
    jobs = [(p.prompt + p.metadata["canonical_solution"], p.public_tests) for p in problems
            if p.public_tests is not None and (p.metadata or {}).get("canonical_solution")]
    return sum(not r.passed for r in executor.run_many(jobs)) if jobs else 0
