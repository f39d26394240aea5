"""How noisy are Monte-Carlo step labels? PoolGenerator MC labels vs ClassEval method-level ground truth.

For a seeded subsample of the bundled ClassEval tasks, a few candidate programs per task are labelled with
``label_steps`` (PoolGenerator over all 25 shipped candidates of the task, M = 16 rollouts per prefix), and
every non-final step's MC label is compared with ``step_ground_truth`` (does every tested method defined so
far pass its own TestCase class, judged on the full program). The last step is left out: both labels are the
program's own verdict there. Labels for M = 4 and 8 are the first 4 / 8 of the same 16 rollouts (a uniform
subset: the pool draws donors without replacement in a seeded order). Also reports labelling throughput.

    python benchmarks/bench_labeling.py [--tasks 16] [--per_task 2] [--rollouts 16]

Writes benchmarks/results/labeling.json and labeling.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path

os.environ.setdefault("HF_ALLOW_CODE_EVAL", "1")

from dreamprm_trl.sandbox import SandboxedExecutor, isolation  # noqa: E402
from dreamprm_trl.labeling import label_final, label_steps, step_ground_truth  # noqa: E402
from dreamprm_trl.labeling.generators import PoolGenerator  # noqa: E402
from dreamprm_trl.steps import split_steps  # noqa: E402
from dreamprm_trl.problems import load_bundled_classeval, load_bundled_classeval_candidates  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def auroc(scores: list[float], labels: list[float]) -> float:
    """P(score of a random positive > score of a random negative), ties counted half; NaN if one class is empty."""
    pos = [s for s, y in zip(scores, labels) if y >= 0.5]
    neg = [s for s, y in zip(scores, labels) if y < 0.5]
    if not pos or not neg:
        return float("nan")
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def noise_table(rows: list[dict], gts: list[list[float]], ms: list[int]) -> list[dict]:
    """MAE, thresholded disagreement and AUROC of MC labels (first m rollouts) vs ground truth, non-final steps."""
    table = []
    for m in ms:
        err, dis_half, dis_any, n, mc_sum = 0.0, 0, 0, 0, 0.0
        mcs, ys = [], []
        for row, gt in zip(rows, gts):
            for outs, g in zip(row["rollout_outcomes"][:-1], gt[:-1]):
                outs = outs[:m]
                if not outs:
                    continue
                mc = sum(outs) / len(outs)
                err += abs(mc - g)
                dis_half += (mc >= 0.5) != (g >= 0.5)
                dis_any += (mc > 0) != (g >= 0.5)
                mc_sum += mc
                n += 1
                mcs.append(mc)
                ys.append(g)
        table.append({"M": m, "steps": n, "mae": err / n, "disagree@0.5": dis_half / n, "disagree@>0": dis_any / n,
                      "auroc": auroc(mcs, ys), "mean_mc": mc_sum / n})
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=16, help="ClassEval tasks sampled (seeded).")
    ap.add_argument("--per_task", type=int, default=2, help="Trajectories labelled per task.")
    ap.add_argument("--rollouts", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--timeout", type=float, default=3.0, help="Seconds per test class.")
    args = ap.parse_args()
    ms = [m for m in (4, 8, 16) if m <= args.rollouts]

    problems = {p.task_id: p for p in load_bundled_classeval()}
    pool = load_bundled_classeval_candidates()
    executor = SandboxedExecutor(timeout=args.timeout, workers=args.workers, progress=False)
    rng = random.Random(args.seed)

    # 1. a seeded subsample of tasks; clean labels for all their candidates (tells which tasks can run here)
    order = sorted(problems, key=lambda t: int(t.split("_")[-1]))
    sampled = sorted(rng.sample(order, min(args.tasks, len(order))), key=order.index)
    t0 = time.perf_counter()
    final, final_stats = label_final([problems[t] for t in sampled], {t: pool[t] for t in sampled},
                                     executor=executor, return_stats=True)
    final_wall = time.perf_counter() - t0
    skipped_tasks = sorted({b["task_id"] for b in final_stats.bad_rows}, key=order.index)
    tasks = [t for t in sampled if t not in skipped_tasks]

    # 2. MC labels for a few trajectories per task
    parsable = {t: [c for c in pool[t] if all(s.kind != "block" for s in split_steps(c))] for t in tasks}
    trajectories = [(t, c) for t in tasks for c in rng.sample(parsable[t], min(args.per_task, len(parsable[t])))]
    generator = PoolGenerator(pool, seed=args.seed)
    t0 = time.perf_counter()
    ds, stats = label_steps([problems[t] for t in tasks], trajectories, generator, rollouts=args.rollouts,
                            executor=executor, return_stats=True)
    steps_wall = time.perf_counter() - t0
    rows = ds.to_list()
    gts = [step_ground_truth(problems[r["task_id"]], r["code"], per_test=r["per_test"]) for r in rows]
    table = noise_table(rows, gts, ms)
    gt_flat = [g for gt in gts for g in gt[:-1]]

    result = {
        "dataset": "ClassEval (bundled: 100 tasks x 25 candidates from 5 models)",
        "subsample": {"tasks_sampled": len(sampled), "tasks_runnable": len(tasks), "trajectories": len(rows),
                      "per_task": args.per_task, "seed": args.seed, "task_ids": tasks},
        "tasks_skipped_by_executor": skipped_tasks,
        "generator": generator.config(),
        "rollouts": args.rollouts,
        "ground_truth_positive_rate": sum(gt_flat) / len(gt_flat),
        "noise": table,
        "label_steps": {**stats.to_dict(), "wall_s": steps_wall,
                        "programs_per_s": stats.programs_executed / steps_wall},
        "label_final": {"programs": final_stats.programs_executed, "wall_s": final_wall,
                        "programs_per_s": final_stats.programs_executed / final_wall,
                        "pass_rate": final_stats.pass_rate, "bad_rows": len(final_stats.bad_rows)},
        "timeout_s": args.timeout,
        "machine": {"cpus": os.cpu_count(), "workers": executor.workers if hasattr(executor, "workers") else None,
                    "isolation": isolation(), "python": platform.python_version()},
    }
    result["label_steps"].pop("bad_rows")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "labeling.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Monte-Carlo label noise on ClassEval (PoolGenerator vs method-level ground truth)",
        "",
        f"Subsample: {len(sampled)} of 100 tasks (seed {args.seed}); {len(skipped_tasks)} of them skipped by the "
        f"executor (missing packages), leaving {len(tasks)}; {args.per_task} trajectories each ({len(rows)} "
        f"parsable programs, {len(gt_flat)} non-final steps); pool = all 25 shipped candidates of the task. "
        f"Ground-truth positive rate {result['ground_truth_positive_rate']:.3f}. M = 4 and 8 use the first "
        f"rollouts of the M = 16 run. Timeout {args.timeout:g} s per test class.",
        "",
        "Ground truth (step_ground_truth): 1 iff every tested method defined in the steps so far passes its own "
        "TestCase class, run on the full program. MC label: share of M pool rollouts of the prefix that pass the "
        "whole suite. Final steps are left out (both labels are the program's verdict there). Disagreement: "
        "thresholded MC label (>= 0.5, or > 0 as in Math-Shepherd's hard estimate) != ground truth. AUROC: how "
        "well the MC label ranks ground-truth-correct steps above incorrect ones.",
        "",
        "| M | steps | MAE | disagree (MC >= 0.5) | disagree (MC > 0) | AUROC | mean MC label |",
        "|---|---|---|---|---|---|---|",
        *(f"| {r['M']} | {r['steps']} | {r['mae']:.3f} | {r['disagree@0.5']:.3f} | {r['disagree@>0']:.3f} | "
          f"{r['auroc']:.3f} | {r['mean_mc']:.3f} |" for r in table),
        "",
        "Throughput (sandbox: {iso}, {cpus} CPUs):".format(iso=result["machine"]["isolation"], cpus=os.cpu_count()),
        f"- label_steps: {stats.programs_executed} programs in {steps_wall:.1f} s = "
        f"{result['label_steps']['programs_per_s']:.1f} programs/s (rollout pass rate {stats.pass_rate:.3f})",
        f"- label_final: {final_stats.programs_executed} programs in {final_wall:.1f} s = "
        f"{result['label_final']['programs_per_s']:.1f} programs/s (pass rate {final_stats.pass_rate:.3f})",
        "",
    ]
    (RESULTS / "labeling.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
