"""Sandboxed unit-test executor: every label in the project is a verdict of this module.

Each program runs in its own child processes (``python -I``) under resource limits and, when ``bwrap`` works, inside
a bubblewrap sandbox (only the Python installation visible, read-only; a private size-capped ``/tmp``; no network;
own PID namespace). Test code runs in a process of its own and reaches the program through a proxy
(``_sandbox_proxy``), so no program can forge a verdict. Expected outputs of stdio and call-based tests never enter
the sandbox; the parent compares. The host side of the sandbox lives in ``_sandbox_host``. Standard library + tqdm.
The README section "Running model-written code" lists what a user may rely on; the limits live in the
``DEFAULT_*`` constants below (one source of truth for ``execute``, ``execute_many`` and ``SandboxedExecutor``).
"""

from __future__ import annotations

import json
import marshal
import os
import secrets
import subprocess
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Iterable, Sequence

from tqdm.auto import tqdm

from ._sandbox_host import (  # noqa: F401 - also re-exported (tests use _bwrap_state, _rmtree)
    _INSIDE_HARNESS,
    _INSIDE_WORK,
    STDERR_TAIL_CHARS,
    TMP_SHARE,
    _bwrap_command,
    _bwrap_state,
    _bwrap_works,
    _harness_argv,
    _harness_dir,
    _kill_tree,
    _memory_split,
    _rmtree,
    _sandbox_env,
    _sandbox_uid,
    _scratch_root,
    _site_paths,
    _tail,
    _wait_exit,
)

__all__ = [
    "TestSuite",
    "ExecutionResult",
    "SandboxedExecutor",
    "execute",
    "execute_many",
    "isolation",
    "stdio_equal",
    "call_equal",
    "STATUSES",
    "DEFAULT_TIMEOUT",
    "DEFAULT_MEMORY_MB",
    "DEFAULT_MAX_OUTPUT_BYTES",
    "DEFAULT_MAX_PROCESSES",
]

SUITE_KINDS = ("stdio", "call", "check", "asserts", "unittest")
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


