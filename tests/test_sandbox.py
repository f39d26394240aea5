"""Tests of the sandboxed executor: verdicts of correct, wrong and hostile programs, and that nothing happens on the
host. Programs run through ``execute_many`` in batches to keep the file fast on 2 cores."""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

import pytest

from dreamprm_trl.sandbox import ExecutionResult, SandboxedExecutor, TestSuite, execute, execute_many, isolation
from dreamprm_trl.sandbox import confinement, workdir
from dreamprm_trl.sandbox.limits import (
    DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_MAX_PROCESSES,
    DEFAULT_MEMORY_MB,
    DEFAULT_TIMEOUT,
    HARNESS_VERSION,
)

HAS_BWRAP = confinement.bwrap_works() is not None
MODES = ["bwrap", "rlimits"] if HAS_BWRAP else ["rlimits"]
needs_bwrap = pytest.mark.skipif(not HAS_BWRAP, reason="bubblewrap not available")

ADD_CHECK = TestSuite.check("def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n", "add")
GOOD_ADD = "def add(a, b):\n    return a + b\n"


def _alive_with(marker: str) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        with open(f"/proc/{name}/stat", "rb") as g:
                            if g.read().rsplit(b")", 1)[1].split()[0] != b"Z":
                                found.append(int(name))
            except OSError:
                pass
    return found


def _run(pairs, mode, **kw):
    return execute_many(pairs, progress=False, sandbox=mode, **kw)


def test_opt_in_is_required(monkeypatch):
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL", raising=False)
    with pytest.raises(PermissionError, match="allow_code_execution=True.*HF_ALLOW_CODE_EVAL=1"):
        execute(GOOD_ADD, ADD_CHECK)
    with pytest.raises(PermissionError):
        execute_many([(GOOD_ADD, ADD_CHECK)], progress=False)
    assert execute(GOOD_ADD, ADD_CHECK, allow_code_execution=True).passed


def test_isolation_levels_and_config(monkeypatch):
    monkeypatch.setenv("DREAMPRM_SANDBOX", "rlimits")
    assert isolation() == "rlimits"
    monkeypatch.delenv("DREAMPRM_SANDBOX")
    assert isolation() == ("bwrap" if HAS_BWRAP else "rlimits")
    with pytest.raises(ValueError, match="expected 'auto', 'bwrap' or 'rlimits'"):
        isolation("docker")
    ex = SandboxedExecutor(timeout=2.5, memory_mb=512, sandbox="rlimits")
    assert ex.config() == {
        "timeout": 2.5,
        "memory_mb": 512,
        "max_output_bytes": DEFAULT_MAX_OUTPUT_BYTES,
        "isolation": "rlimits",
        "harness_version": HARNESS_VERSION,
    }
    assert SandboxedExecutor().config()["timeout"] == DEFAULT_TIMEOUT == 6.0
    assert SandboxedExecutor().config()["memory_mb"] == DEFAULT_MEMORY_MB == 1024
    with pytest.raises(ValueError, match="timeout"):
        SandboxedExecutor(timeout=0)
    with pytest.raises(ValueError, match="memory_mb"):
        SandboxedExecutor(memory_mb=8)


def test_rlimits_only_warns_once_when_bwrap_missing(monkeypatch):
    monkeypatch.delenv("DREAMPRM_SANDBOX", raising=False)  # (a forced rlimits mode never warns)
    monkeypatch.setitem(confinement._bwrap_state, "path", None)
    monkeypatch.setattr(confinement, "_warned", False)
    with pytest.warns(RuntimeWarning, match="bubblewrap"):
        assert isolation() == "rlimits"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise here
        assert isolation() == "rlimits"
    with pytest.raises(RuntimeError, match="apt-get install bubblewrap"):
        isolation("bwrap")


# --------------------------------------------------------------------------------------------- correct programs
UNITTEST_CODE = """
import unittest

class CalcTestAdd(unittest.TestCase):
    def test_add(self):
        self.assertEqual(Calc().add(2, 3), 5)
    def test_chain(self):
        self.assertEqual(Calc().reset().add(1, 1), 2)

class CalcTestMul(unittest.TestCase):
    def test_mul(self):
        self.assertEqual(Calc().mul(2, 3), 6)
"""
CALC = """
class Calc:
    def add(self, a, b):
        return a + b
    def mul(self, a, b):
        return a * b
    def reset(self):
        return self
"""

