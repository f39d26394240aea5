"""Labelling: Monte-Carlo labels checked against pass rates computed by hand, clean labels, bad rows, the on-disk
cache (resume after SIGKILL, torn lines), sharding, ClassEval method-level ground truth and the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dreamprm_trl.sandbox import SandboxedExecutor, TestSuite
from dreamprm_trl.labeling import (
    LabelCache,
    label_final,
    label_steps,
    parse_shard,
    shard_of,
    step_ground_truth,
)
from dreamprm_trl.labeling.generators import PoolGenerator
from dreamprm_trl.problems import Problem

# main(x) = helper_a(x) + helper_b(x) must equal 3x + 1: a = 2x and b = x + 1 (or the equivalent a2 / b2).
MAIN = "def main(x):\n    return helper_a(x) + helper_b(x)\n\n"
A = {"g": "def helper_a(x):\n    return 2 * x\n\n", "g2": "def helper_a(x):\n    return x + x\n\n",
     "b": "def helper_a(x):\n    return 2 * x + 1\n\n"}
B = {"g": "def helper_b(x):\n    return x + 1\n", "g2": "def helper_b(x):\n    return 1 + x\n",
     "b": "def helper_b(x):\n    return x - 1\n"}
POOL = {"t": [MAIN + A[a] + B[b] for a, b in [("g", "g"), ("g", "b"), ("b", "g"), ("b", "b"), ("g2", "g2")]]}
PROBLEM = Problem("t", "Return 3x + 1.", tests=TestSuite.asserts(["assert main(2) == 7", "assert main(0) == 1"]),
                  style="assert", entry_point="main")


class CountingExecutor(SandboxedExecutor):
    """The real sandbox, counting the programs it is asked to run."""

    def __init__(self, **kwargs):
        super().__init__(progress=False, **kwargs)
        self.executed = 0

    def run_many(self, pairs):
        self.executed += len(pairs)
        return super().run_many(pairs)


@pytest.fixture(scope="module")
def executor():
    return CountingExecutor(timeout=5.0)


def test_mc_labels_equal_hand_computed_pass_rates(executor):
    """Excluding itself, each trajectory has 4 donors; with M = 4 every donor is used once, so the labels are
    exact fractions. Trajectory (a good, b good): prefix [main] passes only with the donor (g2, g2)
    -> 1/4; prefix [main, a good] passes with donors whose b is good: (b, g) and (g2, g2) -> 2/4; last step: its
    own verdict. Trajectory (a bad, b good): [main] passes with (g, g) and (g2, g2) -> 2/4; [main, a bad] never."""
    gen = PoolGenerator(POOL, seed=0)
    trajectories = {"t": [POOL["t"][0], POOL["t"][2]]}
    for m in (4,):
        ds, stats = label_steps([PROBLEM], trajectories, gen, rollouts=m, executor=executor, progress=False,
                                return_stats=True)
        rows = {row["code"]: row for row in ds}
        good, bad = rows[POOL["t"][0]], rows[POOL["t"][2]]
        assert good["mc_labels"] == [0.25, 0.5, 1.0] and bad["mc_labels"] == [0.5, 0.0, 0.0]
        assert good["rollout_counts"] == [m, m, 1] and good["pass_counts"] == [m // 4, m // 2, 1]
        assert good["steps"] == [MAIN, A["g"], B["g"]] and good["passed"] is True
        assert bad["passed"] is False and good["per_test"] == [True, True]
        assert good["label_fixed"] == [False, False, True]  # the verdict is clean, never a meta-parameter
        assert json.loads(good["generator"])["type"] == "pool" and good["source"] == ""
        assert stats.programs_executed == 2 + 4 * m and stats.bad_rows == []
    first4 = [outs[:4] for outs in good["rollout_outcomes"][:2]]  # M' < M: a prefix of the outcomes
    assert [sum(o) / 4 for o in first4] == [0.25, 0.5]


def test_text_generators_see_the_prefix_and_their_completion_is_appended(executor):
    class Scripted:
        """A stand-in policy: always writes the good helper_b, whatever the prompt."""

        def __init__(self):
            self.prompts = []

        def generate(self, prompts, n, temperature, max_new_tokens, stop=None, *, task_ids=None):
            self.prompts.extend(prompts)
            return [[B["g"] + "```\nDone."] * n for _ in prompts]

        def config(self):
            return {"type": "scripted"}

    gen = Scripted()
    ds = label_steps([PROBLEM], {"t": [POOL["t"][1]]}, gen, rollouts=2, executor=executor, progress=False)
    # prefix [main] + helper_b lacks helper_a -> fails; prefix [main, a good] + good helper_b passes
    assert ds[0]["mc_labels"] == [0.0, 1.0, 0.0]
    assert gen.prompts[1].startswith("Return 3x + 1.") and gen.prompts[1].endswith("```python\n" + MAIN + A["g"])


def test_label_final_rows_and_bad_rows_are_counted_not_dropped(executor):
    no_tests = Problem("empty", "Nothing to test.")
    candidates = [("t", POOL["t"][0]), ("t", POOL["t"][1]), ("t", "def main(x:\n"), ("empty", "x = 1\n"),
                  ("ghost", "x = 2\n")]
    with pytest.warns(UserWarning, match="skipped 2 bad row"):
        ds, stats = label_final([PROBLEM, no_tests], candidates, executor=executor, progress=False,
                                return_stats=True)
    assert ds["passed"] == [True, False, False] and ds["status"][2] == "syntax_error"
    assert ds["per_test"][:2] == [[True, True], [False, False]] and ds["steps"][0] == [MAIN, A["g"], B["g"]]
    assert sorted(r["reason"].split(":")[0] for r in stats.bad_rows) == ["no problem", "no tests"]
    with pytest.warns(UserWarning, match="unparsable"):
        steps_ds, steps_stats = label_steps([PROBLEM], candidates[:3], PoolGenerator(POOL), rollouts=1,
                                            executor=executor, progress=False, return_stats=True)
    assert len(steps_ds) == 2 and steps_stats.labelled == 2 and len(steps_stats.bad_rows) == 1


def test_cache_skips_finished_units_and_ignores_a_torn_last_line(tmp_path):
    gen = PoolGenerator(POOL)
    trajectories = {"t": POOL["t"][:2]}
    first = CountingExecutor()
    ref = label_steps([PROBLEM], trajectories, gen, rollouts=4, executor=first, cache_dir=tmp_path, progress=False)
    assert first.executed == 2 + 2 * 2 * 4
    again = CountingExecutor()
    assert label_steps([PROBLEM], trajectories, gen, rollouts=4, executor=again, cache_dir=tmp_path,
                       progress=False).to_list() == ref.to_list()
    assert again.executed == 0
    (path,) = tmp_path.glob("*.jsonl")
    data = path.read_bytes()
    path.write_bytes(data[: data.rstrip(b"\n").rfind(b"\n") + 1] + b'{"key": "abc", "outc')  # last unit torn
    torn = CountingExecutor()
    assert label_steps([PROBLEM], trajectories, gen, rollouts=4, executor=torn, cache_dir=tmp_path,
                       progress=False).to_list() == ref.to_list()
    assert torn.executed == 4  # exactly the one rollout batch whose line was cut
    assert path.read_bytes() == data  # the torn tail was cut and the unit's line written again


SCRIPT = """
import sys, time
from dreamprm_trl.sandbox import SandboxedExecutor, TestSuite
from dreamprm_trl.labeling import label_steps
from dreamprm_trl.labeling.generators import PoolGenerator
from dreamprm_trl.problems import Problem
sys.path.insert(0, {here!r})
from test_labeling import POOL, PROBLEM

