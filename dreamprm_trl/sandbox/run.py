"""One program's run on the host: its work directory, the payload, launching the harness (under bubblewrap or
rlimits only), reading back its report, cleaning up, and the verdict. Anything that goes wrong on the host side
becomes this program's ``runtime_error`` (:func:`.verdict.executor_error`): a batch survives.
"""

from __future__ import annotations

import json
import marshal
import os
import secrets
import subprocess
import tempfile
import time

from . import confinement, processes, staging, workdir
from .limits import DEFAULT_MAX_PROCESSES, MAX_REPORT_BYTES, STARTUP_GRACE_S
from .suite import TestSuite
from .verdict import ExecutionResult, executor_error, verdict


def run_one(code: str, suite: TestSuite, timeout: float, memory_mb: int, max_output_bytes: int, level: str) -> ExecutionResult:
    """One program's verdict. Anything that goes wrong on the host side (an OS error, a harness crash, a work
    directory that cannot be removed) becomes this program's ``runtime_error`` with the reason: a batch survives."""
    if not isinstance(code, str):
        raise TypeError(f"code must be a str of Python source, got {type(code).__name__}")
    if not isinstance(suite, TestSuite):
        raise TypeError(f"suite must be a TestSuite, got {type(suite).__name__}; build one with TestSuite.stdio/...")
    if len(suite) == 0:
        return ExecutionResult(False, "skipped", [], 0, 0, 0.0, "", "the suite has no test cases")
    start = time.monotonic()
    base = None
    try:
        base = tempfile.mkdtemp(prefix="dreamprm-exec-", dir=workdir.scratch_root())
        result = _sandboxed(code, suite, base, timeout, memory_mb, max_output_bytes, level)
    except Exception as e:  # noqa: BLE001 - one program's failure must not lose the batch
        result = executor_error(suite, f"{type(e).__name__}: {e}", time.monotonic() - start)
    problem = workdir.rmtree(base) if base else None
    if problem:
        result = executor_error(suite, f"could not remove the work directory: {problem}", time.monotonic() - start)
    return result


def _payload(code: str, suite: TestSuite, timeout: float, address_mb: int, max_output_bytes: int, level: str,
             uid: int | None) -> dict:
    """What the harness reads on stdin: the program, the suite without its expected outputs, the limits."""
    inner = suite.to_dict()
    inner.pop("outputs")  # expected outputs stay in the parent
    return {
        "code": code,
        "suite": inner,
        "n_tests": len(suite),
        "timeout": float(timeout),
        "address_space_mb": int(address_mb),
        "max_output_bytes": int(max_output_bytes),
        "sys_path": confinement.site_paths(),
        "pidns": level == "bwrap",
        "uid": uid,
        "max_procs": DEFAULT_MAX_PROCESSES,
    }


def _command(level: str, uid: int | None, tmp_mb: int) -> list[str]:
    """The harness's argv (without its two fd arguments), inside bubblewrap when ``level`` is ``"bwrap"``."""
    if level != "bwrap":
        return staging.harness_argv(staging.harness_dir())
    bwrap = confinement.bwrap_command(confinement.bwrap_works() or "bwrap", uid, tmp_mb)
    return bwrap + staging.harness_argv(staging.INSIDE_HARNESS)


def _launch(argv: list[str], env: dict, cwd: str, payload: dict, nonce: str, paths: dict[str, str]) -> subprocess.Popen:
    """Start the harness in a new session: the payload on stdin, the nonce on a pipe it reads only at the end,
    stdout, stderr and the report into files (the report fd is passed as an argument)."""
    nonce_r, nonce_w = os.pipe()
    try:
        with open(paths["payload"], "w+b") as payload_f:
            marshal.dump(payload, payload_f)
            payload_f.seek(0)
            os.write(nonce_w, nonce.encode())
            os.close(nonce_w)
            nonce_w = -1
            with open(paths["stdout"], "wb") as out_f, open(paths["stderr"], "wb") as err_f, \
                    open(paths["report"], "wb") as rep_f:
                return subprocess.Popen(
                    argv + [str(rep_f.fileno()), str(nonce_r)],
                    stdin=payload_f,
                    stdout=out_f,
                    stderr=err_f,
                    pass_fds=(rep_f.fileno(), nonce_r),
                    cwd=cwd,
                    env=env,
                    start_new_session=True,
                    close_fds=True,
                )
    finally:
        for fd in (nonce_r, nonce_w):
            if fd >= 0:
                os.close(fd)


def _read_report(path: str, nonce: str, max_output_bytes: int) -> tuple[list[dict], bool, bool]:
    """``(records, done, clean)`` from the report: only lines carrying this run's nonce count."""
    records: list[dict] = []
    done = clean = False
    with open(path, "rb") as f:
        for line in f.read(MAX_REPORT_BYTES + max_output_bytes * 2).splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.pop("nonce", None) == nonce:
                if rec.get("done"):
                    done, clean = True, rec.get("clean") is True
                else:
                    records.append(rec)
    return records, done, clean


def _sandboxed(code: str, suite: TestSuite, base: str, timeout: float, memory_mb: int, max_output_bytes: int,
               level: str) -> ExecutionResult:
    start = time.monotonic()
    work = os.path.join(base, "work")  # rlimits only: under bubblewrap the work dir is in the private /tmp
    os.mkdir(work)
    uid = confinement.sandbox_uid(level)
    address_mb, tmp_mb = confinement.memory_split(memory_mb, level)
    marker, nonce = secrets.token_hex(16), secrets.token_hex(16)
    payload = _payload(code, suite, timeout, address_mb, max_output_bytes, level, uid)
    paths = {name: os.path.join(base, name) for name in ("payload", "stdout", "stderr", "report")}
    proc = None
    try:
        env = confinement.sandbox_env(confinement.INSIDE_WORK if level == "bwrap" else work, marker)
        proc = _launch(_command(level, uid, tmp_mb), env, work, payload, nonce, paths)
        processes.wait_exit(proc, timeout * len(suite) + STARTUP_GRACE_S)
        running = proc.poll() is None
        records, done, clean = _read_report(paths["report"], nonce, max_output_bytes)
        if running or not clean:
            # A complete report means the supervisor killed every descendant before writing it (and under bwrap
            # the PID namespace is gone with it); otherwise hunt the tree and the environment marker down.
            processes.kill_tree(proc.pid if running else None, marker)
        proc.wait()
        sizes_over = any(os.path.getsize(paths[name]) >= max_output_bytes for name in ("stdout", "stderr"))
        stderr = workdir.tail(paths["stderr"])
    finally:
        if proc is not None and proc.poll() is None:
            processes.kill_tree(proc.pid, marker)
            proc.wait()
    return verdict(suite, records, done, sizes_over, time.monotonic() - start, stderr)
