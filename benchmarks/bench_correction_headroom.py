"""Where is label correction's pass@1 headroom? Oracle corrections of `bench_correction`'s hidden-vocabulary task.

Run length: `bench_correction.STEPS` (120 / 60 steps at batch 8 / 64), as its stored results were measured. On the
hidden vocabulary those PRMs are underfit; `bench_correction`'s part ``ranking`` now uses ``RANKING_STEPS``
(`correction_tried.md`, the round that changed it). Its stored results also had the 20-step meta warm-up of
the time; a rerun takes the current default (`meta_warmup_steps=0.25`, 30 / 15 steps here).

`bench_correction` finds that a PRM trained on the true step labels reranks better than one trained on the noisy
labels (truth - none, the headroom), and that no label method recovers it. This benchmark asks which labels carry
that headroom. Per cell and seed, a plain PRM (``none``) is trained on the noisy labels; then fresh PRMs are trained
on label sets in which an *oracle* sets some wrong-side labels (``|label - truth| >= 0.5``) to their truth:

- ``random_25`` / ``random_50`` / ``random_100``: a random 25 / 50 / 100 % of them (nested: a fix of 25 % is in
  the 50 %); what a correction that meets the issue's label targets (wrong-side rate <= 0.5 x noisy) would buy if
  its fixes fell at random and it added no errors;
- ``resisted``: those the plain PRM already predicts on the true side, the only ones a correction that follows the
  PRM's disagreement with its labels (self-training, confidence thresholds) can find;
- ``fooled``: those the plain PRM predicts on the wrong side too;
- ``passing_prefixes`` (no oracle): every non-final label of a passing train trajectory set to 1, what its clean
  verdict proves (the trajectory itself completes each of its prefixes into a pass).

Every PRM is trained on ``--replicas`` data orders (pass@1 averaged per problem); ``none_b`` is ``none`` on as many
other orders, the noise floor. CIs resample seeds, then problems (`evaluation.bootstrap_ci` with ``clusters``).

It also measures whether the clean meta set can point at the fooled labels: for every non-final train label, the
change of its score (logit) under a small step down the meta loss of the plain PRM over every meta program (the
one-step hypergradient's direction, centred over the labels; the same quantity DARTS estimates per window), and
reports the AUROC with which "the meta step moves the score away from the label" picks out fooled labels among the
labels the PRM agrees with, beside the AUROC of the PRM's own doubt ``-|p - 0.5|``. Part ``signal`` repeats that
measure (order 0 only, no oracle PRMs) along the implicit hypergradient's direction (5 Neumann terms), with the
meta set kept out of the plain PRM's training (``meta_warmup_steps=0``), and grown by programs of further problems
(`extra_meta_programs`): is the one-step unroll, the meta set's use in the warm-up, or its size what limits it?

    nice -n 10 python benchmarks/bench_correction_headroom.py --workers 2   # both parts, ~17 min; results/correction_headroom.*
    nice -n 10 python benchmarks/bench_correction_headroom.py --part signal --workers 2   # one part; the other is kept
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_correction import (  # noqa: E402
    OUT, PROMPT, STEPS, _merge, _pool, hidden_vocabulary, label_error, paired_difference, pass_values, random_program,
    step_predictions, synthetic_task, train,
)

from dreamprm_trl.training.hypergradient import _assign, _central_difference, neumann_inverse_hvp  # noqa: E402
from dreamprm_trl.training.meta_step import MODEL_INPUTS, _grads  # noqa: E402

LABEL_SETS = ("random_25", "random_50", "random_100", "resisted", "fooled", "passing_prefixes")
CELLS = (("flip:0.3", 8), ("flip:0.3", 64), ("mc:4", 8))
#: Part ``signal``: (extra meta programs, ``meta_warmup_steps`` of the plain PRM (``None``: the default), Neumann
#: terms of the direction (0: the one-step direction)) per cell.
SIGNAL_GRID = ((0, None, 0), (0, None, 5), (0, 0, 0), (192, 0, 0), (960, 0, 0))
SIGNAL_CELLS = (("flip:0.3", 8), ("mc:4", 8))


def meta_score_shift(trainer, rows: list[dict], eps: float = 1e-2, neumann_steps: int = 0) -> list[list[float]]:
    """Per step of ``rows``: logit(score at theta - eps d) - logit(score at theta + eps d) (positive: a meta step
    raises the score). ``d`` is the unit gradient ``G`` of the trainer's meta loss over its whole meta set, or with
    ``neumann_steps`` > 0 ``H^-1 G`` (`hypergradient.neumann_inverse_hvp`, ``H`` the Hessian of the inner loss
    on every train row's noisy labels): the implicit hypergradient's direction instead of the one-step one."""
    model = trainer.model
    params = [p for p in model.parameters() if p.requires_grad]
    model.eval()  # `compute_loss` then trains on the raw labels, the meta step's passes are deterministic
    meta = trainer._prepare_inputs(trainer.meta_collator(list(trainer.meta_dataset)))
    direction = _grad(params, lambda: trainer._meta_loss(model(**{k: meta[k] for k in MODEL_INPUTS}).step_logits, meta))
    if neumann_steps:
        direction, _ = neumann_inverse_hvp(direction, inner_hvp(trainer, params, eps), neumann_steps)

    def logit_scores() -> list[np.ndarray]:
        return [np.log(np.clip(s, 1e-6, 1 - 1e-6)) - np.log(np.clip(1 - np.asarray(s), 1e-6, 1))
                for s in step_predictions(model, rows)]

    down, up, _ = _perturbed(params, [-t for t in direction], eps, logit_scores)
    return [list(a - b) for a, b in zip(down, up)]


def inner_hvp(trainer, params: list, eps: float = 1e-2):
    """``u -> H u``, ``H`` the Hessian of the plain inner loss (the trainer's `compute_loss` outside training: the
    mean step loss on the raw labels) on every train row, by central differences of its gradient at
    ``theta +- eps u / ||u||``."""
    batch = trainer._prepare_inputs(trainer.data_collator(list(trainer.train_dataset)))

    def hvp(u: list[torch.Tensor]) -> list[torch.Tensor]:
        plus, minus, h = _perturbed(params, u, eps, lambda: _grad(params, lambda: trainer.compute_loss(trainer.model,
                                                                                                        batch)))
        return [(a - b) / (2 * h) for a, b in zip(plus, minus)]

    return hvp


def _grad(params: list, loss_fn) -> list[torch.Tensor]:
    """``d loss_fn() / d params`` (the trainer's `_grads`), detached, with grad on whatever the caller's mode."""
    with torch.enable_grad():
        return [g.detach() for g in _grads(loss_fn(), params)]


def _perturbed(params: list, u: list[torch.Tensor], eps: float, fn):
    """``(fn() at theta + h u, fn() at theta - h u, h)`` with ``h = eps / ||u||`` (the library's central
    difference, `hypergradient._central_difference`); ``params`` restored."""
    original = [p.detach().clone() for p in params]
    with torch.no_grad():  # in-place moves of leaf parameters; `_grad` re-enables grad for itself
        try:
            return _central_difference(params, original, u, fn, eps)
        finally:
            _assign(params, original)


def oracle_labels(rows: list[dict], noisy: list[list[float]], preds: list[list[float]], seed: int) -> dict:
    """Every `LABEL_SETS` label set: the oracle's (chosen wrong-side non-final labels set to their truth) and
    ``passing_prefixes`` (module docstring)."""
    rng = random.Random(f"oracle-{seed}")
    draw = [[rng.random() for _ in y] for y in noisy]

    def fixed(rule) -> list[list[float]]:
        return [[t if k < len(y) - 1 and abs(v - t) >= 0.5 and rule(p, t, u) else v
                 for k, (v, t, p, u) in enumerate(zip(y, r["truth"], pr, us))]
                for y, r, pr, us in zip(noisy, rows, preds, draw)]

    sets = {f"random_{q}": fixed(lambda p, t, u, q=q: u < q / 100) for q in (25, 50, 100)}
    sets["resisted"] = fixed(lambda p, t, u: (p > 0.5) == (t > 0.5))
    sets["fooled"] = fixed(lambda p, t, u: (p > 0.5) != (t > 0.5))
    sets["passing_prefixes"] = [[1.0] * (len(y) - 1) + [y[-1]] if y[-1] == 1.0 else list(y) for y in noisy]
    return sets


def meta_signal(rows: list[dict], noisy: list[list[float]], preds: list[list[float]], shift: list[list[float]]) -> dict:
    """Shares of resisted / fooled labels and how well the meta step and the PRM's doubt find the fooled ones."""
    p, y, t, d = (np.array([v for row in rows_ for v in row[:-1]]) for rows_ in
                  (preds, noisy, [r["truth"] for r in rows], shift))
    d = d - d.mean()
    wrong, agree = np.abs(y - t) >= 0.5, (p > 0.5) == (y > 0.5)
    fooled = wrong & agree
    away = np.where(y > 0.5, -d, d)  # the meta step moves the score away from the label
    top = agree & (away >= np.quantile(away[agree], 0.9))
    return {"labels": int(len(y)), "wrong": float(wrong.mean()), "fooled": float(fooled.mean()),
            "resisted": float((wrong & ~agree).mean()),
            "auroc_meta_fooled": float(roc_auc_score(fooled[agree], away[agree])),
            "auroc_doubt_fooled": float(roc_auc_score(fooled[agree], -np.abs(p - 0.5)[agree])),
            "precision_meta_top10": float(fooled[top].mean()),
            "auroc_meta_wrong": float(roc_auc_score(wrong, away)),
            "auroc_disagreement_wrong": float(roc_auc_score(wrong, np.where(y > 0.5, 1 - p, p)))}


def extra_meta_programs(seed: int, n: int, size: int) -> list[dict]:
    """``n`` meta programs of further problems (one each, policy quality ~ U(0.55, 0.95)) over ``seed``'s hidden
    vocabulary, with clean verdicts: what a larger meta set would add."""
    good, bad = hidden_vocabulary(seed, size)
    rng = random.Random(f"extra-meta-{seed}")
    programs = [random_program(rng, rng.uniform(0.55, 0.95), good, bad) for _ in range(n)]
    return [{"task_id": f"extra{i}", "prompt": PROMPT, "steps": steps, "passed": bool(truth[-1])}
            for i, (steps, truth) in enumerate(programs)]


def signal_seed(noise: str, batch: int, seed: int, size: int, extra: int, warmup: int | None,
                neumann_steps: int = 0) -> dict:
    """`meta_signal` of a plain PRM whose meta set has ``extra`` more programs and whose warm-up on train ∪ meta
    lasts ``warmup`` steps (``None``: the default), along the meta direction of ``neumann_steps`` terms."""
    task = synthetic_task(noise, seed, n_eval=200, vocabulary="hidden", hidden_size=size)
    task["meta"] = task["meta"] + extra_meta_programs(seed, extra, size)
    rows, noisy = task["train"], [r["mc_labels"] for r in task["train"]]
    with tempfile.TemporaryDirectory() as tmp:
        plain = train(task, noisy, "none", batch, STEPS[batch], seed, tmp,
                      **({} if warmup is None else {"meta_warmup_steps": warmup}))
        shift = meta_score_shift(plain, rows, neumann_steps=neumann_steps)
        signal = meta_signal(rows, noisy, step_predictions(plain.model, rows), shift)
    return {"noise": noise, "batch": batch, "seed": seed, "size": size, "meta_programs": len(task["meta"]),
            "extra": extra, "warmup": warmup, "neumann_steps": neumann_steps, **signal}


def run_seed(noise: str, batch: int, seed: int, size: int, replicas: int) -> dict:
    """One (noise, batch, seed) of the hidden vocabulary: pass@1 of every PRM over ``replicas`` data orders, and
    (order 0) the label errors of the oracle sets and the meta signal."""
    task = synthetic_task(noise, seed, n_eval=200, vocabulary="hidden", hidden_size=size)
    rows, groups = task["train"], task["groups"]
    noisy = [r["mc_labels"] for r in rows]
    passes: dict[str, list] = {}
    out = {"noise": noise, "batch": batch, "seed": seed, "size": size, "replicas": replicas}
    with tempfile.TemporaryDirectory() as tmp:
        def fit(labels, data_seed):
            return train(task, labels, "none", batch, STEPS[batch], seed, tmp, data_seed=data_seed)

        for r in range(replicas):
            plain = fit(noisy, seed + 1000 * r)  # order 0 is the trainer's default data_seed = seed
            preds = step_predictions(plain.model, rows)
            passes.setdefault("none", []).append(pass_values(plain.model, groups))
            passes.setdefault("none_b", []).append(pass_values(fit(noisy, seed + 1000 * (replicas + r)).model, groups))
            sets = oracle_labels(rows, noisy, preds, seed)
            for name in LABEL_SETS:
                passes.setdefault(name, []).append(pass_values(fit(sets[name], seed + 1000 * r).model, groups))
            if r == 0:
                out["signal"] = meta_signal(rows, noisy, preds, meta_score_shift(plain, rows))
                out["errors"] = {"noisy": label_error(task, noisy), **{n: label_error(task, sets[n]) for n in sets}}
    out.update({f"pass_{n}": np.mean(v, axis=0).tolist() for n, v in passes.items()})
    return out


def summarise(cells: list[dict]) -> list[dict]:
    """Per (size, noise, batch): mean pass@1, each label set minus ``none`` with a seed-clustered CI, mean errors
    and meta signal over seeds."""
    table = []
    for key in dict.fromkeys((c["size"], c["noise"], c["batch"]) for c in cells):
        group = [c for c in cells if (c["size"], c["noise"], c["batch"]) == key]
        row = {"size": key[0], "noise": key[1], "batch": key[2], "seeds": len(group), "replicas": group[0]["replicas"],
               "signal": {k: float(np.mean([c["signal"][k] for c in group])) for k in group[0]["signal"]},
               "errors": {n: np.mean([c["errors"][n] for c in group], axis=0).tolist() for n in group[0]["errors"]}}
        for name in ("none", "none_b") + LABEL_SETS:
            row[f"pass_{name}"] = float(np.mean([v for c in group for v in c[f"pass_{name}"]]))
            if name != "none":
                row[f"{name}_minus_none"], row[f"{name}_minus_none_ci"] = paired_difference(group, name, "none")
        table.append(row)
    return table


def summarise_signal(runs: list[dict]) -> list[dict]:
    """Mean `meta_signal` measures over seeds per (noise, batch, extra, warmup, neumann_steps)."""
    table, keys = [], ("noise", "batch", "extra", "warmup", "neumann_steps")
    for key in dict.fromkeys(tuple(r[k] for k in keys) for r in runs):
        group = [r for r in runs if tuple(r[k] for k in keys) == key]
        row = {k: group[0][k] for k in keys + ("size",)}
        row.update({k: float(np.mean([r[k] for r in group])) for k in SIGNAL_KEYS + ("meta_programs",)})
        table.append(dict(row, seeds=len(group)))
    return table


SIGNAL_KEYS = ("wrong", "resisted", "fooled", "auroc_meta_fooled", "auroc_doubt_fooled", "precision_meta_top10",
               "auroc_meta_wrong", "auroc_disagreement_wrong")
SIGNAL_HEADER = ("wrong-side | resisted | fooled | AUROC meta step: fooled among labels the PRM agrees with | AUROC "
                 "PRM doubt: same | fooled share of the meta step's top 10 % | AUROC meta step: any wrong-side label | "
                 "AUROC PRM disagreement: same |")


def markdown_signal(part: dict) -> list[str]:
    lines = ["## Part `signal`: the meta step without the warm-up's meta programs, with more of them, and implicit",
             "", part["command"], "", "Plain PRM on the noisy labels, order 0, mean over seeds. Direction: the meta "
             "loss's gradient (one step) or `H^-1` of it by 5 Neumann terms (`hypergradient.neumann_inverse_hvp`, "
             "`H` the inner loss's Hessian on every train row).", "",
             "| strings | noise | batch | meta programs | meta in the warm-up | direction | " + SIGNAL_HEADER,
             "|" + "---|" * 14]
    for r in part["table"]:
        warm = "20 steps (default)" if r["warmup"] is None else "no"
        way = f"Neumann {r['neumann_steps']}" if r.get("neumann_steps") else "one step"
        lines.append(f"| {2 * r['size']} | {r['noise']} | {r['batch']} | {r['meta_programs']:.0f} | {warm} | {way} | "
                     + " | ".join(f"{r[k]:.3f}" for k in SIGNAL_KEYS) + " |")
    return lines


def markdown_headroom(table: list[dict], command: str) -> list[str]:
    lines = ["## Part `headroom`: PRMs on oracle-fixed labels", "",
             command, "", "Pass@1 of PRMs trained on oracle-fixed label sets, minus the plain PRM on the noisy labels "
             "(95 % CI over seeds, then problems); in parentheses: the label set's wrong-side rate.", "",
             "| strings | noise | batch | seeds x orders | none | noise floor: none' - none | "
             + " | ".join(LABEL_SETS) + " |", "|" + "---|" * (6 + len(LABEL_SETS))]
    for r in table:
        cells = []
        for name in ("none_b",) + LABEL_SETS:
            lo, hi = r[f"{name}_minus_none_ci"]
            err = f" (wrong {r['errors'][name][1]:.3f})" if name in r["errors"] else ""
            cells.append(f"{r[f'{name}_minus_none']:+.3f} [{lo:+.3f}, {hi:+.3f}]{err}")
        lines.append(f"| {2 * r['size']} | {r['noise']} | {r['batch']} | {r['seeds']} x {r['replicas']} | "
                     f"{r['pass_none']:.3f} (wrong {r['errors']['noisy'][1]:.3f}) | " + " | ".join(cells) + " |")
    lines += ["", "Can the meta set find the fooled labels? Non-final train labels of the plain PRM (order 0), mean "
              "over seeds:", "", "| strings | noise | batch | " + SIGNAL_HEADER, "|" + "---|" * 11]
    for r in table:
        lines.append(f"| {2 * r['size']} | {r['noise']} | {r['batch']} | "
                     + " | ".join(f"{r['signal'][k]:.3f}" for k in SIGNAL_KEYS) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["headroom", "signal", "all"], default="all",
                        help="run one part; the other, if in OUT.json, is kept")
    parser.add_argument("--seeds", type=int, default=9)
    parser.add_argument("--replicas", type=int, default=4, help="data orders each PRM is trained on (headroom)")
    parser.add_argument("--size", type=int, default=8, help="good (and bad) strings of the hidden vocabulary")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", default=os.path.join(OUT, "correction_headroom"), help="writes OUT.md and OUT.json")
    args = parser.parse_args()
    for part in (["headroom", "signal"] if args.part == "all" else [args.part]):
        start = time.time()
        with _pool(args.workers) as pool:
            if part == "headroom":
                futures = [pool.submit(run_seed, noise, batch, seed, args.size, args.replicas)
                           for noise, batch in CELLS for seed in range(args.seeds)]
            else:
                futures = [pool.submit(signal_seed, noise, batch, seed, args.size, extra, warmup, neumann)
                           for noise, batch in SIGNAL_CELLS for extra, warmup, neumann in SIGNAL_GRID
                           for seed in range(args.seeds)]
            cells = [f.result() for f in futures]
        defaults = (("seeds", 9), ("replicas", 4), ("size", 8), ("workers", 1))
        flags = "".join(f" --{k} {getattr(args, k)}" for k, v in defaults if getattr(args, k) != v)
        command = (f"`nice -n 10 python benchmarks/bench_correction_headroom.py --part {part}{flags}` "
                   f"({time.time() - start:.0f} s, {args.workers} process{'es' if args.workers > 1 else ''})")
        table = summarise(cells) if part == "headroom" else summarise_signal(cells)
        parts = _merge(args.out + ".json", part, {"command": command, "table": table, "cells": cells})
    text = report(parts)
    with open(args.out + ".md", "w") as f:
        f.write(text)
    print(text)


def report(parts: dict) -> str:
    """correction_headroom.md from every part in OUT.json."""
    lines = ["# Where is label correction's pass@1 headroom? (`benchmarks/bench_correction_headroom.py`)", ""]
    if "headroom" in parts:
        lines += markdown_headroom(parts["headroom"]["table"], parts["headroom"]["command"]) + [""]
    if "signal" in parts:
        lines += markdown_signal(parts["signal"]) + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