@dataclass(frozen=True)
class TestSuite:
    """The unit tests of one problem, in one of five styles.

    ``stdio`` (LiveCodeBench stdin/stdout), ``call`` (LiveCodeBench functional: one JSON value per input line,
    ``class Solution`` method or plain function), ``check`` (HumanEval ``check(candidate)``), ``asserts`` (MBPP),
    ``unittest`` (ClassEval ``TestCase`` classes). Build with the constructors, not the raw fields.

    ``prelude`` is code run before the program, in the program's namespace (and, for test-code suites, in the
    tests' namespace), as benchmark harnesses do: MBPP's ``from typing import *``, LiveCodeBench's import block.
    The loaders in :mod:`dreamprm_trl.tasks` set each benchmark's own (``tasks.PRELUDES``).
    """

    __test__ = False  # not a pytest test class

    kind: str
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    fn_name: str | None = None
    code: str = ""
    entry_point: str | None = None
    assertions: tuple[str, ...] = ()
    setup: str = ""
    test_classes: tuple[str, ...] = ()
    prelude: str = ""

    def __post_init__(self) -> None:
        if self.kind not in SUITE_KINDS:
            raise ValueError(f"TestSuite kind {self.kind!r} is not one of {SUITE_KINDS}")
        if self.kind in ("stdio", "call") and len(self.inputs) != len(self.outputs):
            raise ValueError(
                f"TestSuite.{self.kind}: {len(self.inputs)} inputs but {len(self.outputs)} outputs; "
                "pass one expected output per input"
            )
        if self.kind == "call" and not self.fn_name:
            raise ValueError("TestSuite.call needs fn_name (the function or Solution method to call)")
        if self.kind == "check" and not (self.code and self.entry_point):
            raise ValueError("TestSuite.check needs both the check code and the entry_point name")
        if self.kind == "unittest" and not self.test_classes:
            raise ValueError("TestSuite.unittest needs test_classes: the TestCase class names to run")

    # -- constructors -------------------------------------------------------------------------------------------
    @classmethod
    def stdio(cls, inputs: Sequence[str], outputs: Sequence[str], prelude: str = "") -> "TestSuite":
        """Stdin/stdout tests: the program reads ``inputs[i]`` and must print ``outputs[i]``."""
        return cls("stdio", inputs=tuple(map(str, inputs)), outputs=tuple(map(str, outputs)), prelude=prelude)

    @classmethod
    def call(cls, fn_name: str, inputs: Sequence[str], outputs: Sequence[str], prelude: str = "") -> "TestSuite":
        """Call-based tests: each input holds one JSON argument per line; output is a JSON value."""
        return cls("call", inputs=tuple(map(str, inputs)), outputs=tuple(map(str, outputs)), fn_name=fn_name, prelude=prelude)

    @classmethod
    def check(cls, check: str, entry_point: str, prelude: str = "") -> "TestSuite":
        """HumanEval style: ``check`` defines ``check(candidate)``, called with the program's ``entry_point``."""
        return cls("check", code=check, entry_point=entry_point, prelude=prelude)

    @classmethod
    def asserts(cls, asserts: Sequence[str], setup: str = "", prelude: str = "") -> "TestSuite":
        """MBPP style: each string is one test (usually one ``assert`` line), run after ``setup``."""
        if isinstance(asserts, str):
            asserts = [line for line in asserts.splitlines() if line.strip()]
        return cls("asserts", assertions=tuple(asserts), setup=setup, prelude=prelude)

    @classmethod
    def unittest(cls, test_code: str, test_classes: Sequence[str], setup: str = "", prelude: str = "") -> "TestSuite":
        """ClassEval style: ``test_code`` defines ``unittest.TestCase`` classes; one verdict per class."""
        if isinstance(test_classes, str):
            test_classes = [test_classes]
        return cls("unittest", code=test_code, test_classes=tuple(test_classes), setup=setup, prelude=prelude)

    @classmethod
    def from_problem(cls, problem: Any) -> "TestSuite":
        """The suite of a ``Problem`` (duck-typed on ``problem.tests``; a dict with ``"kind"`` also works)."""
        tests = getattr(problem, "tests", None)
        if tests is None and isinstance(problem, dict):
            tests = problem.get("tests")
        if isinstance(tests, TestSuite):
            return tests
        if isinstance(tests, dict):
            return cls.from_dict(tests)
        raise ValueError(
            f"cannot build a TestSuite from {type(problem).__name__}: its .tests is {type(tests).__name__}, "
            "expected a TestSuite (build one with TestSuite.stdio/call/check/asserts/unittest)"
        )

    # -- serialisation ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-safe dict (lists, not tuples); inverse of :meth:`from_dict`."""
        d = asdict(self)
        if not d["prelude"]:  # suites without one keep their old JSON (and cache keys)
            del d["prelude"]
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "TestSuite":
        d = dict(d)
        if "asserts" in d:
            d["assertions"] = d.pop("asserts")
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"TestSuite.from_dict: unknown keys {sorted(unknown)}; expected a subset of {sorted(known)}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def __len__(self) -> int:
        if self.kind in ("stdio", "call"):
            return len(self.inputs)
        if self.kind == "asserts":
            return len(self.assertions)
        if self.kind == "unittest":
            return len(self.test_classes)
        return 1


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
# Sandbox limits: the one source of truth (SandboxedExecutor, execute, execute_many and config() read these).
DEFAULT_TIMEOUT = 6.0  # wall-clock seconds per test case (module loading counts toward the first test)
DEFAULT_MEMORY_MB = 1024  # per program: address space of each process + (bwrap) its private /tmp, see _memory_split
DEFAULT_MAX_OUTPUT_BYTES = 8 * 1024 * 1024  # stdout of all tests together, and each file the program writes
DEFAULT_MAX_PROCESSES = 32  # processes per program (RLIMIT_NPROC on its own uid; see _sandbox_uid)
STARTUP_GRACE_S = 5.0  # the parent's backstop on top of the supervisor's own deadlines
SANDBOX_ENV = "DREAMPRM_SANDBOX"  # "rlimits" forces rlimits-only isolation, "bwrap" requires bubblewrap
OPT_IN_ENV = "HF_ALLOW_CODE_EVAL"
HARNESS_VERSION = "2"




_OPT_IN_ERROR = (
    "Refusing to execute model-written code: pass allow_code_execution=True (or set the environment variable "
    "HF_ALLOW_CODE_EVAL=1) to confirm that you accept the risk. The code runs in a sandbox (see "
    "dreamprm_trl.execution.isolation()), but untrusted code can never be made entirely safe."
)

RLIMITS_MISSING = (  # what rlimits mode does not guarantee (the fallback warning and the README list these)
    "filesystem isolation (the program can read test data, the repository and your home directory, and write "
    "anything you can)",
    "no network",
    "a private /tmp (a file left there can change a later program's verdict) and a cap on its size",
    "a private PID namespace (the program can read your processes' /proc/<pid>/environ and signal them; a daemon "
    "that kills its supervisor and clears its environment can survive the run)",
    "unforgeable verdicts across runs (the program can rewrite the harness or installed modules on disk)",
)