class Slow(SandboxedExecutor):
    def run_many(self, pairs):
        time.sleep({delay})
        return super().run_many(pairs)

ds = label_steps([PROBLEM], POOL, PoolGenerator(POOL), rollouts=2, executor=Slow(progress=False),
                 cache_dir={cache!r}, chunk_programs=2, progress=False)
ds.to_json({out!r})
"""


def test_resume_after_sigkill_loses_and_repeats_no_finished_work(tmp_path):
    """Kill a real labelling process mid-way, rerun: only unfinished units run, and the result equals one run."""
    cache = tmp_path / "cache"
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(here=str(Path(__file__).parent), delay=0.6, cache=str(cache),
                                    out=str(tmp_path / "out.jsonl")))
    env = {**os.environ, "HF_ALLOW_CODE_EVAL": "1"}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 90
    while time.time() < deadline and proc.poll() is None:
        files = list(cache.glob("*.jsonl"))
        if files and files[0].read_bytes().count(b"\n") >= 7:  # the 5 verdicts and 2 rollout batches are done
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    finished = LabelCache(cache).records
    rollout_units = sum("outcomes" in r for r in finished.values())
    total_units = 5 * 2  # 5 trajectories x 2 prefixes (3 steps each)
    assert 2 <= rollout_units < total_units
    resumed = CountingExecutor()
    ds = label_steps([PROBLEM], POOL, PoolGenerator(POOL), rollouts=2, executor=resumed, cache_dir=cache,
                     progress=False)
    assert resumed.executed == (total_units - rollout_units) * 2  # no verdict re-run, no finished batch repeated
    fresh = label_steps([PROBLEM], POOL, PoolGenerator(POOL), rollouts=2, executor=CountingExecutor(),
                        progress=False)
    assert ds.to_list() == fresh.to_list()


def test_sharding_is_deterministic_disjoint_and_complete(executor):
    assert parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "a/b", "1"):
        with pytest.raises(ValueError, match="Shard"):
            parse_shard(bad)
    gen = PoolGenerator(POOL)
    full = label_steps([PROBLEM], POOL, gen, rollouts=1, executor=executor, progress=False)
    parts = [label_steps([PROBLEM], POOL, gen, rollouts=1, executor=executor, shard=f"{i}/2", progress=False)
             for i in range(2)]
    assert sorted(len(p) for p in parts) != [0, 5]  # both shards get work
    assert sorted(r["code"] for p in parts for r in p) == sorted(full["code"])
    merged = {r["code"]: r for p in parts for r in p}
    assert all(merged[r["code"]] == r for r in full)
    assert [shard_of("t", c, 2) for c in POOL["t"]] == [shard_of("t", c, 2) for c in POOL["t"]]
    assert {r["code"] for r in parts[0]} == {c for c in POOL["t"] if shard_of("t", c, 2) == 0}


CLASS_TESTS = textwrap.dedent("""
    import unittest
    class CalcTestAdd(unittest.TestCase):
        def test_add(self):
            self.assertEqual(Calc().add(2, 3), 5)
    class CalcTestSub(unittest.TestCase):
        def test_sub(self):
            self.assertEqual(Calc().sub(2, 3), -1)
    class CalcTest(unittest.TestCase):
        def test_all(self):
            c = Calc()
            self.assertEqual(c.sub(c.add(1, 1), 1), 1)
