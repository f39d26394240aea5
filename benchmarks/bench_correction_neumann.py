"""Prototype, not library code: label correction with an implicit-function hypergradient (Neumann series).

The library's hypergradient unrolls one inner step: ``-lr * d2l/(dphi dtheta) . v``, ``v = grad L_meta``. The
implicit function theorem at a fitted ``theta`` gives ``-d2l/(dphi dtheta) . H^-1 v`` (``H`` the inner loss's
Hessian on the window); ``K`` Neumann terms approximate ``H^-1 v`` by ``eta * sum_j (I - eta H)^j v`` with ``eta =
0.5 / |lambda_max|`` (3 power iterations), Hessian-vector products by central differences of the window's inner
gradient. ``K = 0`` is the one-step direction at ``theta`` (the library's, up to where ``v`` is taken). Everything
else (RMS standardising, centring, the reliability gate, the clipped SGD step) is the library's.

Two parts: per-visit accuracy of the label direction (`bench_correction_signal.run`, marked and 16 hidden strings,
flip 30 %, batch 8, seeds 0-2), and held-out pass@1 of the corrected PRM on the 16-string ranking cells (flip 30 %
and MC M=4, batch 8, 9 seeds), paired with the `none` and self-training PRMs stored in ``results/correction.json``
(run ``bench_correction.py --part ranking --seeds 9`` first).

    nice -n 10 python benchmarks/bench_correction_neumann.py --workers 2   # ~8 min; writes results/correction_neumann.*
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_correction as bc  # noqa: E402
import bench_correction_signal as sig  # noqa: E402

from dreamprm_trl.training.hypergradient import darts_hypergradient  # noqa: E402
from dreamprm_trl.training.meta_step import MODEL_INPUTS  # noqa: E402


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return sum((x.double() * y.double()).sum() for x, y in zip(a, b)).item()


class NeumannTrainer(sig.RecordingTrainer):
    """`RecordingTrainer` whose DARTS direction ``v`` is replaced by ``K`` Neumann terms of ``H^-1 v``."""

    neumann_steps = 5

    def _darts(self, prm, params, window, meta_batch, num_items, lr, scale=None):
        original = [p.detach().clone() for p in params]

        def assign(values):
            with torch.no_grad():
                for p, v in zip(params, values):
                    p.copy_(v)

        def grads_of(loss):
            g = torch.autograd.grad(loss, params, allow_unused=True)
            return [torch.zeros_like(p) if x is None else x.detach() for p, x in zip(params, g)]

        def inner_grad():
            with torch.enable_grad():
                return grads_of(sum(self.compute_loss(prm, b, num_items_in_batch=num_items) for b in window))

        def hvp(u):
            eps = 0.01 / max(_dot(u, u) ** 0.5, 1e-12)
            assign([o + eps * t for o, t in zip(original, u)])
            plus = inner_grad()
            assign([o - eps * t for o, t in zip(original, u)])
            minus = inner_grad()
            assign(original)
            return [(a - b) / (2 * eps) for a, b in zip(plus, minus)]

        with torch.enable_grad():
            meta_loss = self._meta_loss(prm(**{k: meta_batch[k] for k in MODEL_INPUTS}).step_logits, meta_batch)
            v = grads_of(meta_loss)
        u, lam = v, 1.0
        for _ in range(3):  # power iteration: |lambda_max| of H along the meta gradient's span
            hu = hvp(u)
            lam = (_dot(hu, hu) / max(_dot(u, u), 1e-30)) ** 0.5
            u = [t / max(lam, 1e-12) for t in hu]
        eta = 0.5 / max(lam, 1e-12)
        total, term = list(v), list(v)
        for _ in range(self.neumann_steps):
            term = [t - eta * h for t, h in zip(term, hvp(term))]
            total = [a + t for a, t in zip(total, term)]

        @torch.no_grad()
        def table_grad_fn():
            return sum(self._table_grad(prm(**{k: b[k] for k in MODEL_INPUTS}).step_logits, b, num_items)
                       for b in window)

        # zero inner gradient: the "unrolled" point is theta itself; meta_grad_fn hands back the Neumann direction
        return darts_hypergradient(params, [torch.zeros_like(p) for p in params], lr,
                                   lambda: (total, meta_loss.detach()), table_grad_fn, self.args.darts_alpha)


def _trainer(steps: int) -> type:
    return type(f"Neumann{steps}Trainer", (NeumannTrainer,), {"neumann_steps": steps})


def signal_cell(args: tuple) -> dict:
    steps, vocabulary, size, seed = args
    return dict(sig.run(vocabulary, size, "flip:0.3", 8, seed, trainer_cls=_trainer(steps)), neumann_steps=steps)


def ranking_cell(args: tuple) -> dict:
    steps, noise, seed = args
    task = bc.synthetic_task(noise, seed, n_eval=200, vocabulary="hidden", hidden_size=8)
    noisy = [r["mc_labels"] for r in task["train"]]
    with tempfile.TemporaryDirectory() as tmp:
        trainer = bc.train(task, noisy, "label_correction", 8, bc.STEPS[8], seed, tmp, _trainer(steps))
        return {"neumann_steps": steps, "noise": noise, "seed": seed,
                "noisy": bc.label_error(task, noisy), "corrected": bc.label_error(task, trainer.corrected_labels()),
                "pass_lc": bc.pass_values(trainer.model, task["groups"]).tolist()}


def _paired(cells: list[dict], stored: dict, other: str) -> str:
    diff = np.concatenate([np.asarray(c["pass_lc"]) - stored[c["noise"], c["seed"]][f"pass_{other}"] for c in cells])
    lo, hi = bc.bootstrap_ci(diff, n_bootstrap=2000)  # as bench_correction's paired differences
    return f"{diff.mean():+.3f} [{lo:+.3f}, {hi:+.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--signal-steps", default="0,5,10,20", help="Neumann terms K of the signal part")
    parser.add_argument("--ranking-steps", default="5,20", help="Neumann terms K of the ranking part")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", default=os.path.join(bc.OUT, "correction_neumann"), help="writes OUT.md and OUT.json")
    args = parser.parse_args()
    bc._quiet()
    start = time.time()
    with open(os.path.join(bc.OUT, "correction.json")) as f:
        stored = {(c["noise"], c["seed"]): {k: np.asarray(v) for k, v in c.items() if k.startswith("pass_")}
                  for c in json.load(f)["parts"]["ranking"]["cells"] if c["size"] == 8 and c["batch"] == 8}
    seeds = sorted({s for _, s in stored})
    sig_grid = [(k, v, z, s) for k in map(int, args.signal_steps.split(",")) for v, z in (("marked", 6), ("hidden", 8))
                for s in range(3)]
    rank_grid = [(k, n, s) for k in map(int, args.ranking_steps.split(",")) for n in ("flip:0.3", "mc:4")
                 for s in seeds]
    with bc._pool(args.workers) as pool:
        signal = list(pool.map(signal_cell, sig_grid))
        ranking = list(pool.map(ranking_cell, rank_grid))
    lines = ["# Prototype: implicit-function (Neumann) label hypergradient (`benchmarks/bench_correction_neumann.py`)",
             "", f"`nice -n 10 python benchmarks/bench_correction_neumann.py --workers {args.workers}` "
             f"({time.time() - start:.0f} s); flip 30 % unless named, batch 8, library defaults otherwise.", "",
             "## Per-visit accuracy of the label direction (seeds 0-2)", "",
             "| K | steps | per-visit accuracy (per seed) | wrong noisy | wrong corrected (per seed) |",
             "|---|---|---|---|---|"]
    for key in dict.fromkeys((c["neumann_steps"], c["vocabulary"]) for c in signal):
        group = [c for c in signal if (c["neumann_steps"], c["vocabulary"]) == key]
        acc, wrong = [c["accuracy"] for c in group], [c["corrected_wrong"] for c in group]
        what = "marked" if key[1] == "marked" else "hidden, 16 strings"
        lines.append(f"| {key[0]} | {what} | {np.mean(acc):.3f} ({' / '.join(f'{a:.3f}' for a in acc)}) | "
                     f"{np.mean([c['noisy_wrong'] for c in group]):.3f} | {np.mean(wrong):.3f} "
                     f"({' / '.join(f'{w:.3f}' for w in wrong)}) |")
    lines += ["", f"## 16 hidden strings: held-out pass@1 ({len(seeds)} seeds, paired with the stored PRMs)", "",
              "| K | noise | MAE noisy -> corrected | wrong noisy -> corrected | corrected - none (95 % CI) "
              "| corrected - self-train (95 % CI) |", "|---|---|---|---|---|---|"]
    for key in dict.fromkeys((c["neumann_steps"], c["noise"]) for c in ranking):
        group = [c for c in ranking if (c["neumann_steps"], c["noise"]) == key]
        mean = {m: np.mean([c[m] for c in group], axis=0) for m in ("noisy", "corrected")}
        lines.append(f"| {key[0]} | {key[1]} | {mean['noisy'][0]:.3f} -> {mean['corrected'][0]:.3f} | "
                     f"{mean['noisy'][1]:.3f} -> {mean['corrected'][1]:.3f} | {_paired(group, stored, 'none')} | "
                     f"{_paired(group, stored, 'self')} |")
    with open(args.out + ".json", "w") as f:
        json.dump({"signal": signal, "ranking": ranking}, f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