_warned = False


def _check_opt_in(allow_code_execution: bool) -> None:
    if not (allow_code_execution or os.environ.get(OPT_IN_ENV, "") == "1"):
        raise PermissionError(_OPT_IN_ERROR)






def isolation(sandbox: str | None = None) -> str:
    """The isolation level programs run under: ``"bwrap"`` or ``"rlimits"``.

    ``sandbox`` (or the ``DREAMPRM_SANDBOX`` environment variable) may force ``"rlimits"``, or demand ``"bwrap"``:
    then nothing runs without it (a ``RuntimeError``, never a silent downgrade). The default ``"auto"`` uses
    bubblewrap when it is on PATH and works, else warns once, naming what rlimits mode lacks (:data:`RLIMITS_MISSING`).
    """
    global _warned
    choice = (sandbox or os.environ.get(SANDBOX_ENV) or "auto").lower()
    if choice not in ("auto", "bwrap", "rlimits"):
        raise ValueError(f"sandbox={choice!r}: expected 'auto', 'bwrap' or 'rlimits' (also via ${SANDBOX_ENV})")
    if choice == "rlimits":
        return "rlimits"
    if _bwrap_works():
        return "bwrap"
    if choice == "bwrap":
        raise RuntimeError(
            f"isolation was requested (sandbox='bwrap' or {SANDBOX_ENV}=bwrap) but bubblewrap is not on PATH or "
            "cannot create namespaces here, so no program is run; install the Debian package `bubblewrap` "
            "(apt-get install bubblewrap), or accept the weaker rlimits mode explicitly with sandbox='rlimits'"
        )
    if not _warned:
        _warned = True
        warnings.warn(
            "bubblewrap (bwrap) is not available, so programs run in rlimits mode, WITHOUT: "
            + "; ".join(RLIMITS_MISSING)
            + ". Install the Debian package `bubblewrap` for the full sandbox, or set DREAMPRM_SANDBOX=bwrap "
            "(or pass sandbox='bwrap') to refuse to run instead.",
            RuntimeWarning,
            stacklevel=3,
        )
    return "rlimits"




























# ---------------------------------------------------------------------------------------------------------------
# Comparison rules (parent side: expected outputs never enter the sandbox).
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


_STATUS_OF = {
    "timeout": "timeout",
    "memory": "memory_exceeded",
    "output_limit": "output_limit",
    "syntax": "syntax_error",
    "error": "runtime_error",
    "fail": "failed",
    "skipped": "skipped",
}
_PRIORITY = ("skipped", "syntax_error", "timeout", "memory_exceeded", "output_limit", "runtime_error", "failed")


def _verdict(suite: TestSuite, records: list[dict], done: bool, sizes_over: bool, wall: float, stderr: str) -> ExecutionResult:
    n = len(suite)
    per_test = [False] * n
    statuses: list[str] = []
    reason = ""
    for rec in records:
        i = rec.get("i")
        if not isinstance(i, int) or not 0 <= i < n:
            continue
        r = rec.get("r")
        ok = r == "ok"
        if ok and suite.kind == "stdio":
            ok = stdio_equal(rec.get("out", ""), suite.outputs[i])
            if not ok:
                r = "fail"
                reason = reason or f"test {i}: wrong output {_clip(rec.get('out', ''))}, expected {_clip(suite.outputs[i])}"
        elif ok and suite.kind == "call":
            ok = call_equal(rec.get("out", ""), suite.outputs[i])
            if not ok:
                r = "fail"
                reason = reason or f"test {i}: returned {_clip(rec.get('out', ''))}, expected {_clip(suite.outputs[i])}"
        per_test[i] = ok
        if not ok:
            statuses.append(_STATUS_OF.get(str(r), "runtime_error"))
            if rec.get("detail") and not reason:
                reason = f"test {i}: {rec['detail']}"
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
    return ExecutionResult(
        passed=passed,
        status=status,
        per_test=per_test,
        passed_tests=sum(per_test),
        total_tests=n,
        wall_time=round(wall, 4),
        stderr_tail=stderr,
        reason="" if passed else reason,
    )