""")
CALC = Problem("calc", "A calculator.", style="unittest",
               tests=TestSuite.unittest(CLASS_TESTS, ["CalcTestAdd", "CalcTestSub", "CalcTest"]),
               metadata={"method_tests": {"add": "CalcTestAdd", "sub": "CalcTestSub"}})
HEAD = "class Calc:\n    def __init__(self):\n        self.n = 0\n\n"
ADD = {ok: f"    def add(self, a, b):\n        return a {'+' if ok else '*'} b\n\n" for ok in (True, False)}
SUB = {ok: f"    def sub(self, a, b):\n        return {'a - b' if ok else 'b - a'}\n" for ok in (True, False)}


@pytest.mark.parametrize("add_ok,sub_ok,expected", [
    (True, True, [1.0, 1.0, 1.0]), (True, False, [1.0, 1.0, 0.0]), (False, True, [1.0, 0.0, 0.0]),
])
def test_step_ground_truth_is_cumulative_method_correctness(executor, add_ok, sub_ok, expected):
    code = HEAD + ADD[add_ok] + SUB[sub_ok]
    assert step_ground_truth(CALC, code, executor=executor) == expected
    by_convention = Problem("calc", "", tests=CALC.tests, style="unittest")  # no metadata: ClassEval names
    assert step_ground_truth(by_convention, code, per_test=[add_ok, sub_ok, add_ok and sub_ok]) == expected
    with pytest.raises(ValueError, match="per_test has 1 verdicts"):
        step_ground_truth(CALC, code, per_test=[True])
    with pytest.raises(ValueError, match="unittest suite"):
        step_ground_truth(PROBLEM, code, per_test=[True])


def test_step_ground_truth_on_bundled_classeval_reference_solution(executor):
    from dreamprm_trl.problems import load_bundled_classeval

    problem = next(p for p in load_bundled_classeval() if p.task_id == "ClassEval_0")
    code = "\n".join(problem.metadata["import_statement"]) + "\n\n" + problem.metadata["solution_code"]
    labels = step_ground_truth(problem, code, executor=executor)
    assert labels == [1.0] * len(labels) and len(labels) == len(problem.metadata["methods"]) + 1


def test_cli_label_final_and_steps_write_datasets(tmp_path):
    from datasets import load_from_disk

    from dreamprm_trl.cli import main

    problems = tmp_path / "problems.jsonl"
    problems.write_text(json.dumps(PROBLEM.to_row()) + "\n")
    cands = tmp_path / "cands.jsonl"
    cands.write_text("".join(json.dumps({"task_id": "t", "code": c}) + "\n" for c in POOL["t"]))
    main(["label", "final", "--problems", str(problems), "--candidates", str(cands),
          "--output_dir", str(tmp_path / "final"), "--no_progress"])
    final = load_from_disk(str(tmp_path / "final"))
    assert final["passed"] == [True, False, False, False, True]
    assert len((tmp_path / "final.jsonl").read_text().splitlines()) == 5
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"task_id": "t", "code": POOL["t"][0]}) + "\n")
    main(["label", "steps", "--problems", str(problems), "--candidates", str(one), "--pool", str(cands),
          "--generator", "pool", "--rollouts", "4", "--shard", "0/1", "--cache_dir", str(tmp_path / "cache"),
          "--output_dir", str(tmp_path / "steps"), "--no_progress"])
    steps = load_from_disk(str(tmp_path / "steps"))
    assert steps["mc_labels"] == [[0.25, 0.5, 1.0]]
    assert json.loads((tmp_path / "steps.stats.json").read_text())["programs_executed"] == 1 + 2 * 4


# ------------------------------------------------------------------------------------------ a batch survives
BOOM = "def main(x):\n    return 3 * x + 1  # BOOM\n\n"  # would pass; the executor raises on it


class RaisingExecutor(CountingExecutor):
    """The real sandbox, except that a batch holding a program marked BOOM raises (as a cleanup crash would)."""

    def run_many(self, pairs):
        pairs = list(pairs)
        if any("BOOM" in code for code, _ in pairs):
            self.executed += len(pairs)
            raise RecursionError("maximum recursion depth exceeded while removing the work directory")
        return super().run_many(pairs)


def test_an_executor_exception_fails_one_program_and_the_rest_are_cached(tmp_path):
    candidates = [("t", POOL["t"][0]), ("t", BOOM), ("t", POOL["t"][1])]
    first = RaisingExecutor()
    with pytest.warns(UserWarning, match="1 executor errors"):
        ds, stats = label_final([PROBLEM], candidates, executor=first, cache_dir=tmp_path, progress=False,
                                return_stats=True)
    assert ds["code"] == [c for _, c in candidates]
    assert ds["passed"] == [True, False, False] and ds["status"] == ["passed", "runtime_error", "failed"]
    assert stats.executor_errors == 1 and stats.labelled == 3
    assert first.executed == 3 + 2 + 1  # the batch, then each program alone; BOOM raised both times
    cached = [json.loads(line) for path in tmp_path.glob("*.jsonl") for line in path.read_text().splitlines()]
    assert sorted(r["passed"] for r in cached) == [False, True]  # BOOM's failure is not cached
    again = RaisingExecutor()
    with pytest.warns(UserWarning, match="1 executor errors"):
        ds2 = label_final([PROBLEM], candidates, executor=again, cache_dir=tmp_path, progress=False)
    assert again.executed == 1 and ds2["passed"] == ds["passed"]  # only BOOM is retried


def test_an_executor_exception_on_a_rollout_costs_only_that_rollout(executor):
    class OneBoom:
        def config(self):
            return {"type": "one-boom"}

        def complete_prefixes(self, requests, n, temperature=0.0, max_new_tokens=0):
            tails = [A["g"] + B["g"], A["g"] + B["b"]]
            return [[r.prefix + (BOOM if r.prefix == MAIN and i == 0 else tails[i % 2]) for i in range(n)]
                    for r in requests]

    ex = RaisingExecutor(timeout=5.0)
    with pytest.warns(UserWarning, match="1 executor errors"):
        ds, stats = label_steps([PROBLEM], {"t": [POOL["t"][0]]}, OneBoom(), rollouts=2, executor=ex,
                                progress=False, return_stats=True)
    # prefix [main]: rollouts BOOM (failed by the executor error) and (g, b) -> 0/2; [main, a]: (g, g), (g, b)
    assert ds["rollout_outcomes"][0] == [[False, False], [True, False], [True]]
    assert stats.executor_errors == 1


# -------------------------------------------------------------------------------------------- bounded labelling
class PassAll(SandboxedExecutor):
    """No sandbox: every program passes (measures labelling's own memory, not the programs')."""

    def __init__(self):
        super().__init__(progress=False, allow_code_execution=True)

    def run_many(self, pairs):
        from dreamprm_trl.sandbox import ExecutionResult

        return [ExecutionResult(True, "passed", [True]) for _ in pairs]


class Echo:
    """A text generator whose completions are empty: each rollout is its prefix."""

    def config(self):
        return {"type": "echo"}

    def generate(self, prompts, n, temperature, max_new_tokens, task_ids=None):
        return [[""] * n for _ in prompts]


def _many_functions(n: int) -> str:
    return "".join(f"def function_{i:05d}(x):\n    return x + {i}\n\n" for i in range(n))


ANY = Problem("any", "p", tests=TestSuite.asserts(["assert True"]))


def test_too_large_and_too_many_steps_are_bad_rows_with_their_reason():
    """The issue's case: a 1 MB program with 30,583 functions. Skipped at once by the size cap (tracemalloc peak
    2.6 MiB, 0.14 s measured); with only the step cap it is split (ast, linear) and skipped before any prefix."""
    import tracemalloc

    huge = _many_functions(30583)
    tracemalloc.start()
    with pytest.warns(UserWarning, match="too large: 1"):
        ds, stats = label_steps([ANY], {"any": [huge]}, Echo(), rollouts=16, executor=PassAll(), progress=False,
                                return_stats=True)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(ds) == 0 and peak < 32 * 2**20
    assert stats.bad_rows[0]["reason"].startswith(f"too large: {len(huge)} characters > max_code_chars=100000")
    with pytest.warns(UserWarning, match="too large"):
        final = label_final([ANY], {"any": [huge]}, executor=PassAll(), progress=False)
    assert len(final) == 0
    with pytest.warns(UserWarning, match="too many steps"):
        ds, stats = label_steps([ANY], {"any": [_many_functions(5)]}, Echo(), rollouts=2, executor=PassAll(),
                                progress=False, return_stats=True, max_steps=4)
    assert stats.bad_rows == [{"task_id": "any", "reason": "too many steps: 5 steps > max_steps=4; raise max_steps "
                                                           "(--max_steps) to label it"}]
    ds = label_steps([ANY], {"any": [_many_functions(4)]}, Echo(), rollouts=2, executor=PassAll(), progress=False,
                     max_steps=4)
    assert ds["mc_labels"] == [[1.0, 1.0, 1.0, 1.0]]


def test_labelling_memory_is_linear_in_program_size():
    """All prefixes of a K-step program together hold about K/2 copies of it. Measured peaks (caps off, M = 1):
    1000 / 2000 functions took 26.1 / 94.8 MiB when every prefix's text was built up front (x3.6 for x2), and
    10.0 / 22.3 MiB once prefixes are built one chunk at a time (x2.2)."""
    import tracemalloc

    peaks = []
    for n in (1000, 2000):
        tracemalloc.start()
        ds = label_steps([ANY], {"any": [_many_functions(n)]}, Echo(), rollouts=1, executor=PassAll(),
                         progress=False, max_code_chars=None, max_steps=None)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert ds["rollout_counts"] == [[1] * n]
    assert peaks[1] < 2.7 * peaks[0] and peaks[1] < 64 * 2**20, [p / 2**20 for p in peaks]


def test_the_missing_opt_in_is_raised_once_not_turned_into_failures(monkeypatch):
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL", raising=False)
    with pytest.raises(PermissionError, match="allow_code_execution"):
        label_final([PROBLEM], [("t", POOL["t"][0])], executor=SandboxedExecutor(progress=False), progress=False)