BIG = 300_000


def correct_cases():
    big_in = " ".join(str(i) for i in range(BIG)) + "\n"
    return [
        ("stdio", "a, b = map(int, input().split())\nprint(a + b)\n", TestSuite.stdio(["1 2\n", "10 -3\n"], ["3\n", "7\n"])),
        ("stdin-fd", "import sys\nxs = sys.stdin.buffer.read().split()\nprint(sum(map(int, xs)))\n", TestSuite.stdio(["1\n2\n3\n"], ["6"])),
        ("open0", "print(sum(map(int, open(0).read().split())))\n", TestSuite.stdio(["4 5\n"], ["9"])),
        ("float", "print(f'{1/3:.6f}', 2.50)\n", TestSuite.stdio([""], ["0.333333 2.5"])),
        ("unicode", "s = input()\nprint(s[::-1], len(s))\n", TestSuite.stdio(["héllo✓\n"], ["✓olléh 6"])),
        ("large-stdin", "import sys\nprint(sum(map(int, sys.stdin.read().split())))\n", TestSuite.stdio([big_in], [str(BIG * (BIG - 1) // 2)])),
        ("solution", "class Solution:\n    def twoSum(self, nums, target):\n        seen = {}\n        for i, x in enumerate(nums):\n            if target - x in seen:\n                return [seen[target - x], i]\n            seen[x] = i\n",
         TestSuite.call("twoSum", ["[2,7,11,15]\n9", "[3,2,4]\n6"], ["[0, 1]", "[1, 2]"])),
        ("call-fn", "def pair(a, s):\n    return (a, s.upper(), {'k': [1.5]})\n", TestSuite.call("pair", ['1\n"x"'], ['[1, "X", {"k": [1.5]}]'])),
        ("check", GOOD_ADD, ADD_CHECK),
        ("check-float-tuple", "def f(x):\n    return (x / 2, [x, 'é'], {x})\n",
         TestSuite.check("def check(candidate):\n    assert candidate(3) == (1.5, [3, 'é'], {3})\n", "f")),
        ("asserts", "def add(a, b):\n    return a + b\n", TestSuite.asserts(["assert add(1, 2) == 3", "assert add(math.floor(2.5), 1) == 3"], setup="import math")),
        ("unittest", CALC, TestSuite.unittest(UNITTEST_CODE, ["CalcTestAdd", "CalcTestMul"])),
        ("asserts-deep-recursion", "def depth(n):\n    return 0 if n == 0 else 1 + depth(n - 1)\n", TestSuite.asserts(["assert depth(900) == 900"])),
        ("check-numpy-and-namedtuple", "import numpy as np\nfrom collections import namedtuple\nP = namedtuple('P', 'x y')\ndef f(n):\n    return np.int64(n), P(n, 2.5), np.arange(n)\n",
         TestSuite.check("def check(candidate):\n    assert candidate(3) == (3, (3, 2.5), [0, 1, 2])\n", "f")),
    ]


@pytest.mark.parametrize("mode", MODES)
def test_correct_programs_pass(mode):
    cases = correct_cases()
    results = _run([(code, suite) for _, code, suite in cases], mode)
    for (name, _, suite), r in zip(cases, results):
        assert isinstance(r, ExecutionResult)
        assert (r.status, r.passed, r.per_test) == ("passed", True, [True] * len(suite)), (name, r)
        assert (r.passed_tests, r.total_tests) == (len(suite), len(suite))
        assert 0 < r.wall_time < 30


# --------------------------------------------------------------------------------------------- wrong programs
def wrong_cases():
    loop = "def add(a, b):\n    while True:\n        pass\n"
    return [
        ("wrong-output", "print(int(input()) + 1)\n", TestSuite.stdio(["1\n", "5\n"], ["2", "7"]), "failed", [True, False]),
        ("crash", "x = int(input())\nprint(10 // x)\n", TestSuite.stdio(["0\n", "5\n"], ["0", "2"]), "runtime_error", [False, True]),
        ("syntax", "def add(a, b) return a", ADD_CHECK, "syntax_error", [False]),
        ("null-byte", "x = 1\x00\n", ADD_CHECK, "syntax_error", [False]),
        ("assert-fails", "def add(a, b):\n    return a - b\n", ADD_CHECK, "failed", [False]),
        ("name-error", "def plus(a, b):\n    return a + b\n", ADD_CHECK, "runtime_error", [False]),
        ("asserts-partial", "def add(a, b):\n    return 3\n", TestSuite.asserts(["assert add(1, 2) == 3", "assert add(2, 2) == 4"]), "failed", [True, False]),
        ("call-wrong", "class Solution:\n    def f(self, x):\n        return [x]\n", TestSuite.call("f", ["1", "2"], ["[1]", "[3]"]), "failed", [True, False]),
        ("unittest-partial", CALC.replace("a * b", "a + b"), TestSuite.unittest(UNITTEST_CODE, ["CalcTestAdd", "CalcTestMul"]), "failed", [True, False]),
        ("timeout", loop, ADD_CHECK, "timeout", [False]),
        ("timeout-second-test", "x = int(input())\nwhile x == 2:\n    pass\nprint(x)\n", TestSuite.stdio(["1", "2", "3"], ["1", "2", "3"]), "timeout", [True, False, False]),
        ("memory", "x = bytearray(3 * 1024 ** 3)\nprint(1)\n", TestSuite.stdio([""], ["1"]), "memory_exceeded", [False]),
        ("memory-in-test", "def add(a, b):\n    return len([0] * (10 ** 10))\n", ADD_CHECK, "memory_exceeded", [False]),
        ("output-flood", "while True:\n    print('x' * 10000)\n", TestSuite.stdio([""], ["x"]), "output_limit", [False]),
        ("output-flood-check", "import sys\ndef add(a, b):\n    sys.stdout.write('y' * (1 << 25))\n    return a + b\n", ADD_CHECK, "output_limit", [False]),
        ("skipped", CALC, TestSuite.unittest("import unittest\nimport not_installed_pkg_xyz\n" + UNITTEST_CODE, ["CalcTestAdd"]), "skipped", [False]),
        ("recursion", "def add(a, b):\n    return add(a, b)\n", ADD_CHECK, "runtime_error", [False]),
        ("segfault", "import ctypes\ndef add(a, b):\n    return ctypes.string_at(0)\n", ADD_CHECK, "runtime_error", [False]),
    ]


@pytest.mark.parametrize("mode", MODES)
def test_wrong_programs_get_the_right_status(mode):
    cases = wrong_cases()
    results = _run([(code, suite) for _, code, suite, _, _ in cases], mode, timeout=1.0, memory_mb=512)
    for (name, _, _, status, per_test), r in zip(cases, results):
        assert (r.status, r.per_test, r.passed) == (status, per_test, False), (name, r)
        assert r.reason, name
    skipped = results[[c[0] for c in cases].index("skipped")]
    assert "not_installed_pkg_xyz" in skipped.reason and "not installed" in skipped.reason


# --------------------------------------------------------------------------------------------- hostile programs
def forgery_cases():
    """Programs that try to pass without being right. None may pass."""
    evil_eq = "class Any:\n    def __eq__(self, other):\n        return True\n"
    return [
        ("os-exit-0", "import os\ndef add(a, b):\n    os._exit(0)\n"),
        ("sys-exit-0", "import sys\ndef add(a, b):\n    sys.exit(0)\n"),
        ("exit-at-load", "import sys\nsys.exit(0)\n"),
        ("atexit-exit-0", "import atexit, os\natexit.register(lambda: os._exit(0))\ndef add(a, b):\n    raise AssertionError\n"),
        ("prints-success", "print('passed', 'OK', 'All tests passed')\ndef add(a, b):\n    print('{\"i\": 0, \"r\": \"ok\"}')\n    return 0\n"),
        ("eq-object", evil_eq + "def add(a, b):\n    return Any()\n"),
        ("int-subclass-eq", "class I(int):\n    def __eq__(self, o):\n        return True\n    __hash__ = int.__hash__\ndef add(a, b):\n    return I(7)\n"),
        ("list-of-eq", evil_eq + "def add(a, b):\n    return [Any()]\n"),
        ("patch-builtins", "import builtins\nbuiltins.isinstance = lambda *a: True\ndef add(a, b):\n    return 0\n"),
        ("write-all-fds", "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'{\"nonce\": \"x\", \"i\": 0, \"r\": \"ok\"}\\n{\"done\": true}\\n')\n    except OSError:\n        pass\ndef add(a, b):\n    return 0\n"),
        ("kill-supervisor", "import os\nos.kill(os.getppid(), 9)\ndef add(a, b):\n    return a + b\n"),
        ("close-stdout", "import os\nos.close(1)\nos.close(2)\ndef add(a, b):\n    return 0\n"),
    ]


UNITTEST_PATCH = """
import unittest
unittest.TestCase.assertEqual = lambda self, a, b, msg=None: None
class Calc:
    def add(self, a, b):
        return 0
    def mul(self, a, b):
        return 0
    def reset(self):
        return self
"""


@pytest.mark.parametrize("mode", MODES)
def test_forged_success_never_passes(mode):
    cases = forgery_cases()
    pairs = [(code, ADD_CHECK) for _, code in cases]
    pairs.append((UNITTEST_PATCH, TestSuite.unittest(UNITTEST_CODE, ["CalcTestAdd", "CalcTestMul"])))
    pairs.append(("class Any:\n    def __eq__(self, o):\n        return True\nclass Calc:\n    def add(self, a, b):\n        return Any()\n"
                  "    mul = add\n    def reset(self):\n        return self\n", TestSuite.unittest(UNITTEST_CODE, ["CalcTestAdd", "CalcTestMul"])))
    pairs.append(("class E:\n    def __eq__(s, o):\n        return True\nclass Solution:\n    def f(self, x):\n        return E()\n",
                  TestSuite.call("f", ["1"], ["[1]"])))
    pairs.append(("import sys\nprint('2')\nsys.stdout.flush()\nimport os\nos._exit(0)\n", TestSuite.stdio(["1"], ["2\n3"])))
    results = _run(pairs, mode, timeout=2.0)
    names = [n for n, _ in cases] + ["patch-unittest", "unittest-eq-object", "call-eq-object", "stdio-partial-exit"]
    for name, r in zip(names, results):
        assert not r.passed and r.status != "passed" and r.per_test == [False] * r.total_tests, (name, r)
    by = dict(zip(names, results))
    assert "not plain data" in by["eq-object"].reason  # check/asserts suites take plain data only
    assert by["int-subclass-eq"].status == "failed"  # copied to a plain int: 7 != 3
    # the program's builtins are not the tests': patching them only breaks the program's own process
    assert by["patch-builtins"].status == "runtime_error" and "ended during the test" in by["patch-builtins"].reason


DAEMON = """
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, "-c", "import time\\nwhile True: time.sleep(0.05)", "{marker}"])
    os._exit(0)
time.sleep(0.2)
{tail}
"""


@pytest.mark.parametrize("mode", MODES)
def test_no_process_survives(mode):
    markers = [uuid.uuid4().hex for _ in range(4)]
    pairs = [
        (DAEMON.format(marker=markers[0], tail="print(3)"), TestSuite.stdio([""], ["3"])),  # ends normally
        (DAEMON.format(marker=markers[1], tail="while True: pass"), TestSuite.stdio([""], ["3"])),  # times out
        (DAEMON.format(marker=markers[2], tail="def add(a, b):\n    return a + b"), ADD_CHECK),
        # kills its supervisor (rlimits) or fails to (bwrap: other uid); the parent still finds the daemon
        (DAEMON.format(marker=markers[3], tail="os.kill(os.getppid(), 9)\ntime.sleep(1)"), TestSuite.stdio([""], ["3"])),
    ]
    results = _run(pairs, mode, timeout=2.0)
    assert [r.status for r in results] == ["passed", "timeout", "passed", "runtime_error"]
    time.sleep(0.3)
    for marker in markers:
        assert _alive_with(marker) == [], marker


@pytest.mark.parametrize("mode", MODES)
def test_environment_is_scrubbed_and_workdir_removed(mode, monkeypatch, tmp_path):
    monkeypatch.setenv("DREAMPRM_TEST_SECRET_TOKEN", "s3cr3t-value")
    monkeypatch.setenv("HF_TOKEN", "hf_should_not_leak")
    monkeypatch.setattr(workdir, "scratch_root", lambda: str(tmp_path))
    code = (
        "import os\n"
        "print(os.environ.get('DREAMPRM_TEST_SECRET_TOKEN'), os.environ.get('HF_TOKEN'))\n"
        "print(open('/proc/self/environ', 'rb').read().count(b's3cr3t'))\n"
        "print(sorted(k for k in os.environ if k not in ('LANG', 'LC_ALL', 'LC_CTYPE', 'TZ', 'PWD')))\n"
        "open('left_behind.txt', 'w').write('x')\n"
    )
    allowed = ["DREAMPRM_SANDBOX_ID", "HOME", "MKL_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "PATH",
               "PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED", "PYTHONIOENCODING", "TMPDIR"]
    expected = f"None None\n0\n{allowed}\n"
    r = execute(code, TestSuite.stdio([""], [expected]), sandbox=mode)
    assert r.passed, r
    assert list(tmp_path.iterdir()) == []  # the whole scratch dir, work dir included, is gone


@needs_bwrap
def test_bwrap_filesystem_network_and_home_are_isolated(tmp_path):
    marker = uuid.uuid4().hex
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    home_secret = Path.home() / f".dreamprm_test_secret_{marker}"
    home_secret.write_text("credential")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    targets = [str(tmp_path / f"new_{marker}"), f"/tmp/{marker}", str(Path(confinement.__file__).parent / marker)]
    code = f"""
import os, socket
results = []
for path in {targets!r}:
    try:
        open(path, "w").write("pwned")
        results.append("wrote")
    except OSError:
        results.append("blocked")
try:
    os.remove({str(victim)!r})
    results.append("deleted")
except OSError:
    results.append("blocked")
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=1).close()
    results.append("connected")
except OSError:
    results.append("blocked")
try:
    results.append(open({str(home_secret)!r}).read())
except OSError:
    results.append("blocked")
print(" ".join(results))
"""
    try:
        # /tmp inside is a private tmpfs: the write succeeds there and never reaches the host's /tmp
        r = execute(code, TestSuite.stdio([""], ["blocked wrote blocked blocked blocked blocked"]), sandbox="bwrap")
        with pytest.raises(socket.timeout):
            server.accept()
    finally:
        server.close()
        home_secret.unlink()
    assert r.passed, r
    assert victim.read_text() == "keep me"
    for path in targets:
        assert not os.path.exists(path), path


@needs_bwrap
@pytest.mark.skipif(os.geteuid() != 0, reason="the per-program uid (and so RLIMIT_NPROC) needs root")
def test_bwrap_bounds_fork_bombs():
    code = (
        "import os, time\n"
        "n = 0\n"
        "for _ in range(200):\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(30)\n"
        "            os._exit(0)\n"
        "        n += 1\n"
        "    except OSError:\n"
        "        break\n"
        f"print('bounded' if n < {DEFAULT_MAX_PROCESSES} else n)\n"
    )
    r = execute(code, TestSuite.stdio([""], ["bounded"]), sandbox="bwrap", timeout=3.0)
    assert r.passed, r


# --------------------------------------------------------------------------------------------- batch
def test_execute_many_mixed_batch_keeps_order():
    mode = MODES[0]
    pairs, expected = [], []
    for i in range(12):
        pairs.append((f"print(int(input()) * {i})\n", TestSuite.stdio(["3\n"], [str(3 * i)])))
        expected.append("passed")
        pairs.append((f"print(int(input()) * {i} + 1)\n", TestSuite.stdio(["3\n"], [str(3 * i)])))
        expected.append("failed")
    for name, code, suite, status, _ in wrong_cases()[:6]:
        pairs.append((code, suite))
        expected.append(status)
    for name, code, suite in correct_cases()[6:10]:
        pairs.append((code, suite))
        expected.append("passed")
    pairs.append(("import os\nos.kill(os.getppid(), 19)\n", TestSuite.stdio([""], ["1"])))  # SIGSTOP its supervisor
    expected.append("runtime_error")
    assert len(pairs) >= 32
    results = execute_many(pairs, workers=2, progress=False, timeout=0.5, sandbox=mode)
    assert [r.status for r in results] == expected