# ---------------------------------------------------------------------------------------------------------------
def _run_one(code: str, suite: TestSuite, timeout: float, memory_mb: int, max_output_bytes: int, level: str) -> ExecutionResult:
    """One program's verdict. Anything that goes wrong on the host side (an OS error, a harness crash, a work
    directory that cannot be removed) becomes this program's ``runtime_error`` with the reason: a batch survives."""
    if not isinstance(code, str):
        raise TypeError(f"code must be a str of Python source, got {type(code).__name__}")
    if not isinstance(suite, TestSuite):
        raise TypeError(f"suite must be a TestSuite, got {type(suite).__name__}; build one with TestSuite.stdio/...")
    n = len(suite)
    if n == 0:
        return ExecutionResult(False, "skipped", [], 0, 0, 0.0, "", "the suite has no test cases")
    start = time.monotonic()
    base = None
    try:
        base = tempfile.mkdtemp(prefix="dreamprm-exec-", dir=_scratch_root())
        result = _sandboxed(code, suite, base, timeout, memory_mb, max_output_bytes, level)
    except Exception as e:  # noqa: BLE001 - one program's failure must not lose the batch
        result = _executor_error(suite, f"{type(e).__name__}: {e}", time.monotonic() - start)
    problem = _rmtree(base) if base else None
    if problem:
        result = _executor_error(suite, f"could not remove the work directory: {problem}", time.monotonic() - start)
    return result


def _executor_error(suite: TestSuite, why: str, wall: float) -> ExecutionResult:
    n = len(suite)
    return ExecutionResult(False, "runtime_error", [False] * n, 0, n, round(wall, 4), "", f"executor error: {why}"[:1000])


def _sandboxed(code: str, suite: TestSuite, base: str, timeout: float, memory_mb: int, max_output_bytes: int, level: str) -> ExecutionResult:
    start = time.monotonic()
    n = len(suite)
    work = os.path.join(base, "work")  # rlimits only: under bubblewrap the work dir is in the private /tmp
    os.mkdir(work)
    inside = _INSIDE_WORK if level == "bwrap" else work
    uid = _sandbox_uid(level)
    address_mb, tmp_mb = _memory_split(memory_mb, level)
    marker = secrets.token_hex(16)
    nonce = secrets.token_hex(16)
    inner = suite.to_dict()
    inner.pop("outputs")  # expected outputs stay in the parent
    payload = {
        "code": code,
        "suite": inner,
        "n_tests": n,
        "timeout": float(timeout),
        "address_space_mb": int(address_mb),
        "max_output_bytes": int(max_output_bytes),
        "sys_path": _site_paths(),
        "pidns": level == "bwrap",
        "uid": uid,
        "max_procs": DEFAULT_MAX_PROCESSES,
    }
    out_path, err_path, report_path = (os.path.join(base, name) for name in ("stdout", "stderr", "report"))
    nonce_r, nonce_w = os.pipe()
    proc = None
    done = clean = False
    records: list[dict] = []
    try:
        with open(os.path.join(base, "payload"), "w+b") as payload_f:
            marshal.dump(payload, payload_f)
            payload_f.seek(0)
            os.write(nonce_w, nonce.encode())
            os.close(nonce_w)
            nonce_w = -1
            with open(out_path, "wb") as out_f, open(err_path, "wb") as err_f, open(report_path, "wb") as rep_f:
                harness = _INSIDE_HARNESS if level == "bwrap" else _harness_dir()
                argv = _harness_argv(harness) + [str(rep_f.fileno()), str(nonce_r)]
                if level == "bwrap":
                    argv = _bwrap_command(_bwrap_works() or "bwrap", uid, tmp_mb) + argv
                proc = subprocess.Popen(
                    argv,
                    stdin=payload_f,
                    stdout=out_f,
                    stderr=err_f,
                    pass_fds=(rep_f.fileno(), nonce_r),
                    cwd=work,
                    env=_sandbox_env(inside, marker),
                    start_new_session=True,
                    close_fds=True,
                )
                os.close(nonce_r)
                nonce_r = -1
                _wait_exit(proc, timeout * n + STARTUP_GRACE_S)
        running = proc.poll() is None
        with open(report_path, "rb") as f:
            for line in f.read(64 * 1024 * 1024 + max_output_bytes * 2).splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and rec.pop("nonce", None) == nonce:
                    if rec.get("done"):
                        done, clean = True, rec.get("clean") is True
                    else:
                        records.append(rec)
        if running or not clean:
            # A complete report means the supervisor killed every descendant before writing it (and under bwrap
            # the PID namespace is gone with it); otherwise hunt the tree and the environment marker down.
            _kill_tree(proc.pid if running else None, marker)
        proc.wait()
        sizes_over = any(os.path.getsize(p) >= max_output_bytes for p in (out_path, err_path))
        stderr = _tail(err_path)
    finally:
        for fd in (nonce_r, nonce_w):
            if fd >= 0:
                os.close(fd)
        if proc is not None and proc.poll() is None:
            _kill_tree(proc.pid, marker)
            proc.wait()
    return _verdict(suite, records, done, sizes_over, time.monotonic() - start, stderr)




