"""Programs written to fool the executor (issue 13): one or more per attack class, in every mode that promises to
stop it, with a check of the host afterwards. A wrong ``add`` (it returns 0) must never pass."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

import dreamprm_trl
from dreamprm_trl.sandbox import TestSuite, execute, execute_many, isolation
from dreamprm_trl.sandbox import confinement, workdir

HAS_BWRAP = confinement.bwrap_works() is not None
MODES = ["bwrap", "rlimits"] if HAS_BWRAP else ["rlimits"]
needs_bwrap = pytest.mark.skipif(not HAS_BWRAP, reason="bubblewrap not available")

WRONG = "\ndef add(a, b):\n    attack()\n    return 0\n"
SUITES = {  # the same wrong `add` against every suite kind that runs test code
    "check": TestSuite.check("def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(2, 2) == 4\n", "add"),
    "asserts": TestSuite.asserts(["assert add(1, 2) == 3", "assert add(2, 2) == 4"]),
    "unittest": TestSuite.unittest(
        "import unittest\nclass T(unittest.TestCase):\n    def test_add(self):\n        self.assertEqual(add(1, 2), 3)\n"
        "        self.assertTrue(add(2, 2) == 4)\n", ["T"]),
}

ATTACKS = {
    # length-prefixed verdict records (and report lines) written to every inherited descriptor
    "report-pipe": """
import os, marshal
def attack():
    body = marshal.dumps({"i": 0, "r": "ok", "detail": ""})
    for i in range(2):
        body_i = marshal.dumps({"i": i, "r": "ok", "detail": ""})
        frame = len(body_i).to_bytes(4, "little") + body_i
        for fd in range(3, 256):
            for data in (frame, b'{"nonce": "x", "i": 0, "r": "ok"}\\n{"done": true, "clean": true}\\n'):
                try:
                    os.write(fd, data)
                except OSError:
                    pass
attack()
""",
    # the harness's writer, plain-data conversion and comparison, patched through sys.modules
    "patch-harness-modules": """
import sys
class Any:
    def __eq__(self, other):
        return True
    __hash__ = object.__hash__
def attack():
    main = sys.modules["__main__"]
    for name in ("_exit_kind", "_describe"):
        setattr(main, name, lambda *a, **k: "ok")
    for mod in [m for k, m in list(sys.modules.items()) if k.startswith("_sandbox") or k == "__main__"]:
        for cls in [v for v in vars(mod).values() if isinstance(v, type)]:
            try:
                cls.__eq__ = lambda self, other: True
                cls.__bool__ = lambda self: True
            except TypeError:
                pass
        for name in ("send", "to_plain", "decode", "encode", "_write_msg"):
            if hasattr(mod, name):
                setattr(mod, name, lambda *a, **k: None)
attack()
def add(a, b):
    return Any()
""",
    # always-equal objects wrapped in a mappingproxy, or a class claiming to be a builtin
    "mappingproxy": """
import types
class M(dict):
    def __eq__(self, other):
        return True
    __hash__ = object.__hash__
def attack():
    pass
def add(a, b):
    return types.MappingProxyType(M())
""",
    "claims-builtins": """
class int_(int):
    __module__ = "builtins"
    __qualname__ = "int"
    def __eq__(self, other):
        return True
    __hash__ = int.__hash__
class Eq:
    __module__ = "builtins"
    __qualname__ = "int"
    def __eq__(self, other):
        return True
def attack():
    pass
def add(a, b):
    return Eq() if a == 1 else int_(0)
""",
    # a standard-library object that equals everything, returned (and bound to the name) by reference
    "named-mock-any": """
import sys, unittest.mock
def attack():
    pass
proxy = sys.modules.get("_sandbox_harness.proxy")
if proxy is not None:  # send it as a name for the test process to look up itself
    proxy.named = lambda obj: ["unittest.mock", "ANY"] if obj is unittest.mock.ANY else None
def add(a, b):
    return unittest.mock.ANY
""",
    # unittest's result class replaced so that failures are never recorded
    "replace-testresult": """
import unittest, unittest.result
class R(unittest.TestResult):
    def addFailure(self, *a):
        pass
    def addError(self, *a):
        pass
    def wasSuccessful(self):
        return True
