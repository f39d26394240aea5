"""Cost of the meta update: a plain PRM training step vs a step with the meta update (darts, exact, neumann).

Same model, same batch, ``meta_interval=1`` and a meta batch of the same size as the train batch. Time is the
median wall time of ``FunctionStepPRMTrainer.training_step`` over ``--repeats`` steps after ``--warmup`` steps,
the three variants interleaved in one process (so load drift on a shared machine hits all alike). Memory is, per
variant in a fresh process, the peak heap in use during one step minus the heap in use just before it (glibc
``mallinfo2`` sampled every 0.5 ms; on CUDA, ``max_memory_allocated`` minus the baseline).

    python benchmarks/bench_meta_step.py            # writes benchmarks/results/meta_step.{json,md}

Targets (issue 6): darts <= 3x a plain step in time and <= 1.5x in peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
VARIANTS = ("plain", "darts", "exact", "neumann")  # neumann: the implicit option at its default neumann_steps


def _heap_in_use() -> int:
    """Bytes malloc has handed out and not taken back (glibc ``mallinfo2``), else the resident set size.

    Unlike RSS this falls when tensors are freed, so a step's peak is not hidden by memory a previous step left
    cached in the heap.
    """
    try:
        import ctypes

        class _MallInfo2(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                        "fsmblks", "uordblks", "fordblks", "keepcost")]

        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        info = libc.mallinfo2()
        return info.uordblks + info.hblkhd
    except (OSError, AttributeError):
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Samples heap use in a thread; ``peak - start`` is the extra memory the measured work needed at its peak."""

    def __init__(self, interval: float = 0.0005):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def __enter__(self):
        self.start = _heap_in_use()
        self.peak = self.start
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _heap_in_use())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _heap_in_use())


def _rows(n: int, steps_per_row: int, step_lines: int, seed: int) -> tuple[list[dict], list[dict]]:
    import random

    rng = random.Random(seed)

    def step(i: int) -> str:
        body = "".join(f"    v{j} = x * {rng.randint(1, 99)} + {j}\n" for j in range(step_lines))
        return f"def helper_{i}_{rng.randint(0, 999)}(x):\n    \"\"\"Helper {i}.\"\"\"\n{body}    return x\n\n"

    train, meta = [], []
    for _ in range(n):
        steps = [step(k) for k in range(steps_per_row)]
        train.append({"prompt": "# Solve the task.\n", "steps": steps, "mc_labels": [rng.random() for _ in steps]})
        meta.append({"prompt": "# Solve the task.\n", "steps": [step(k) for k in range(steps_per_row)],
                     "passed": rng.random() < 0.5})
    return train, meta


def _setup(backbone: str, batch: int, step_lines: int):
    import datasets
    import torch

    from dreamprm_trl.scripts.demo_backbones import load_minilm, tiny_causal_backbone
    from dreamprm_trl.prm import FunctionStepPRM

    torch.manual_seed(0)
    train, meta = _rows(batch, 4, step_lines, seed=0)
    if backbone == "minilm":
        body, tok = load_minilm(attn_implementation="eager")
        prm = FunctionStepPRM.from_backbone(body, tok)  # LoRA r=8 on q/k/v/o, as in the paper
    else:
        texts = [s for r in train for s in r["steps"]]
        body, tok = tiny_causal_backbone(texts, hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                                         vocab_size=1024)
        prm = FunctionStepPRM.from_backbone(body, tok)
    return prm, datasets.Dataset.from_list(train), datasets.Dataset.from_list(meta)


