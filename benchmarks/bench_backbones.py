"""Default-backbone comparison (preparation): packaged MiniLM (LoRA) vs a tiny causal Qwen2 trained from a config.

Both PRMs train briefly on the bundled HumanEval CodeGen-16B candidates of the training tasks and rerank the
candidates of held-out tasks (every 4th task). Labels here are the shipped pass/fail labels broadcast to every step
(an outcome-label proxy: no Monte-Carlo rollouts are needed, so this runs offline in minutes); the trainer-based
dev reranking task with corrected step labels replaces this loop once wired. Plain PyTorch loop over
`FunctionStepPRM.forward` / the collator, so it measures the backbones, not the trainer.

    python benchmarks/bench_backbones.py --epochs 1   # writes benchmarks/results/backbones.json and .md
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def load_split(n_candidates: int, max_train_tasks: int | None):
    from dreamprm_trl.tasks import (
        load_bundled_humaneval_candidates,
        load_bundled_humaneval_reference_labels,
        load_humaneval,
    )

    problems = {p.task_id: p for p in load_humaneval()}
    cands = load_bundled_humaneval_candidates(n_candidates)
    labels = load_bundled_humaneval_reference_labels(n_candidates)
    ids = sorted(cands, key=lambda t: int(t.split("/")[-1]))
    dev = ids[::4]
    train = [t for t in ids if t not in set(dev)][:max_train_tasks]

    def rows(tasks):
        out = []
        for t in tasks:
            for code, ok in zip(cands[t], labels[t]):
                out.append({"task_id": t, "prompt": "", "code": problems[t].prompt + code, "passed": ok})
        return out

    return rows(train), rows(dev), dev


def make_prm(name: str, train_rows: list[dict]):
    import torch

    from dreamprm_trl.backbones import load_minilm, tiny_causal_backbone, train_bytelevel_tokenizer
    from dreamprm_trl.modeling import FunctionStepPRM

    torch.manual_seed(0)
    if name == "minilm":
        model, tok = load_minilm()
        return FunctionStepPRM.from_backbone(model, tok), 1e-3
    tok = train_bytelevel_tokenizer([r["code"] for r in train_rows], vocab_size=2048)
    model, tok = tiny_causal_backbone(tok, hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2)
    return FunctionStepPRM.from_backbone(model, tok, lora_config=None), 3e-4  # random init: train it all


def train(prm, rows: list[dict], lr: float, epochs: int, batch_size: int, seed: int = 0) -> dict:
    import torch
    from tqdm.auto import tqdm

    from dreamprm_trl.collator import code_to_steps

    for r in rows:
        r["steps"] = code_to_steps(r["code"])
        r["labels"] = [float(r["passed"])] * len(r["steps"])
    collate = prm.collator()
    opt = torch.optim.AdamW([p for p in prm.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    prm.train()
    rng = random.Random(seed)
    losses, t0 = [], time.perf_counter()
    for _ in range(epochs):
        order = list(range(len(rows)))
        rng.shuffle(order)
        for i in tqdm(range(0, len(order), batch_size), desc="train"):
            batch = collate([rows[j] for j in order[i : i + batch_size]])
            if batch["input_ids"].shape[0] == 0:
                continue
            loss = prm(**batch).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    prm.eval()
    tail = losses[-20:]
    return {"train_seconds": time.perf_counter() - t0, "final_loss": sum(tail) / max(1, len(tail)),
            "dropped_rows": collate.num_dropped}


def evaluate(prm, rows: list[dict], dev: list[str]) -> dict:
    from dreamprm_trl.metrics import rerank_metrics

    scored = prm.score_batch([(r["prompt"], r["code"]) for r in rows], batch_size=8)
    out = {}
    for how in ("min", "mean", "last"):
        scores = {t: [] for t in dev}
        passed = {t: [] for t in dev}
        for r, s in zip(rows, scored):
            value = s.aggregate(how)
            scores[r["task_id"]].append(-1.0 if value != value else value)  # too long for the backbone: last
            passed[r["task_id"]].append(r["passed"])
        m = rerank_metrics([scores[t] for t in dev], [passed[t] for t in dev], n_bootstrap=1000)
        out[how] = {k: m[k] for k in ("reranked_pass@1", "reranked_pass@1_ci_low", "reranked_pass@1_ci_high",
                                      "mean_pass@1", "oracle_pass@N")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbones", nargs="+", default=["minilm", "tiny-qwen2"])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--candidates", type=int, default=10, help="bundled candidates per task")
    ap.add_argument("--max-train-tasks", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)

    train_rows, dev_rows, dev = load_split(args.candidates, args.max_train_tasks)
    results = {}
    for name in args.backbones:
        prm, lr = make_prm(name, train_rows)
        info = train(prm, [dict(r) for r in train_rows], lr, args.epochs, args.batch_size)
        info["dev"] = evaluate(prm, dev_rows, dev)
        info["trainable_parameters"] = prm.num_trainable_parameters()
        results[name] = info
        print(name, json.dumps(info, indent=1), flush=True)

    meta = {"train_programs": len(train_rows), "dev_tasks": len(dev), "dev_programs": len(dev_rows),
            "labels": "bundled pass/fail broadcast to every step (outcome proxy)", **vars(args)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "backbones.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    lines = ["# Default backbone: dev reranking (HumanEval, bundled CodeGen-16B candidates)", "",
             f"{meta['train_programs']} training programs, {meta['dev_tasks']} dev tasks x {args.candidates} "
             f"candidates, {args.epochs} epoch(s); labels: {meta['labels']}.", "",
             "| backbone | trainable params | train s | aggregation | reranked pass@1 [95% CI] | random pass@1 "
             "| oracle pass@N |", "|---|---|---|---|---|---|---|"]
    for name, info in results.items():
        for how, m in info["dev"].items():
            lines.append(
                f"| {name} | {info['trainable_parameters']:,} | {info['train_seconds']:.0f} | {how} | "
                f"{m['reranked_pass@1']:.3f} [{m['reranked_pass@1_ci_low']:.3f}, {m['reranked_pass@1_ci_high']:.3f}] "
                f"| {m['mean_pass@1']:.3f} | {m['oracle_pass@N']:.3f} |"
            )
    (RESULTS / "backbones.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