def attack():
    unittest.TestResult = unittest.result.TestResult = R
    unittest.TestCase.assertEqual = lambda *a, **k: None
    unittest.TestCase.assertTrue = lambda *a, **k: None
attack()
""",
    # builtins snapshots patched through gc; every reachable `send` called through the frames
    "gc-and-frames": """
import gc, sys
def attack():
    for obj in gc.get_objects():
        try:
            if isinstance(obj, dict) and obj.get("len") is len:
                obj["isinstance"] = lambda *a: True
        except BaseException:
            pass
    seen = set()
    frame = sys._getframe()
    while frame is not None:
        for value in list(frame.f_locals.values()) + list(frame.f_globals.values()):
            try:
                send = getattr(value, "send", None)
            except BaseException:
                continue
            if callable(send) and id(send) not in seen:
                seen.add(id(send))
                for fd in range(3, 64):
                    for args in ((fd, {"i": 0, "r": "ok"}), (fd, ["ok", 3]), (0, "ok"), (1, "ok")):
                        try:
                            send(*args)
                        except BaseException:
                            pass
        frame = frame.f_back
attack()
""",
    # the small int 0 rewritten in place, so that 0 == 3 in this interpreter
    "ctypes-small-int": """
import ctypes, sys
def attack():
    ctypes.memmove(id(0), id(3), sys.getsizeof(3))
