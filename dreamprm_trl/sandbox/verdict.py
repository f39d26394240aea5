"""Verdicts: :class:`ExecutionResult`, its statuses, the output comparison rules and the rule that turns the
harness's per-test records into one verdict. Parent side: expected outputs never enter the sandbox.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation

from .suite import TestSuite

STATUSES = (
    "passed",
    "failed",
    "timeout",
    "memory_exceeded",
    "runtime_error",
    "syntax_error",
    "output_limit",
    "skipped",
)


@dataclass
class ExecutionResult:
    """Verdict of one program on one suite.

    ``status`` is one of :data:`STATUSES`; ``passed`` is True only when every test passed. ``per_test`` has one
    bool per test case (per ``TestCase`` class for unittest suites). ``reason`` explains non-passing verdicts.
    """

    passed: bool
    status: str
    per_test: list[bool] = field(default_factory=list)
    passed_tests: int = 0
    total_tests: int = 0
    wall_time: float = 0.0
    stderr_tail: str = ""
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------------------
# Comparison rules.
def _stripped_lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().split("\n")]


def stdio_equal(output: str, expected: str) -> bool:
    """LiveCodeBench rule: same number of stripped lines; each line equal, or equal as a list of decimals."""
    got, want = _stripped_lines(output), _stripped_lines(expected)
    if len(got) != len(want):
        return False
    for a, b in zip(got, want):
        if a == b:
            continue
        ta, tb = a.split(), b.split()
        if len(ta) != len(tb):
            return False
        try:
            if [Decimal(x) for x in ta] != [Decimal(x) for x in tb]:
                return False
        except (InvalidOperation, ValueError):
            return False
    return True


def call_equal(output_json: str, expected: str) -> bool:
    """LiveCodeBench call-based rule: the JSON value returned equals the expected JSON value (tuples as lists)."""
    try:
        got = json.loads(output_json)
        want = json.loads(expected)
    except ValueError:
        return False
    return got == want


def _clip(text: str, n: int = 200) -> str:
    return repr(text if len(text) <= n else text[:n] + "...")


# ---------------------------------------------------------------------------------------------------------------
# The verdict rule.
_STATUS_OF = {  # harness record kind -> status
    "timeout": "timeout",
    "memory": "memory_exceeded",
    "output_limit": "output_limit",
    "syntax": "syntax_error",
    "error": "runtime_error",
    "fail": "failed",
    "skipped": "skipped",
}
_PRIORITY = ("skipped", "syntax_error", "timeout", "memory_exceeded", "output_limit", "runtime_error", "failed")


def _judge(suite: TestSuite, rec: dict, i: int) -> tuple[bool, str, str]:
    """``(passed, record kind, reason)`` of one test's record; stdio and call outputs are compared here."""
    r = rec.get("r")
    if r != "ok":
        return False, str(r), f"test {i}: {rec['detail']}" if rec.get("detail") else ""
    out = rec.get("out", "")
    if suite.kind == "stdio" and not stdio_equal(out, suite.outputs[i]):
        return False, "fail", f"test {i}: wrong output {_clip(out)}, expected {_clip(suite.outputs[i])}"
    if suite.kind == "call" and not call_equal(out, suite.outputs[i]):
        return False, "fail", f"test {i}: returned {_clip(out)}, expected {_clip(suite.outputs[i])}"
    return True, "ok", ""


def verdict(suite: TestSuite, records: list[dict], done: bool, sizes_over: bool, wall: float, stderr: str) -> ExecutionResult:
    """One verdict from the harness's records: the most severe status of any test (:data:`_PRIORITY`), and the
    first reason. ``done`` says the harness finished its report; ``sizes_over`` that stdout/stderr hit the cap."""
    n = len(suite)
    per_test = [False] * n
    statuses: list[str] = []
    reason = ""
    for rec in records:
        i = rec.get("i")
        if not isinstance(i, int) or not 0 <= i < n:
            continue
        per_test[i], kind, why = _judge(suite, rec, i)
        if not per_test[i]:
            statuses.append(_STATUS_OF.get(kind, "runtime_error"))
            reason = reason or why
    if not done:
        statuses.append("runtime_error")
        reason = reason or "the sandbox ended without a verdict (killed, or its supervisor was attacked)"
    if sizes_over:
        statuses.append("output_limit")
        reason = reason or "stdout/stderr exceeded the output cap"
    if not statuses and not all(per_test):
        statuses.append("failed")
        reason = reason or "not every test ran"
    status = next((s for s in _PRIORITY if s in statuses), "passed")
    if status == "skipped":
        per_test = [False] * n
    if status == "timeout" and not reason:
        reason = "wall-clock or CPU time limit exceeded"
    passed = status == "passed"
    return ExecutionResult(passed, status, per_test, sum(per_test), n, round(wall, 4), stderr, "" if passed else reason)


def executor_error(suite: TestSuite, why: str, wall: float) -> ExecutionResult:
    """A host-side failure (an OS error, a harness crash) as this program's ``runtime_error``."""
    n = len(suite)
    return ExecutionResult(False, "runtime_error", [False] * n, 0, n, round(wall, 4), "", f"executor error: {why}"[:1000])
