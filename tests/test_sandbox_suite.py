"""Pure parts of the sandbox, tested without running a program: test suites, the output comparison rules and the
verdict rule (``dreamprm_trl.sandbox.suite`` and ``.verdict``)."""

from __future__ import annotations

import pytest

from dreamprm_trl.sandbox import TestSuite
from dreamprm_trl.sandbox.verdict import call_equal, executor_error, stdio_equal, verdict

STDIO = TestSuite.stdio(["1", "2", "3"], ["1", "4", "9"])


def test_suite_constructors_len_and_round_trip():
    suites = [
        TestSuite.stdio(["1 2\n", "3 4\n"], ["3\n", "7\n"]),
        TestSuite.call("twoSum", ["[2,7,11,15]\n9"], ["[0, 1]"]),
        TestSuite.check("def check(candidate):\n    assert candidate(1, 2) == 3\n", "add"),
        TestSuite.asserts(["assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add(2, 2) == 4"], setup="import math"),
        TestSuite.unittest("import unittest\n", ["A", "B"]),
    ]
    assert [len(s) for s in suites] == [2, 1, 1, 3, 2]
    for s in suites:
        d = s.to_dict()
        assert json_roundtrip(d) == d
        assert TestSuite.from_dict(d) == s
    assert TestSuite.asserts("assert f(1) == 1\n\nassert f(2) == 2\n").assertions == ("assert f(1) == 1", "assert f(2) == 2")

    class Problem:
        tests = suites[0]

    assert TestSuite.from_problem(Problem()) is suites[0]
    assert TestSuite.from_problem({"tests": suites[1].to_dict()}) == suites[1]


def json_roundtrip(d):
    import json

    return json.loads(json.dumps(d))


def test_suite_rejects_bad_input_with_fix():
    with pytest.raises(ValueError, match="one expected output per input"):
        TestSuite.stdio(["1"], [])
    with pytest.raises(ValueError, match="fn_name"):
        TestSuite.call("", ["1"], ["1"])
    with pytest.raises(ValueError, match="kind 'bogus'"):
        TestSuite("bogus")
    with pytest.raises(ValueError, match="unknown keys"):
        TestSuite.from_dict({"kind": "stdio", "nonsense": 1})
    with pytest.raises(ValueError, match="expected a TestSuite"):
        TestSuite.from_problem(object())


def test_comparison_rules():
    assert stdio_equal("3\n", "3")
    assert stdio_equal("  1 2  \n3\n\n", "1 2\n3")
    assert stdio_equal("0.50000 1e3\n", "0.5 1000")  # numeric tokens compare as decimals
    assert not stdio_equal("0.5000001\n", "0.5")
    assert not stdio_equal("1\n2\n", "1 2")
    assert not stdio_equal("abc", "abd")
    assert stdio_equal("héllo wörld ✓\n", "héllo wörld ✓")
    assert call_equal("[0, 1]", "[0,1]")
    assert not call_equal("[1, 0]", "[0, 1]")
    assert not call_equal("not json", "1")


def test_verdict_takes_the_most_severe_status_and_the_first_reason():
    records = [
        {"i": 0, "r": "ok", "out": "1\n"},
        {"i": 1, "r": "ok", "out": "5\n"},
        {"i": 2, "r": "timeout", "detail": "time limit exceeded"},
    ]
    r = verdict(STDIO, records, done=True, sizes_over=False, wall=1.23456, stderr="tail")
    assert (r.passed, r.status, r.per_test, r.passed_tests, r.total_tests) == (False, "timeout", [True, False, False], 1, 3)
    assert r.reason == "test 1: wrong output '5\\n', expected '4'"
    assert (r.wall_time, r.stderr_tail) == (1.2346, "tail")
    ok = [{"i": i, "r": "ok", "out": f"{(i + 1) ** 2}"} for i in range(3)]
    assert verdict(STDIO, ok, True, False, 0.0, "").status == "passed"
    assert verdict(STDIO, ok, True, False, 0.0, "").reason == ""
    assert verdict(STDIO, ok[:2], True, False, 0.0, "").reason == "not every test ran"
    cut = verdict(STDIO, ok, False, True, 0.0, "")
    assert (cut.status, cut.reason) == ("output_limit", "the sandbox ended without a verdict (killed, or its supervisor was attacked)")
    assert verdict(STDIO, ok, True, True, 0.0, "").status == "output_limit"
    skipped = verdict(STDIO, [{"i": i, "r": "skipped", "detail": "m"} for i in range(3)] + ok[:1], True, False, 0.0, "")
    assert (skipped.status, skipped.per_test, skipped.reason) == ("skipped", [False] * 3, "test 0: m")
    call = TestSuite.call("f", ["1", "2"], ["[1, 2]", "3"])
    got = verdict(call, [{"i": 0, "r": "ok", "out": "[1,2]"}, {"i": 1, "r": "ok", "out": "4"}, {"i": 7, "r": "ok"}], True, False, 0.0, "")
    assert (got.status, got.per_test, got.reason) == ("failed", [True, False], "test 1: returned '4', expected '3'")


def test_executor_error_is_a_runtime_error_of_every_test():
    r = executor_error(STDIO, "OSError: boom", 0.5)
    assert (r.passed, r.status, r.per_test, r.total_tests, r.reason) == (
        False, "runtime_error", [False] * 3, 3, "executor error: OSError: boom")
