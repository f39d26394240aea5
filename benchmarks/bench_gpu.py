"""GPU benchmark for a lent accelerator: PRM training and scoring at Qwen2.5-0.5B/1.5B scale, with no Hub access.

Backbones are randomly initialised Qwen2 bodies built from a config with the published Qwen2.5-0.5B and -1.5B
shapes (hidden size, layers, heads, KV heads, MLP width, 151,936-token vocabulary), in bf16 with SDPA attention,
wrapped as a `FunctionStepPRM` with LoRA r=8 on q/k/v/o. The tokenizer is a byte-level BPE trained on the spot; rows
are synthetic programs of K=8 function steps filling ``--seq-len`` tokens (2,048). For each size and for activation
checkpointing off and on it measures, on one fixed batch through `FunctionStepPRMTrainer.training_step`:

- plain step: tokens/s (tokens in the batch / median step time, ``meta_method="none"``);
- meta step: median time of a step with the label-correction update (``darts``, every step) / plain step time;
- peak memory: ``torch.cuda.max_memory_allocated`` during each step (weights included);

and per size the scoring throughput (candidates/s) of one-pass scoring vs the paper's per-prefix scoring at K=8.

    python benchmarks/bench_gpu.py              # one H100/H200-class GPU, <= 8 min: results/gpu.{md,json}
    python benchmarks/bench_gpu.py --tiny       # CPU smoke run of the same code (< 2 min), tiny shapes
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # the sibling benchmark's timing step, also when loaded by path
from bench_meta_step import step_closure  # noqa: E402

RESULTS = Path(__file__).parent / "results"
K_STEPS = 8
SIZES = {  # Qwen2.5 shapes (config.json of the released models)
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1024),
}


def _step_text(rng: random.Random, i: int, lines: int) -> str:
    body = "".join(f"    v{j} = (x * {rng.randint(1, 999)} + v{max(j - 1, 0)}) % {rng.randint(2, 97)}\n"
                   for j in range(lines))
    return f"def helper_{i}_{rng.randint(0, 9999)}(x):\n    v0 = x\n{body}    return v{lines - 1}\n\n"


def _tokenizer():
    from dreamprm_trl.scripts.demo_backbones import train_bytelevel_tokenizer

    rng = random.Random(0)
    return train_bytelevel_tokenizer([_step_text(rng, i, 8) for i in range(200)], vocab_size=1000)


def _rows(tokenizer, n: int, seq_len: int, seed: int) -> list[dict]:
    """``n`` rows of K_STEPS steps, each step as long as lets a row stay within ~96 % of ``seq_len`` tokens."""
    from dreamprm_trl.prm.inputs import encode_steps, prepare_tokenizer

    prepare_tokenizer(tokenizer)

    def make(rng: random.Random, lines: int) -> dict:
        steps = [_step_text(rng, k, lines) for k in range(K_STEPS)]
        return {"prompt": "# Solve the task.\n", "steps": steps, "mc_labels": [rng.random() for _ in steps],
                "passed": rng.random() < 0.5}

    lines = 256
    while lines > 1:
        row = make(random.Random(seed), lines)
        if len(encode_steps(tokenizer, row["prompt"], row["steps"]).input_ids) <= 0.96 * seq_len:
            break
        lines -= max(1, lines // 20)
    rng = random.Random(seed)
    return [make(rng, lines) for _ in range(n)]


def _prm(size: str, tokenizer, device: str, dtype):
    import torch
    from peft import LoraConfig
    from transformers import AutoModel, Qwen2Config

    from dreamprm_trl.prm import FunctionStepPRM

    config = Qwen2Config(**SIZES[size], max_position_embeddings=32768, tie_word_embeddings=True, use_cache=False,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        body = AutoModel.from_config(config, attn_implementation="sdpa", dtype=dtype)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    return FunctionStepPRM.from_backbone(body, tokenizer, lora_config=lora).to(device)


def _trainer(prm, train, meta, meta_method: str, args: argparse.Namespace, device: str):
    import datasets

    from dreamprm_trl import FunctionStepPRMConfig, FunctionStepPRMTrainer

    config = FunctionStepPRMConfig(
        output_dir="/tmp/bench_gpu", report_to="none", use_cpu=device == "cpu", disable_tqdm=True,
        bf16=device == "cuda", max_length=args.seq_len, per_device_train_batch_size=args.batch,
        meta_batch_size=args.batch, meta_method=meta_method, hypergradient="darts", meta_inner_learning_rate=1e-4,
        meta_warmup_steps=0,  # every timed step is a meta step
    )
    return FunctionStepPRMTrainer(prm, config, train_dataset=datasets.Dataset.from_list(train),
                                  meta_dataset=datasets.Dataset.from_list(meta))


def _timed_pair(trainers: dict, inputs, repeats: int, warmup: int, device: str) -> dict[str, tuple]:
    """Per trainer: median seconds of ``training_step`` on ``inputs`` and peak allocated GiB (CUDA only, else None).

    The trainers' steps alternate, so a load change on a shared machine hits every trainer alike and the ratio
    between them holds.
    """
    import torch

    steps = {name: step_closure(trainer, inputs, device) for name, trainer in trainers.items()}
    for _ in range(warmup):
        for step in steps.values():
            step()
    times = {name: [] for name in steps}
    peaks = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
            if device == "cuda":
                peaks[name].append(torch.cuda.max_memory_allocated() / 2**30)
    return {name: (statistics.median(times[name]), max(peaks[name]) if peaks[name] else None) for name in steps}


def _set_checkpointing(prm, on: bool) -> None:
    base = prm.backbone.get_base_model()
    if on:
        prm.activation_checkpointing_enable({"use_reentrant": False})
    else:
        base.activation_checkpointing_disable()


def _training_cells(size: str, prm, tokenizer, args, device: str) -> list[dict]:
    train = _rows(tokenizer, args.batch, args.seq_len, seed=1)
    meta = _rows(tokenizer, args.batch, args.seq_len, seed=2)
    plain, darts = (_trainer(prm, train, meta, m, args, device) for m in ("none", "label_correction"))
    inputs = plain._prepare_inputs(plain.data_collator([dict(r) for r in plain.train_dataset]))
    tokens = int(inputs["attention_mask"].sum())
    cells = []
    for ckpt in (False, True):
        _set_checkpointing(prm, ckpt)
        updates = len(darts._meta_logs["meta/loss"])
        timed = _timed_pair({"plain": plain, "meta": darts}, inputs, args.repeats, args.warmup, device)
        (t_plain, m_plain), (t_meta, m_meta) = timed["plain"], timed["meta"]
        updates = len(darts._meta_logs["meta/loss"]) - updates  # meta updates made by the timed and warm-up steps
        cells.append({"size": size, "checkpointing": ckpt, "batch_tokens": tokens,
                      "tokens_per_row": tokens / args.batch, "plain_s": t_plain, "tokens_per_s": tokens / t_plain,
                      "meta_s": t_meta, "meta_ratio": t_meta / t_plain, "peak_gib_plain": m_plain,
                      "peak_gib_meta": m_meta, "meta_updates": updates})
        print(json.dumps(cells[-1]), flush=True)
    _set_checkpointing(prm, False)
    return cells


def _scoring_cell(size: str, prm, tokenizer, args, device: str) -> dict:
    rows = _rows(tokenizer, args.candidates, args.seq_len, seed=3)
    pairs = [(r["prompt"], r["steps"]) for r in rows]
    prm.prm_config.max_length = args.seq_len
    out = {"size": size, "k_steps": K_STEPS, "candidates": len(pairs)}
    for mode in ("one_pass", "per_prefix"):
        prm.score_batch(pairs[:2], batch_size=args.score_batch, progress=False, mode=mode)  # warm-up
        t0 = time.perf_counter()
        prm.score_batch(pairs, batch_size=args.score_batch, progress=False, mode=mode)
        out[f"{mode}_candidates_per_s"] = len(pairs) / (time.perf_counter() - t0)
    out["speedup"] = out["one_pass_candidates_per_s"] / out["per_prefix_candidates_per_s"]
    print(json.dumps(out), flush=True)
    return out


def _markdown(result: dict) -> str:
    def gib(x):
        return "-" if x is None else f"{x:.1f}"

    env = result["environment"]
    lines = [
        "# GPU benchmark (`benchmarks/bench_gpu.py`)", "",
        f"`{result['command']}` on {env['device_name']} (torch {env['torch']}, transformers {env['transformers']}). "
        f"Random Qwen2 bodies at the named sizes, {env['dtype']}, SDPA, LoRA r=8 on q/k/v/o, rows of "
        f"{K_STEPS} steps up to {result['seq_len']} tokens, batch {result['batch']} rows, label correction with "
        f"darts every step; median of {result['repeats']} steps after {result['warmup']} warm-up steps.", "",
    ]
    if result["tiny"]:
        lines += ["**Tiny CPU smoke run: these are not GPU measurements.**", ""]
    lines += ["| size | checkpointing | tokens/row | plain step (s) | tokens/s | meta step (s) | meta / plain | "
              "peak GiB plain | peak GiB meta |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c in result["training"]:
        lines.append(f"| {c['size']} | {'on' if c['checkpointing'] else 'off'} | {c['tokens_per_row']:.0f} | "
                     f"{c['plain_s']:.3f} | {c['tokens_per_s']:.0f} | {c['meta_s']:.3f} | {c['meta_ratio']:.2f} | "
                     f"{gib(c['peak_gib_plain'])} | {gib(c['peak_gib_meta'])} |")
    lines += ["", f"Scoring at K={K_STEPS} steps per candidate (batch {result['score_batch']}):", "",
              "| size | candidates | one-pass cand/s | per-prefix cand/s | speed-up |", "|---|---:|---:|---:|---:|"]
    for s in result["scoring"]:
        lines.append(f"| {s['size']} | {s['candidates']} | {s['one_pass_candidates_per_s']:.2f} | "
                     f"{s['per_prefix_candidates_per_s']:.2f} | {s['speedup']:.2f} |")
    if result["skipped"]:
        lines += ["", f"Skipped for the time budget ({result['budget_s']} s): {', '.join(result['skipped'])}."]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> dict:
    """Every cell that fits in ``args.budget_s``; returns the result dict (also written as json + md)."""
    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    dtype = torch.bfloat16
    start, training, scoring, skipped = time.perf_counter(), [], [], []
    tokenizer = _tokenizer()
    for size in args.sizes:
        if time.perf_counter() - start > args.budget_s:
            skipped.append(size)
            continue
        prm = _prm(size, tokenizer, device, dtype)
        training += _training_cells(size, prm, tokenizer, args, device)
        scoring.append(_scoring_cell(size, prm, tokenizer, args, device))
        del prm
        if device == "cuda":
            torch.cuda.empty_cache()
    result = {
        "command": args.command, "tiny": args.tiny, "seq_len": args.seq_len, "batch": args.batch,
        "repeats": args.repeats, "warmup": args.warmup, "score_batch": args.score_batch, "budget_s": args.budget_s,
        "training": training, "scoring": scoring, "skipped": skipped,
        "seconds_total": time.perf_counter() - start,
        "environment": {"device_name": torch.cuda.get_device_name() if device == "cuda" else platform.processor()
                        or "cpu", "torch": torch.__version__, "transformers": transformers.__version__,
                        "dtype": str(dtype).replace("torch.", "")},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(_markdown(result))
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    import sys

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny shapes, 512-token rows")
    parser.add_argument("--sizes", nargs="+", default=None, choices=list(SIZES))
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per row (default 2048; --tiny 512)")
    parser.add_argument("--batch", type=int, default=None, help="rows per step (default 4; --tiny 2)")
    parser.add_argument("--candidates", type=int, default=None, help="scored candidates (default 16; --tiny 2)")
    parser.add_argument("--score-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=None, help="timed steps (default 3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 1)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip sizes not started by then")
    parser.add_argument("--out", default=None, help="output path without suffix (default results/gpu[_tiny])")
    args = parser.parse_args(argv)
    tiny = args.tiny
    defaults = {"sizes": ["tiny"] if tiny else ["qwen2.5-0.5b", "qwen2.5-1.5b"], "seq_len": 512 if tiny else 2048,
                "batch": 2 if tiny else 4, "candidates": 2 if tiny else 16, "repeats": 3,
                "warmup": 1, "out": str(RESULTS / ("gpu_tiny" if tiny else "gpu"))}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.command = "python benchmarks/bench_gpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
    return args


if __name__ == "__main__":
    run(parse_args())
