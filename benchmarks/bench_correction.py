"""Does meta label correction correct? Synthetic multi-step tasks with known step truth, library defaults.

A program is 1-6 steps; a step is good or bad; step truth is cumulative (1 iff every step so far is good) and a
program passes iff all its steps are good. Each problem has a policy quality ``q`` ~ U(0.55, 0.95): the chance a
step it writes is good. Train rows are trajectories of train problems; their non-final labels are noisy and
learnable, the final label is the clean verdict (fixed, as `labeling.label_steps` writes it). The meta set is
complete programs of other problems with clean verdicts (`correction.split_by_task`); held-out problems give
candidate groups for reranked pass@1.

Noise on the non-final labels: symmetric flips (10/30/45 %), or MC-like ``k/M``, ``k ~ Binomial(M, q^r)`` for a
correct prefix with ``r`` steps left (0 for an incorrect prefix: it can never be completed into a pass).

Per setting (noise x batch size) and seed, trained with library defaults (only the run length, the PRM learning
rate for a from-scratch tiny model, and the batch size are set): ``none`` (noisy labels), ``label_correction``,
``sample_reweighting``, and two controls: the plain PRM's own predictions as labels, and self-training (a fresh
PRM trained on those predictions). Columns: MAE and wrong-side-of-0.5 rate of the learnable labels against truth
(reweighting: weighted by its learned weights), reranked pass@1 of each PRM, and the paired bootstrap CI of
corrected minus noisy pass@1 (problems pooled over seeds).

    nice -n 10 python benchmarks/bench_correction.py            # full table (~15 min on one core)
    nice -n 10 python benchmarks/bench_correction.py --quick    # one seed, two settings
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

import datasets
import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dreamprm_trl import FunctionStepPRMConfig, FunctionStepPRMTrainer  # noqa: E402
from dreamprm_trl.backbones import tiny_causal_backbone  # noqa: E402
from dreamprm_trl.correction import FIXED_LABEL_COLUMN, split_by_task  # noqa: E402
from dreamprm_trl.metrics import bootstrap_ci, per_problem_reranked  # noqa: E402
from dreamprm_trl.modeling import FunctionStepPRM  # noqa: E402

GOOD = [f"a{i}+;\n" for i in range(6)]
BAD = [f"a{i}-;\n" for i in range(6)]
PROMPT = "#\n"
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def synthetic_task(noise: str, seed: int, n_problems: int = 96, per_problem: int = 2, n_eval: int = 48,
                   candidates: int = 8) -> dict:
    """Train rows (noisy learnable labels + clean final), meta programs, eval candidate groups, and the truth."""
    rng = random.Random(seed)
    quality = [rng.uniform(0.55, 0.95) for _ in range(n_problems + n_eval)]

    def write(p: int) -> tuple[list[str], list[float]]:
        good = [rng.random() < quality[p] for _ in range(rng.randint(1, 6))]
        truth = [float(all(good[: k + 1])) for k in range(len(good))]
        return [rng.choice(GOOD if g else BAD) for g in good], truth

    rows = []
    for p in range(n_problems):
        for _ in range(per_problem):
            steps, truth = write(p)
            noisy = [_noisy(t, len(steps) - k - 1, quality[p], noise, rng) for k, t in enumerate(truth[:-1])]
            rows.append({"task_id": f"p{p}", "prompt": PROMPT, "steps": steps, "mc_labels": noisy + [truth[-1]],
                         FIXED_LABEL_COLUMN: [False] * (len(steps) - 1) + [True], "truth": truth})
    train_idx, meta_idx = split_by_task([r["task_id"] for r in rows], meta_fraction=0.25, seed=seed)
    meta = [{"task_id": rows[i]["task_id"], "prompt": PROMPT, "steps": rows[i]["steps"],
             "passed": bool(rows[i]["truth"][-1])} for i in meta_idx]
    groups = [[write(n_problems + e) for _ in range(candidates)] for e in range(n_eval)]
    return {"train": [rows[i] for i in train_idx], "meta": meta, "groups": groups}


def _noisy(truth: float, remaining: int, q: float, noise: str, rng: random.Random) -> float:
    kind, value = noise.split(":")
    if kind == "flip":
        return 1.0 - truth if rng.random() < float(value) else truth
    m = int(value)  # MC: M rollouts complete a correct prefix correctly with probability q^remaining
    return sum(rng.random() < q ** remaining for _ in range(m)) / m if truth else 0.0


def make_prm(seed: int) -> FunctionStepPRM:
    body, tok = tiny_causal_backbone(GOOD + BAD + [PROMPT], hidden_size=32, num_layers=1, num_heads=2,
                                     num_kv_heads=1, vocab_size=300, seed=seed)
    torch.manual_seed(seed)
    return FunctionStepPRM.from_backbone(body, tok)


def train(task: dict, labels: list[list[float]], method: str, batch: int, steps: int, seed: int, tmp: str):
    rows = [dict(r, mc_labels=y) for r, y in zip(task["train"], labels)]
    cols = ["task_id", "prompt", "steps", "mc_labels", FIXED_LABEL_COLUMN]
    ds = datasets.Dataset.from_list([{k: r[k] for k in cols} for r in rows])
    args = FunctionStepPRMConfig(
        output_dir=tmp, use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True, logging_steps=10,
        learning_rate=3e-3, per_device_train_batch_size=batch, max_steps=steps, seed=seed, meta_method=method,
    )
    trainer = FunctionStepPRMTrainer(make_prm(seed), args, train_dataset=ds,
                                     meta_dataset=datasets.Dataset.from_list(task["meta"]))
    trainer.train()
    return trainer


def step_predictions(prm: FunctionStepPRM, rows: list[dict]) -> list[list[float]]:
    scored = prm.score_batch([(r["prompt"], r["steps"]) for r in rows], batch_size=64, progress=False)
    return [list(s.scores) for s in scored]


def pass_values(prm: FunctionStepPRM, groups: list) -> np.ndarray:
    pairs = [(PROMPT, steps) for g in groups for steps, _ in g]
    scores = np.asarray(prm.program_scores(pairs, batch_size=64, progress=False)).reshape(len(groups), -1)
    passed = [[bool(t[-1]) for _, t in g] for g in groups]
    return per_problem_reranked(scores.tolist(), passed)


def label_error(task: dict, labels: list[list[float]], weights=None) -> tuple[float, float]:
    """(MAE, wrong-side rate) of the learnable labels against the truth; optionally weighted."""
    err, wrong, total = 0.0, 0.0, 0.0
    for i, r in enumerate(task["train"]):
        for k, (y, t) in enumerate(zip(labels[i], r["truth"])):
            if r[FIXED_LABEL_COLUMN][k]:
                continue
            w = 1.0 if weights is None else weights[i][k]
            err, wrong, total = err + w * abs(y - t), wrong + w * (abs(y - t) >= 0.5), total + w
    return err / max(total, 1e-12), wrong / max(total, 1e-12)


def run_cell(noise: str, batch: int, seed: int, steps: int) -> dict:
    task = synthetic_task(noise, seed)
    noisy = [r["mc_labels"] for r in task["train"]]
    out = {"noise": noise, "batch": batch, "seed": seed}
    out["noisy"] = label_error(task, noisy)
    with tempfile.TemporaryDirectory() as tmp:
        plain = train(task, noisy, "none", batch, steps, seed, tmp)
        prm = plain.model
        preds = step_predictions(prm, task["train"])
        preds = [p[:-1] + [r["mc_labels"][-1]] for p, r in zip(preds, task["train"])]  # the verdict stays clean
        out["plain_preds"] = label_error(task, preds)
        out["pass_none"] = pass_values(prm, task["groups"]).tolist()
        lc = train(task, noisy, "label_correction", batch, steps, seed, tmp)
        out["corrected"] = label_error(task, lc.corrected_labels())
        out["pass_lc"] = pass_values(lc.model, task["groups"]).tolist()
        rw = train(task, noisy, "sample_reweighting", batch, steps, seed, tmp)
        out["reweighted"] = label_error(task, noisy, rw.meta_table.row_weights())
        out["pass_rw"] = pass_values(rw.model, task["groups"]).tolist()
        st = train(task, preds, "none", batch, steps, seed, tmp)
        out["pass_self"] = pass_values(st.model, task["groups"]).tolist()
    return out


def summarise(cells: list[dict]) -> list[dict]:
    table = []
    for key in dict.fromkeys((c["noise"], c["batch"]) for c in cells):
        group = [c for c in cells if (c["noise"], c["batch"]) == key]
        row = {"noise": key[0], "batch": key[1], "seeds": len(group)}
        for name in ("noisy", "corrected", "reweighted", "plain_preds"):
            mae = np.array([c[name][0] for c in group])
            wrong = np.array([c[name][1] for c in group])
            row[f"{name}_mae"], row[f"{name}_mae_sd"] = float(mae.mean()), float(mae.std())
            row[f"{name}_wrong"], row[f"{name}_wrong_sd"] = float(wrong.mean()), float(wrong.std())
        for name in ("none", "lc", "rw", "self"):
            row[f"pass_{name}"] = float(np.mean([v for c in group for v in c[f"pass_{name}"]]))
        diff = np.array([v for c in group for v in np.subtract(c["pass_lc"], c["pass_none"])])
        row["lc_minus_none_ci"] = bootstrap_ci(diff, n_bootstrap=2000)
        table.append(row)
    return table


def markdown(table: list[dict], header: str) -> str:
    lines = [header, "",
             "| noise | batch | seeds | MAE noisy | MAE corrected | MAE reweighted | MAE plain-PRM preds | wrong noisy "
             "| wrong corrected | wrong reweighted | wrong plain preds | pass@1 none | corrected | reweighted "
             "| self-train | corrected - none (95% CI) |",
             "|" + "---|" * 16]
    for r in table:
        def ms(name, what):
            return f"{r[f'{name}_{what}']:.3f} ± {r[f'{name}_{what}_sd']:.3f}"
        lo, hi = r["lc_minus_none_ci"]
        lines.append(
            f"| {r['noise']} | {r['batch']} | {r['seeds']} | {ms('noisy', 'mae')} | {ms('corrected', 'mae')} | "
            f"{ms('reweighted', 'mae')} | {ms('plain_preds', 'mae')} | {ms('noisy', 'wrong')} | "
            f"{ms('corrected', 'wrong')} | {ms('reweighted', 'wrong')} | {ms('plain_preds', 'wrong')} | "
            f"{r['pass_none']:.3f} | {r['pass_lc']:.3f} | {r['pass_rw']:.3f} | {r['pass_self']:.3f} | "
            f"{r['pass_lc'] - r['pass_none']:+.3f} [{lo:+.3f}, {hi:+.3f}] |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one seed, flip:0.3 and mc:4 at batch 8")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(OUT, "correction"), help="writes OUT.md and OUT.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    datasets.disable_progress_bars()
    noises = ["flip:0.3", "mc:4"] if args.quick else ["flip:0.1", "flip:0.3", "flip:0.45", "mc:4", "mc:16"]
    batches = [8] if args.quick else [8, 64]
    seeds = range(1 if args.quick else args.seeds)
    steps = {8: 120, 64: 60}
    cells, start = [], time.time()
    for noise in noises:
        for batch in batches:
            for seed in seeds:
                cells.append(run_cell(noise, batch, seed, steps[batch]))
                c = cells[-1]
                print(f"{noise} b{batch} s{seed}: MAE {c['noisy'][0]:.3f} -> {c['corrected'][0]:.3f}, wrong "
                      f"{c['noisy'][1]:.3f} -> {c['corrected'][1]:.3f}, preds {c['plain_preds'][0]:.3f}/"
                      f"{c['plain_preds'][1]:.3f}, pass {np.mean(c['pass_none']):.3f} -> "
                      f"{np.mean(c['pass_lc']):.3f} ({time.time() - start:.0f}s)", flush=True)
    table = summarise(cells)
    header = (f"# Label correction on synthetic multi-step tasks (library defaults; {time.time() - start:.0f}s)\n\n"
              f"`python benchmarks/bench_correction.py{' --quick' if args.quick else ''}`; mean ± sd over seeds; "
              "wrong = share of learnable labels on the wrong side of 0.5; optimizer steps: "
              f"{steps} by batch size; PRM lr 3e-3 (tiny model from scratch), every meta setting at its default.")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".md", "w") as f:
        f.write(markdown(table, header))
    with open(args.out + ".json", "w") as f:
        json.dump({"table": table, "cells": cells}, f, indent=1)
    print(markdown(table, header))


if __name__ == "__main__":
    main()
