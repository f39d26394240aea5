"""How good is the label hypergradient on the benchmark's tiny real model? Two measures, one seeded run each.

1. **Against finite differences.** At one training window after warm-up, the trainer's DARTS hypergradient
   (float32, the library path) and ``torch.func``'s exact one are compared with a float64 central finite
   difference of the one-step-unrolled meta loss, entry by entry over the window's learnable labels (cosine).
2. **Against the truth.** Over ``windows`` windows, the fraction of *wrong* noisy labels (``|y - truth| >= 0.5``)
   whose descent direction ``-g`` points towards the truth, raw and with the window mean removed; and the common
   mode ``|mean(g)| / rms(g)`` (1 = every label pushed the same way).

    nice -n 10 python benchmarks/bench_hypergradient_quality.py [--noise flip:0.3] [--vocabulary hidden]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_correction import synthetic_task, train  # noqa: E402

from dreamprm_trl.training.hypergradient import unrolled_meta_loss  # noqa: E402
from dreamprm_trl.schema import IGNORE_INDEX  # noqa: E402


#: Warm-up steps before the measured window: 20, the count default when its results were stored (the default is now
#: a share of the run, 0.25; at the benchmark's 120 / 60 steps that is 30 / 15).
WARMUP = 20


def window_hypergradient(trainer, rows: list[int], kind: str = "darts"):
    """``(g, batch)``: the hypergradient of the unrolled step over train ``rows`` (plain gradient in ``.grad``)."""
    prm = trainer.model
    batch = trainer._prepare_inputs(trainer.data_collator([dict(trainer.train_dataset[i]) for i in rows]))
    prm.zero_grad()
    prm.train()
    n = (batch["step_labels"] != IGNORE_INDEX).sum()
    trainer.compute_loss(prm, batch, num_items_in_batch=n).backward()
    trainer.args.hypergradient = kind
    g, _ = trainer.compute_hypergradient(prm, [batch], None)
    prm.zero_grad()
    return g.detach().double(), batch


def finite_difference(trainer, batch, g: torch.Tensor, h: float = 1e-3) -> torch.Tensor:
    """Float64 central difference of the unrolled meta loss along each entry where ``g`` is non-zero."""
    prm = copy.deepcopy(trainer.model).double().eval()
    meta_batch = trainer._meta_batch()
    params = {n: p.detach() for n, p in prm.named_parameters() if p.requires_grad}
    num = (batch["step_labels"] != IGNORE_INDEX).sum().double()
    lr = trainer.args.meta_inner_learning_rate

    def logits(p, b):
        inputs = {k: b[k] for k in ("input_ids", "attention_mask", "step_positions")}
        return torch.func.functional_call(prm, p, args=(), kwargs=inputs, strict=False).step_logits

    def loss(phi):
        inner = lambda p, f: trainer._table_loss(logits(p, batch), batch, f, num)  # noqa: E731
        outer = lambda p: trainer._meta_loss(logits(p, meta_batch), meta_batch)  # noqa: E731
        return unrolled_meta_loss(inner, outer, params, phi, lr)

    phi0, fd = trainer.meta_table.phi.detach().double(), torch.zeros_like(g)
    for i in torch.nonzero(g).flatten().tolist():
        e = torch.zeros_like(phi0)
        e[i] = h
        fd[i] = (loss(phi0 + e) - loss(phi0 - e)) / (2 * h)
    return fd


def truth_agreement(trainer, task, batch_size: int, windows: int, seed: int) -> dict:
    """Direction of ``-g`` vs the truth for wrong labels, raw and centred; the common-mode share of ``g``."""
    table = trainer.meta_table
    truth = torch.tensor([t for r in task["train"] for t in r["truth"]], dtype=torch.float64)
    y = table.y.detach().double()
    gen = np.random.default_rng(seed)
    raw, centred, common = [], [], []
    for _ in range(windows):
        rows = gen.choice(len(task["train"]), size=batch_size, replace=False).tolist()
        g, _ = window_hypergradient(trainer, rows)
        seen = (g != 0) & table.learnable
        wrong = seen & ((y - truth).abs() >= 0.5)
        common.append((g[seen].mean().abs() / g[seen].pow(2).mean().sqrt()).item())
        towards = torch.sign(truth - y)
        if wrong.any():
            raw.append(((-g[wrong]).sign() == towards[wrong]).double().mean().item())
            gc = g - g[seen].mean()
            centred.append(((-gc[wrong]).sign() == towards[wrong]).double().mean().item())
    return {"towards_truth_raw": float(np.mean(raw)), "towards_truth_centred": float(np.mean(centred)),
            "common_mode": float(np.mean(common)), "windows": windows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--noise", default="flip:0.3")
    parser.add_argument("--vocabulary", default="marked", choices=["marked", "hidden"])
    parser.add_argument("--windows", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = synthetic_task(args.noise, args.seed, vocabulary=args.vocabulary, n_eval=8)
    noisy = [r["mc_labels"] for r in task["train"]]
    for batch in (8, 64):
        with tempfile.TemporaryDirectory() as tmp:
            # run exactly the warm-up (no meta step yet): the state the first meta step sees
            trainer = train(task, noisy, "label_correction", batch, WARMUP, args.seed, tmp, meta_warmup_steps=WARMUP)
            trainer.args.meta_inner_learning_rate = trainer.args.learning_rate  # the schedule ended at lr 0
            rows = list(range(8))
            d, b = window_hypergradient(trainer, rows, "darts")
            e, _ = window_hypergradient(trainer, rows, "exact")
            fd = finite_difference(trainer, b, e)
            cos = torch.nn.functional.cosine_similarity
            print(f"batch {batch}: cos(darts, fd) {cos(d, fd, dim=0).item():.4f}, cos(exact, fd) "
                  f"{cos(e, fd, dim=0).item():.4f} over {int((fd != 0).sum())} labels", flush=True)
            print(f"batch {batch}: {truth_agreement(trainer, task, batch, args.windows, args.seed)}", flush=True)


if __name__ == "__main__":
    main()