""",
}


def _attack_pairs():
    names, pairs = [], []
    for attack, code in ATTACKS.items():
        program = code if "\ndef add(" in code else code + WRONG
        for kind, suite in SUITES.items():
            names.append(f"{attack}/{kind}")
            pairs.append((program, suite))
    return names, pairs


@pytest.mark.parametrize("mode", MODES)
def test_no_attack_forges_a_pass(mode):
    names, pairs = _attack_pairs()
    results = execute_many(pairs, progress=False, sandbox=mode, timeout=1.0)
    for name, r in zip(names, results):
        # (a test may pass when the program's own interpreter really computes the right value: after the ctypes
        # attack its 0 *is* 3, and 3 is what crosses the wire for add(1, 2); add(2, 2) still fails)
        assert not r.passed and r.status != "passed" and r.passed_tests < r.total_tests, (name, r)
        # a program that breaks its own side of the proxy hangs or crashes its own process: never skipped
        assert r.status in ("failed", "runtime_error", "timeout"), (name, r)
    # host check: the attacks ran (a control program passes through the same batch) and left nothing running
    good = execute("def add(a, b):\n    return a + b\n", SUITES["unittest"], sandbox=mode, allow_code_execution=True)
    assert good.passed, good


@pytest.fixture(autouse=True)
def _opt_in(monkeypatch):
    monkeypatch.setenv("HF_ALLOW_CODE_EVAL", "1")


@pytest.fixture
def scratch(tmp_path):
    """A folder on tmpfs when there is one (deep trees on a disk take seconds to create and remove)."""
    if os.access("/dev/shm", os.W_OK):
        import shutil
        import tempfile

        path = Path(tempfile.mkdtemp(prefix="dreamprm-test-", dir="/dev/shm"))
        yield path
        shutil.rmtree(path, ignore_errors=True)
    else:
        yield tmp_path


# ----------------------------------------------------------------------------------------------- honest skips
@pytest.mark.parametrize("mode", MODES)
def test_skips_are_decided_before_the_program_runs(mode, tmp_path):
    marker = tmp_path / "program_ran"
    forge = "def add(a, b):\n    raise ModuleNotFoundError(\"No module named 'numpy'\", name='numpy')\n"
    forge_at_load = "raise ModuleNotFoundError(\"No module named 'numpy'\", name='numpy')\n"
    numpy_check = TestSuite.check("import numpy\ndef check(candidate):\n    assert candidate(1, 2) == 3\n", "add")
    numpy_asserts = TestSuite.asserts(["assert add(1, 2) == 3"], setup="import numpy")
    missing = TestSuite.asserts(["assert add(1, 2) == 3"], setup="import not_installed_pkg_xyz")
    runs_first = f"open({str(marker)!r}, 'w').write('ran')\nwhile True:\n    pass\n"
    pairs = [(forge, numpy_check), (forge, numpy_asserts), (forge_at_load, numpy_check), (runs_first, missing)]
    results = execute_many(pairs, progress=False, sandbox=mode, timeout=2.0)
    assert [r.status for r in results] == ["runtime_error"] * 3 + ["skipped"], results
    assert "not_installed_pkg_xyz" in results[3].reason and results[3].wall_time < 1.5
    assert not marker.exists()  # host check: the program never started


# ----------------------------------------------------------------------------------------------- batch survival
@pytest.mark.parametrize("mode", MODES)
def test_deep_trees_and_host_errors_do_not_lose_the_batch(mode, monkeypatch, scratch):
    monkeypatch.setattr(workdir, "scratch_root", lambda: str(scratch))
    nested = "import os\nfor _ in range(1500):\n    os.mkdir('d')\n    os.chdir('d')\nprint(1)\n"
    good = ("print(int(input()) + 1)\n", TestSuite.stdio(["1"], ["2"]))
    real_env = confinement.sandbox_env
    calls = []

    def flaky_env(work, marker):
        calls.append(marker)
        if len(calls) == 3:
            raise OSError(24, "Too many open files")
        return real_env(work, marker)

    monkeypatch.setattr(confinement, "sandbox_env", flaky_env)
    results = execute_many([(nested, TestSuite.stdio([""], ["1"])), good, good, good], workers=1, progress=False, sandbox=mode)
    assert [r.status for r in results] == ["passed", "passed", "runtime_error", "passed"], results
    assert "executor error: OSError" in results[2].reason and "Too many open files" in results[2].reason
    assert list(scratch.iterdir()) == []  # host check: every work directory is gone, the deep one included


def test_a_work_dir_that_cannot_be_removed_is_the_programs_status(monkeypatch):
    real, kept = workdir.rmtree, []
    monkeypatch.setattr(workdir, "rmtree", lambda path: kept.append(path) or f"{path} is still there")
    r = execute("print(1)", TestSuite.stdio([""], ["1"]), sandbox=MODES[-1])
    assert [real(path) for path in kept] == [None]  # (the test's own clean-up)
    assert (r.status, r.passed) == ("runtime_error", False)
    assert r.reason.startswith("executor error: could not remove the work directory")


def test_rmtree_handles_1500_nested_dirs_and_unsearchable_folders(scratch):
    path = scratch / "deep"
    os.mkdir(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        for _ in range(1500):
            os.mkdir("d", dir_fd=fd)
            new = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = new
    finally:
        os.close(fd)
    os.chmod(path, 0o000)
    assert workdir.rmtree(str(path)) is None
    assert not path.exists()


# ----------------------------------------------------------------------------------------------- isolation
@needs_bwrap
def test_bwrap_hides_test_data_repository_and_home(tmp_path):
    problems = tmp_path / "problems.jsonl"
    problems.write_text('{"expected": "42"}\n')
    home_file = Path.home() / f".dreamprm_hostile_{uuid.uuid4().hex}"
    home_file.write_text("credential")
    repo_file = Path(dreamprm_trl.__file__).resolve().parents[1] / "tests" / "test_sandbox_hostile.py"
    code = f"""
import os
seen = []
for path in {[str(problems), str(home_file), str(repo_file), "/work", "/etc/passwd", "."]!r}:
    seen.append(os.path.exists(path))
print(seen)
try:
    print(open({str(problems)!r}).read().split('"')[3])
except OSError:
    print("hidden")
