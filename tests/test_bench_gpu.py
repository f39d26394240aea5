"""CI run of `benchmarks/bench_gpu.py --tiny`: the GPU benchmark's code runs on CPU and writes its table."""

import importlib.util
import json
import os
import time

import torch

BENCH = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "bench_gpu.py")


def _bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_mode_runs_on_cpu_and_writes_the_table(tmp_path):
    bench = _bench()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        result = bench.run(bench.parse_args(["--tiny", "--out", str(tmp_path / "gpu")]))
    finally:
        torch.set_num_threads(threads)
    assert time.perf_counter() - start < 120
    assert json.loads((tmp_path / "gpu.json").read_text())["training"] == result["training"]
    cells = result["training"]
    assert [(c["size"], c["checkpointing"]) for c in cells] == [("tiny", False), ("tiny", True)]
    for c in cells:
        assert 0.5 * 512 < c["tokens_per_row"] <= 512  # rows fill the sequence budget without being dropped
        assert c["tokens_per_s"] > 0 and c["peak_gib_plain"] is None  # no CUDA, no peak memory
        # every timed and warm-up step of the meta trainer made a meta update (counted, not timed: on shared CI
        # cores the median of 3 sub-second steps put meta_ratio anywhere from 1.14 to 1.7)
        assert c["meta_updates"] == result["warmup"] + result["repeats"]
    (scoring,) = result["scoring"]
    assert scoring["k_steps"] == 8 and scoring["speedup"] > 1.2  # per-prefix runs 8 passes (~4.5x the tokens)
    md = (tmp_path / "gpu.md").read_text()
    assert "Tiny CPU smoke run: these are not GPU measurements." in md
    assert "| tiny | on | " in md and "| tiny | 2 | " in md