class SandboxedExecutor:
    """Runs candidate programs against a :class:`TestSuite` in the sandbox; holds the options in one place.

    Args:
        timeout: wall-clock seconds per test case (CPU time is capped alike).
        memory_mb: memory budget of a program: the address-space limit of each of its processes; under bubblewrap
            ``1/TMP_SHARE`` of it caps the private ``/tmp`` (RAM) and the address space gets the rest.
        workers: parallel programs in :meth:`run_many` (default: all cores).
        allow_code_execution: opt in to running model-written code (or set ``HF_ALLOW_CODE_EVAL=1``).
        progress: show a tqdm bar in :meth:`run_many`.
        max_output_bytes: cap on stdout (all tests) and on each file the program writes.
        sandbox: ``"auto"`` (bwrap when available), ``"bwrap"`` or ``"rlimits"``; default from ``$DREAMPRM_SANDBOX``.
    """

    def __init__(
        self,
        timeout: float = DEFAULT_TIMEOUT,
        memory_mb: int = DEFAULT_MEMORY_MB,
        workers: int | None = None,
        allow_code_execution: bool = False,
        progress: bool = True,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
        sandbox: str | None = None,
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout={timeout!r}: must be a positive number of seconds")
        if int(memory_mb) < 64:
            raise ValueError(f"memory_mb={memory_mb!r}: the interpreter alone needs about 64 MiB; pass >= 64")
        if workers is not None and int(workers) < 1:
            raise ValueError(f"workers={workers!r}: pass a positive int or None for all cores")
        self.timeout = float(timeout)
        self.memory_mb = int(memory_mb)
        self.workers = workers
        self.allow_code_execution = allow_code_execution
        self.progress = progress
        self.max_output_bytes = int(max_output_bytes)
        self.sandbox = sandbox

    def isolation(self) -> str:
        return isolation(self.sandbox)

    def config(self) -> dict:
        """Everything that can change a verdict (for cache keys); not workers or progress."""
        return {
            "timeout": self.timeout,
            "memory_mb": self.memory_mb,
            "max_output_bytes": self.max_output_bytes,
            "isolation": self.isolation(),
            "harness_version": HARNESS_VERSION,
        }

    def run(self, code: str, suite: TestSuite) -> ExecutionResult:
        _check_opt_in(self.allow_code_execution)
        return _run_one(code, suite, self.timeout, self.memory_mb, self.max_output_bytes, self.isolation())

    def run_many(self, pairs: Iterable[tuple[str, TestSuite]]) -> list[ExecutionResult]:
        """Run ``(code, suite)`` pairs in parallel; results keep the input order."""
        _check_opt_in(self.allow_code_execution)
        pairs = list(pairs)
        level = self.isolation()
        workers = max(1, min(len(pairs) or 1, self.workers or os.cpu_count() or 1))
        results: list[ExecutionResult | None] = [None] * len(pairs)

        def job(i: int) -> None:
            code, suite = pairs[i]
            results[i] = _run_one(code, suite, self.timeout, self.memory_mb, self.max_output_bytes, level)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(job, i) for i in range(len(pairs))]
            bar = tqdm(total=len(pairs), desc="executing", unit="prog", disable=not self.progress, leave=False)
            try:
                for future in as_completed(futures):
                    future.result()
                    bar.update(1)
            finally:
                bar.close()
        return results  # type: ignore[return-value]

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"SandboxedExecutor({opts})"


def execute(
    code: str,
    suite: TestSuite,
    timeout: float = DEFAULT_TIMEOUT,
    memory_mb: int = DEFAULT_MEMORY_MB,
    allow_code_execution: bool = False,
    **options: Any,
) -> ExecutionResult:
    """Run one program against ``suite`` in the sandbox. See :class:`SandboxedExecutor` for the options."""
    executor = SandboxedExecutor(timeout, memory_mb, allow_code_execution=allow_code_execution, progress=False, **options)
    return executor.run(code, suite)


def execute_many(
    pairs: Iterable[tuple[str, TestSuite]],
    workers: int | None = None,
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    memory_mb: int = DEFAULT_MEMORY_MB,
    allow_code_execution: bool = False,
    **options: Any,
) -> list[ExecutionResult]:
    """Run many ``(code, suite)`` pairs on all cores (default); results keep the input order."""
    executor = SandboxedExecutor(timeout, memory_mb, workers, allow_code_execution, progress, **options)
    return executor.run_many(pairs)