"""
    try:
        r = execute(code, TestSuite.stdio([""], ["[False, False, False, False, False, True]\nhidden"]), sandbox="bwrap")
    finally:
        home_file.unlink()
    assert r.passed, r
    assert problems.read_text() == '{"expected": "42"}\n'


@needs_bwrap
def test_bwrap_tmp_is_private_capped_and_fresh(monkeypatch):
    monkeypatch.setenv("DREAMPRM_HOSTILE_SECRET", "s3cr3t-value-xyz")
    marker = uuid.uuid4().hex
    leak = f"open('/tmp/leak_{marker}', 'w').write('x')\nprint(1)\n"
    check = f"import os\nprint(os.path.exists('/tmp/leak_{marker}'))\n"
    flood = (  # 64 MiB into /tmp and the work dir; memory_mb=256 gives /tmp 32 MiB
        "import os\nfor where in ('/tmp/f', './g'):\n    n = 0\n    try:\n        with open(where, 'wb') as f:\n"
        "            for _ in range(64):\n                f.write(b'x' * (1 << 20))\n                f.flush()\n"
        "                n += 1\n    except OSError:\n        pass\n    print(n < 40)\n"
    )
    environ = (  # every process's environ and memory maps this program can see, its ancestors' included
        "import os\nhits = 0\nfor p in os.listdir('/proc'):\n    if p.isdigit():\n        try:\n"
        "            hits += b's3cr3t-value-xyz' in open(f'/proc/{p}/environ', 'rb').read()\n        except OSError:\n"
        "            pass\nprint(hits)\n"
    )
    pairs = [
        (leak, TestSuite.stdio([""], ["1"])),
        (check, TestSuite.stdio([""], ["False"])),
        (flood, TestSuite.stdio([""], ["True\nTrue"])),
        (environ, TestSuite.stdio([""], ["0"])),
    ]
    results = execute_many(pairs, workers=1, progress=False, sandbox="bwrap", memory_mb=256)
    assert [r.status for r in results] == ["passed"] * 4, results
    assert not os.path.exists(f"/tmp/leak_{marker}")  # host check


DAEMON = """
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execve(sys.executable, [sys.executable, "-c", "import time\\nwhile True: time.sleep(0.05)", "{marker}"], {{}})
    os._exit(0)
time.sleep(0.2)
try:
    os.kill(os.getppid(), 9)
except OSError:
    pass
