"""Process control inside the sandbox: the limits of each runner, forking, waiting, killing and reaping. Standard
library only: the harness runs with nothing but the Python installation visible (the host kills trees with psutil).

The supervisor is a child subreaper (or pid 2 of bubblewrap's PID namespace), so every descendant, including
daemons that called ``setsid``, stays in its tree until :func:`kill_descendants` reaps it.
"""

import os
import resource
import select
import sys
import time

import _signal as signal  # `signal` imports enum, which costs more than a trivial test

MEMORY_EXIT = 3  # a runner's exit code after MemoryError
PIDNS = False  # set by main: the supervisor is pid 2 of bubblewrap's PID namespace
_LIBC = []


# ----------------------------------------------------------------------------------------------- runner side
def _limit(payload, n_tests):
    mem = int(payload["address_space_mb"]) * 1024 * 1024
    cpu = int(payload["timeout"] * max(1, n_tests)) + 2
    cap = int(payload["max_output_bytes"])
    for res, value in (
        (resource.RLIMIT_AS, mem),
        (resource.RLIMIT_DATA, mem),
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_FSIZE, cap),
        (resource.RLIMIT_CORE, 0),
    ):
        try:
            resource.setrlimit(res, (value, value))
        except (ValueError, OSError):
            pass


def _drop_privileges(payload, uid):
    """Become a throw-away uid: RLIMIT_NPROC then bounds fork bombs (root is exempt from it)."""
    try:
        resource.setrlimit(resource.RLIMIT_NPROC, (payload["max_procs"], payload["max_procs"]))
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    except OSError as e:
        os.write(2, f"sandbox: could not drop privileges: {e}\n".encode())
        os._exit(71)


def runner_setup(payload, keep_fds, n_tests, dumpable=True):
    """In a fresh fork: drop the supervisor's fds, restore signals, apply limits, become the throw-away uid. The
    test process shares the program's uid (the tests and the program share files in the work dir, as in the
    benchmarks' harnesses) but is not dumpable: the program can neither trace it nor open its /proc files."""
    for fd in payload["_close_fds"]:
        if fd not in keep_fds:
            try:
                os.close(fd)
            except OSError:
                pass
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _limit(payload, n_tests)
    uid = payload.get("uid")
    if uid is not None:
        _drop_privileges(payload, uid)
    if uid is not None or not PIDNS or not dumpable:
        try:
            prctl(4, int(dumpable))  # PR_SET_DUMPABLE: 1 for the program (/dev/stdin works), 0 for the tests
        except Exception:
            pass


def null_stdin():
    fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)


def exit_runner(code):
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


def fork(target, *args):
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        try:
            target(*args)
        finally:
            os._exit(70)
    return pid


# ----------------------------------------------------------------------------------------------- supervisor side
def prctl(option, value):
    if not _LIBC:
        import ctypes

        _LIBC.append((ctypes, ctypes.CDLL(None, use_errno=True)))
    ctypes, libc = _LIBC[0]
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl failed")


def _children():
    if PIDNS:  # inside bubblewrap's PID namespace everything but pid 1 (bwrap) and us is a descendant
        me = os.getpid()
        return {int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, me) and not _zombie(p)}
    pids = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                pids.update(int(p) for p in f.read().split())
        except OSError:
            pass
    return pids


def _zombie(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return True


def _reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def kill_descendants(deadline_s=3.0):
    """SIGKILL every descendant: orphans are re-parented to us (child subreaper), so loop until none is left."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        kids = _children()
        if not kids:
            _reap()
            return True
        for pid in kids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in kids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
    return not _children()


def kill_and_wait(pid):
    """SIGKILL a child of ours; returns its wait status."""
    os.kill(pid, signal.SIGKILL)
    return os.waitpid(pid, 0)[1]


def _drain(fd, on_data):
    """Read what is left in ``fd`` without blocking: a descendant holding its write end cannot stall us."""
    os.set_blocking(fd, False)
    try:
        while (data := os.read(fd, 1 << 16)) and on_data(data):
            pass
    except BlockingIOError:
        pass


def wait(pid, deadline, fd=None, on_data=None):
    """Wait for ``pid`` until ``deadline()``, feeding bytes read from ``fd`` to ``on_data`` (which returns False to
    stop). Returns the wait status, or None when the deadline passed first. Once the process has exited the pipe
    is drained without blocking."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    status = None
    try:
        while True:
            if status is None and pidfd is None:
                done, raw = os.waitpid(pid, os.WNOHANG)
                if done:
                    status = raw
            if status is not None:
                if fd is not None:
                    _drain(fd, on_data)
                return status
            left = deadline() - time.monotonic()
            if left <= 0:
                return None
            watch = [f for f in (pidfd, fd) if f is not None]
            ready, _, _ = select.select(watch, [], [], left if pidfd is not None else min(left, 0.02))
            if fd is not None and fd in ready:
                data = os.read(fd, 1 << 16)
                if not data:
                    fd = None
                elif not on_data(data):
                    return None
            if pidfd is not None and pidfd in ready:
                _, status = os.waitpid(pid, 0)
    finally:
        if pidfd is not None:
            os.close(pidfd)


def describe(status):
    if status is None:
        return "time limit exceeded"
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    code = os.WEXITSTATUS(status)
    return f"exit code {code}" if code else ""


def exit_kind(status):
    """The record kind of a runner's wait status (None: it ran out of time)."""
    if status is None:
        return "timeout"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU:
            return "timeout"
        if sig == signal.SIGXFSZ:
            return "output_limit"
        return "error"
    code = os.WEXITSTATUS(status)
    return {0: "ok", MEMORY_EXIT: "memory"}.get(code, "error")