def _stepper(prm, train, meta, variant: str, batch: int):
    """A closure running one ``training_step`` of ``variant`` on the fixed batch (meta update every step)."""
    import torch

    from dreamprm_trl import FunctionStepPRMConfig, FunctionStepPRMTrainer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    args = FunctionStepPRMConfig(
        output_dir="/tmp/bench_meta_step", report_to="none", use_cpu=device == "cpu", disable_tqdm=True,
        max_length=2048, per_device_train_batch_size=batch, meta_batch_size=batch, meta_interval=1,
        meta_warmup_steps=0,
        meta_method="none" if variant == "plain" else "label_correction",
        hypergradient="darts" if variant == "plain" else variant, meta_inner_learning_rate=1e-4,
    )
    trainer = FunctionStepPRMTrainer(prm, args, train_dataset=train, meta_dataset=meta)
    model = trainer.model.to(trainer.args.device)
    inputs = trainer.data_collator([dict(r) for r in trainer.train_dataset])
    info = {"device": device, "tokens_per_row": int(inputs["attention_mask"].sum()) / batch,
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    return step_closure(trainer, inputs, device), info


def step_closure(trainer, inputs: dict, device: str):
    """One ``training_step`` of ``trainer`` on the fixed batch ``inputs``, synchronised on CUDA (also bench_gpu's)."""
    import torch

    model = trainer.model
    n_items = (inputs["step_labels"] != -100).sum()

    def step():
        model.zero_grad(set_to_none=True)
        trainer.training_step(model, dict(inputs), n_items)
        if device == "cuda":
            torch.cuda.synchronize()

    return step


def _child_memory(backbone: str, variant: str, batch: int, step_lines: int, warmup: int) -> dict:
    """Peak extra memory of one step of ``variant`` in a fresh process."""
    import torch

    prm, train, meta = _setup(backbone, batch, step_lines)
    step, info = _stepper(prm, train, meta, variant, batch)
    for _ in range(warmup):
        step()
    if info["device"] == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    with PeakMemory() as mem:
        step()
    peak = (torch.cuda.max_memory_allocated() - base) if info["device"] == "cuda" else (mem.peak - mem.start)
    return {**info, "peak_extra_mib": peak / 2**20}


def _child_time(backbone: str, batch: int, step_lines: int, repeats: int, warmup: int) -> dict:
    """Median step time of every variant, interleaved in one process so that load drift hits all alike."""
    prm, train, meta = _setup(backbone, batch, step_lines)
    steps = {v: _stepper(prm, train, meta, v, batch)[0] for v in VARIANTS}
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    times = {v: [] for v in VARIANTS}
    for _ in range(repeats):
        for v, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            times[v].append(time.perf_counter() - t0)
    return {v: {"seconds_median": statistics.median(t), "seconds_all": t} for v, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", nargs="+", default=["tiny", "minilm"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--step-lines", type=int, default=6, help="body lines per step (sets the row length)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / "meta_step"))
    parser.add_argument("--child", nargs=2, metavar=("BACKBONE", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        backbone, variant = args.child
        if variant == "time":
            out = _child_time(backbone, args.batch, args.step_lines, args.repeats, args.warmup)
        else:
            out = _child_memory(backbone, variant, args.batch, args.step_lines, args.warmup)
        print(json.dumps(out))
        return

    def child(backbone: str, what: str) -> dict:
        cmd = [sys.executable, __file__, "--child", backbone, what, "--batch", str(args.batch),
               "--step-lines", str(args.step_lines), "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{backbone}/{what} failed:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    results = []
    for backbone in args.backbones:
        timing = child(backbone, "time")
        for variant in VARIANTS:
            row = {"backbone": backbone, "variant": variant, "batch": args.batch, **child(backbone, variant),
                   **timing[variant]}
            results.append(row)
            print(f"{backbone:7s} {variant:6s} {row['seconds_median']:.3f}s  peak +{row['peak_extra_mib']:.0f} MiB",
                  flush=True)

    table = []
    for backbone in args.backbones:
        rows = {r["variant"]: r for r in results if r["backbone"] == backbone}
        plain = rows["plain"]
        for variant in VARIANTS:
            r = rows[variant]
            r["time_ratio"] = r["seconds_median"] / plain["seconds_median"]
            r["memory_ratio"] = r["peak_extra_mib"] / max(plain["peak_extra_mib"], 1e-9)
            table.append(r)
    meta = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "command": " ".join([os.path.basename(sys.executable), *sys.argv]), "batch": args.batch,
            "repeats": args.repeats, "targets": {"darts_time_ratio": 3.0, "darts_memory_ratio": 1.5}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps({"meta": meta, "results": table}, indent=2))
    lines = [
        "# Meta step cost (`benchmarks/bench_meta_step.py`)", "",
        f"`{meta['command']}` on {meta['cpus']} CPUs ({table[0]['device']}), batch {args.batch} rows of 4 steps, "
        f"meta batch of the same size, median of {args.repeats} interleaved steps after {args.warmup} warm-up steps. "
        "Memory: peak heap in use during one step (glibc mallinfo2, fresh process per variant) minus heap in use "
        "before it "
        "(CUDA: max allocated minus baseline).", "",
        "| backbone | step | tokens/row | time (s) | x plain | peak extra memory (MiB) | x plain |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in table:
        lines.append(f"| {r['backbone']} | {r['variant']} | {r['tokens_per_row']:.0f} | {r['seconds_median']:.3f} | "
                     f"{r['time_ratio']:.2f} | {r['peak_extra_mib']:.0f} | {r['memory_ratio']:.2f} |")
    lines += ["", "Targets: darts <= 3x plain in time, <= 1.5x in peak memory."]
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