time.sleep(0.5)
"""


@needs_bwrap
def test_bwrap_daemon_with_empty_environment_does_not_survive():
    marker = uuid.uuid4().hex
    results = execute_many([(DAEMON.format(marker=marker), TestSuite.stdio([""], ["1"])),
                            (DAEMON.format(marker=marker) + "\ndef add(a, b):\n    return a + b\n", SUITES["check"])],
                           progress=False, sandbox="bwrap", timeout=2.0)
    assert not results[0].passed
    time.sleep(0.3)
    alive = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{name}/cmdline").read_bytes():
                alive.append(name)
        except OSError:
            pass
    assert alive == []


# ----------------------------------------------------------------------------------------------- rlimits mode
def test_requested_isolation_is_refused_not_downgraded(monkeypatch):
    monkeypatch.setitem(confinement._bwrap_state, "path", None)
    monkeypatch.setattr(confinement, "_warned", False)
    monkeypatch.setenv("DREAMPRM_SANDBOX", "bwrap")
    with pytest.raises(RuntimeError, match="isolation was requested.*no program is run.*apt-get install bubblewrap"):
        execute_many([("print(1)", TestSuite.stdio([""], ["1"]))], progress=False)
    with pytest.raises(RuntimeError, match="DREAMPRM_SANDBOX=bwrap"):
        isolation("bwrap")
    monkeypatch.delenv("DREAMPRM_SANDBOX")
    with pytest.warns(RuntimeWarning, match="WITHOUT: filesystem isolation.*a private /tmp.*environ"):
        assert isolation() == "rlimits"


# ----------------------------------------------------------------------------------------------- proxy semantics
CLASS_PROGRAM = '''
class StackError(ValueError):
    pass

class Stack:
    kind = "lifo"
    def __init__(self, items=None):
        self.items = list(items or [])
    def push(self, x):
        self.items.append(x)
        return self
    def pop(self):
        if not self.items:
            raise StackError("empty")
        return self.items.pop()
    def __len__(self):
        return len(self.items)
    def __iter__(self):
        return iter(self.items)
    def __getitem__(self, i):
        return self.items[i]
    def __contains__(self, x):
        return x in self.items

def make():
    return Stack([1])
'''
CLASS_TESTS = '''
import unittest

class TestStack(unittest.TestCase):
    def test_state_and_chaining(self):
        s = Stack()
        self.assertIs(s.push(1).push(2), s)
        self.assertEqual(s.items, [1, 2])
        self.assertEqual((len(s), list(s), s[0], 2 in s, 5 in s), (2, [1, 2], 1, True, False))
        s.items = [7]
        self.assertEqual(s.pop(), 7)
        s.items.append(9)  # a synced copy: the change reaches the program's list
        self.assertEqual((s.pop(), len(s)), (9, 0))
        self.assertEqual(Stack.kind, "lifo")
        self.assertIsInstance(s, Stack)
        self.assertIsInstance(make(), Stack)

    def test_exceptions(self):
        with self.assertRaises(StackError):
            Stack().pop()
        with self.assertRaises(ValueError):
            Stack().pop()
        self.assertRaises(TypeError, Stack().push)
'''


@pytest.mark.parametrize("mode", MODES)
def test_proxy_keeps_object_semantics_and_prelude(mode):
    from dreamprm_trl.problems import PRELUDES

    lcb = PRELUDES["livecodebench"]
    prelude_stdio = TestSuite.stdio(["3"], ["[3]"], prelude="from typing import *")
    typed = "def f(n: List[int]) -> List[int]:\n    return [n]\nprint(f(int(input())))\n"
    pairs = [
        (CLASS_PROGRAM, TestSuite.unittest(CLASS_TESTS, ["TestStack"])),
        (typed, prelude_stdio),
        (typed, TestSuite.stdio(["3"], ["[3]"])),  # no prelude: List is undefined
        ("def f(xs: List[int]) -> int:\n    return sum(xs)\n",
         TestSuite.asserts(["assert f([1, 2]) == 3"], prelude="from typing import *")),
        ("def f(x):\n    return {x: (x, float('nan'), b'\\x00', 1j, range(x), frozenset([x]))}\n",
         TestSuite.check("import math\ndef check(c):\n    v = c(2)[2]\n    assert v[0] == 2 and math.isnan(v[1]) and v[2:] == (b'\\x00', 1j, range(2), frozenset([2]))\n", "f")),
        ("abs = lambda x: 0\ndef f(x):\n    return x\n", TestSuite.check("def check(c):\n    assert abs(c(5) - 3) < 1\n", "f")),
        # LiveCodeBench's import block: gcd, deque and List without imports, in stdio and call suites
        ("print(gcd(*map(int, input().split())), len(deque([1, 2])))\n", TestSuite.stdio(["4 6"], ["2 2"], prelude=lcb)),
        ("class Solution:\n    def f(self, xs: List[int]) -> int:\n        return gcd(*xs)\n",
         TestSuite.call("f", ["[4, 6]"], ["2"], prelude=lcb)),
        # numpy arrays: arrays for unittest suites, lists for check/asserts suites (as HumanEval tests compare)
        ("import numpy as np\ndef f():\n    return np.arange(3.0)\n", TestSuite.unittest(
            "import unittest\nclass T(unittest.TestCase):\n    def test(self):\n        self.assertEqual(f().shape, (3,))\n", ["T"])),
        ("import numpy as np\ndef f():\n    return np.arange(3)\n", TestSuite.asserts(["assert f() == [0, 1, 2]"])),
        # values Python would refuse to print in decimal (over 4,300 digits) still cross the proxy
        ("def big(n):\n    return [7 ** n, -(7 ** n)]\n", TestSuite.asserts(["assert big(9000) == [7 ** 9000, -(7 ** 9000)]"])),
    ]
    results = execute_many(pairs, progress=False, sandbox=mode)
    expected = ["passed", "passed", "runtime_error", "passed", "passed", "failed", "passed", "passed", "passed", "passed", "passed"]
    assert [r.status for r in results] == expected, results


@pytest.mark.parametrize("mode", MODES)
def test_arguments_changed_in_place_reach_the_tests(mode):
    program = "def push(stack, d, x):\n    stack.append(x)\n    d['n'] = d.get('n', 0) + 1\n    return len(stack)\n"
    tests = ["s, d = [1], {}", "assert push(s, d, 2) == 2 and push(s, d=d, x=3) == 3", "assert (s, d) == ([1, 2, 3], {'n': 2})"]
    r = execute(program, TestSuite.asserts(["\n".join(tests)]), sandbox=mode)
    assert r.passed, r
