"""Host side of the sandbox: the bubblewrap command and what it mounts, the harness folder, the program's
environment and uid, killing process trees and removing work directories. Used by :mod:`dreamprm_trl.execution`.
"""

from __future__ import annotations

import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

TMP_SHARE = 8  # under bubblewrap, 1/TMP_SHARE of memory_mb is the size cap of the private /tmp (tmpfs = RAM)
STDERR_TAIL_CHARS = 2000


_ENV_ALLOWLIST = ("LANG", "LC_ALL", "LC_CTYPE", "TZ")


_MARKER = "DREAMPRM_SANDBOX_ID"


_INSIDE_WORK = "/tmp/work"  # the work dir's path inside bubblewrap


_UID_BASE, _UID_SPAN = 1_500_000_000, 500_000_000  # throw-away uids for programs (root under bwrap only)


_HARNESS = str(Path(__file__).with_name("_sandbox_harness.py"))


_HARNESS_FILES = tuple(str(Path(__file__).with_name(f"_sandbox_{m}.py")) for m in ("harness", "proxy", "tests", "wire"))


_INSIDE_HARNESS = "/run/dreamprm"  # where the harness folder is mounted inside bubblewrap


_harness_state: dict[str, str] = {}


_harness_lock = threading.Lock()


def _harness_dir() -> str:
    """The folder holding the harness files and their bytecode (compiled once, not in every sandbox: that would
    cost milliseconds per program). One folder per harness version and uid, shared by processes and never left
    behind by a killed one; used only when it is ours and writable by nobody else, else rebuilt privately."""
    with _harness_lock:
        if "dir" not in _harness_state:
            import hashlib

            digest = hashlib.sha256(sys.version.encode())
            for path in _HARNESS_FILES:
                digest.update(Path(path).read_bytes())
            shared = os.path.join(tempfile.gettempdir(), f"dreamprm-harness-{os.getuid()}-{digest.hexdigest()[:16]}")
            if not _ours(shared):
                folder = _build_harness_dir()
                try:
                    os.rename(folder, shared)
                except OSError:  # another process made it first (or the name is taken)
                    shutil.rmtree(folder, ignore_errors=True)
            if not _ours(shared):
                import atexit

                shared = _build_harness_dir()
                atexit.register(shutil.rmtree, shared, True)
            _harness_state["dir"] = shared
        return _harness_state["dir"]


def _build_harness_dir() -> str:
    import py_compile

    folder = tempfile.mkdtemp(prefix="dreamprm-harness-tmp-")
    for path in _HARNESS_FILES:
        py_compile.compile(shutil.copy2(path, folder), doraise=True)
    for root, _dirs, files in os.walk(folder):
        os.chmod(root, 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)
    return folder


def _ours(folder: str) -> bool:
    """``folder`` and everything in it belong to us, are not symlinks and are writable by no one else."""
    try:
        entries = [folder] + [os.path.join(r, n) for r, ds, fs in os.walk(folder) for n in ds + fs]
        for entry in entries:
            st = os.lstat(entry)
            if st.st_uid != os.getuid() or st.st_mode & 0o022 or os.path.islink(entry):
                return False
        return all(os.path.isfile(os.path.join(folder, os.path.basename(p))) for p in _HARNESS_FILES)
    except OSError:
        return False


def _harness_argv(folder: str) -> list[str]:
    """Run the harness from ``folder`` as a module (so its bytecode is used), then forget the folder."""
    start = f"import sys; sys.path.insert(0, {folder!r}); import _sandbox_harness as h; del sys.path[0]; h.main()"
    return [sys.executable, "-I", "-S", "-c", start]


_bwrap_lock = threading.Lock()


_bwrap_state: dict[str, Any] = {}


def _bwrap_works() -> str | None:
    """Path of a working ``bwrap`` (tried once per process), else None.

    The probe runs this Python inside the sandbox and checks that it sees the harness, so a sandbox that would
    fail every program (and turn every verdict into a false failure) is never used."""
    with _bwrap_lock:
        if "path" not in _bwrap_state:
            path = shutil.which("bwrap")
            if path:
                check = f"import sys; sys.path.insert(0, {_INSIDE_HARNESS!r}); import _sandbox_harness, _sandbox_proxy"
                try:
                    probe = subprocess.run(
                        [*_bwrap_command(path), sys.executable, "-I", "-S", "-c", check],
                        capture_output=True, timeout=20, check=False,
                    )
                    if probe.returncode != 0:
                        path = None
                except (OSError, subprocess.SubprocessError):
                    path = None
            _bwrap_state["path"] = path
        return _bwrap_state["path"]


_BWRAP_BASE = (
    "--dev", "/dev",
    "--proc", "/proc",
    "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
    "--hostname", "sandbox",
    "--die-with-parent", "--new-session",
)  # fmt: skip


_site_cache: dict[tuple, list[str]] = {}


def _site_paths() -> list[str]:
    """The caller's import path for ``python -I -S``: the standard library and site-packages folders only (no
    current directory, no repository or source checkout on ``PYTHONPATH``)."""
    key = (tuple(sys.path), os.getcwd())
    if key not in _site_cache:
        prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix)}
        _site_cache.clear()
        _site_cache[key] = [
            p for p in sys.path
            if p and os.path.isdir(p) and (
                os.path.basename(os.path.normpath(p)) in ("site-packages", "dist-packages")
                or any(os.path.realpath(p).startswith(q + os.sep) for q in prefixes)
            )
        ]
    return _site_cache[key]


def _sandbox_env(work: str, marker: str) -> dict[str, str]:
    env = {k: os.environ[k] for k in _ENV_ALLOWLIST if k in os.environ}
    env.update(
        PATH="/usr/local/bin:/usr/bin:/bin",
        HOME=work,
        TMPDIR=work,
        PYTHONIOENCODING="utf-8",
        PYTHONHASHSEED="0",
        PYTHONDONTWRITEBYTECODE="1",
        LANG=env.get("LANG", "C.UTF-8"),
        OMP_NUM_THREADS="1",  # BLAS thread pools reserve address space per core and would trip RLIMIT_AS
        OPENBLAS_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    env[_MARKER] = marker
    return env


def _sandbox_uid(level: str) -> int | None:
    """A fresh unprivileged uid for the program when we run as root under bubblewrap (root is exempt from
    RLIMIT_NPROC, so only a uid of its own bounds a fork bomb); None otherwise."""
    if level == "bwrap" and os.geteuid() == 0:
        return _UID_BASE + secrets.randbelow(_UID_SPAN)
    return None


def _memory_split(memory_mb: int, level: str) -> tuple[int, int]:
    """``(address space MiB per process, private /tmp MiB)``: under bubblewrap the /tmp cap comes out of
    ``memory_mb``, so that files the program writes count against the same budget."""
    tmp_mb = memory_mb // TMP_SHARE if level == "bwrap" else 0
    return memory_mb - tmp_mb, tmp_mb


def _python_paths() -> list[str]:
    """What the program may see of the host: the Python installation and its import path, nothing else."""
    keep = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable)))}
    keep |= {os.path.realpath(p) for p in _site_paths()}
    roots = sorted(p for p in keep if os.path.exists(p))
    return [p for i, p in enumerate(roots) if not any(p.startswith(q + os.sep) for q in roots[:i])]


def _bwrap_command(bwrap: str, uid: int | None = None, tmp_mb: int = 64) -> list[str]:
    """bubblewrap: an empty root with only the system libraries (``/usr``) and the Python installation mounted
    read-only, the harness files, a private ``/tmp`` of ``tmp_mb`` MiB holding the work directory, no network,
    own PID/IPC/UTS namespaces. No repository, test data or home directory is visible."""
    cmd = [bwrap, *_BWRAP_BASE]
    if uid is not None:  # the supervisor keeps only these: to drop its children to throw-away uids, then kill them
        cmd += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_KILL"]
    cmd += ["--ro-bind", "/usr", "/usr", "--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    for name in ("bin", "lib", "lib32", "lib64", "sbin"):
        path = "/" + name
        if os.path.islink(path):
            cmd += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            cmd += ["--ro-bind", path, path]
    cmd += ["--size", str(tmp_mb * 1024 * 1024), "--perms", "1777", "--tmpfs", "/tmp",
            "--perms", "1777", "--dir", _INSIDE_WORK]
    made: set[str] = set()
    for path in _python_paths():
        if path == "/usr" or path.startswith("/usr/"):
            continue
        parts = Path(path).parts
        for k in range(2, len(parts)):  # traversable parents (bwrap would make them 0700)
            parent = os.path.join(*parts[:k])
            if parent not in made and parent != "/tmp":
                made.add(parent)
                cmd += ["--perms", "0755", "--dir", parent]
        cmd += ["--ro-bind", path, path]
    cmd += ["--ro-bind", _harness_dir(), _INSIDE_HARNESS]
    return cmd + ["--chdir", _INSIDE_WORK, "--"]


def _scratch_root() -> str | None:
    """Work dirs go to ``/dev/shm`` (tmpfs: creating and removing them is ~10x faster) unless TMPDIR is set."""
    if not os.environ.get("TMPDIR") and os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK):
        return "/dev/shm"
    return None


def _proc_table() -> dict[int, int]:
    """pid -> ppid of every live (non-zombie) process."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                if fields[0] != b"Z":
                    table[int(name)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                pass
    return table


def _marked(marker: str, pids) -> set[int]:
    needle = f"{_MARKER}={marker}".encode()
    found = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read():
                    found.add(pid)
        except OSError:
            pass
    return found


def _kill_tree(root: int | None, marker: str, rounds: int = 50) -> int:
    """SIGKILL ``root``, its descendants and every process carrying ``marker`` in its environment.

    Processes are stopped first so that none can fork while the tree is collected. Returns how many were killed.
    """
    killed: set[int] = set()
    for _ in range(rounds):
        table = _proc_table()
        targets = _marked(marker, table) | ({root} if root in table else set())
        children: dict[int, list[int]] = {}
        for pid, ppid in table.items():
            children.setdefault(ppid, []).append(pid)
        stack = list(targets)
        while stack:
            for child in children.get(stack.pop(), ()):
                if child not in targets:
                    targets.add(child)
                    stack.append(child)
        targets.discard(os.getpid())
        if not targets:
            break
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in targets:
                try:
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
        killed |= targets
        time.sleep(0.002)
    return len(killed)


def _wait_exit(proc: subprocess.Popen, seconds: float) -> None:
    """Block until ``proc`` exits or ``seconds`` pass, without Popen.wait's sleep-polling."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        try:
            proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            pass
        return
    try:
        select.select([pidfd], [], [], seconds)
    finally:
        os.close(pidfd)


def _tail(path: str, chars: int = STDERR_TAIL_CHARS) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 4 * chars))
            return f.read().decode("utf-8", "replace")[-chars:]
    except OSError:
        return ""


def _rmtree(path: str) -> str | None:
    """Remove ``path`` whatever the program left there (deep trees, read-only or unsearchable folders), without
    recursion limits: ``chmod -R`` and ``rm -rf`` walk iteratively. Returns None, or why it could not."""
    if not os.path.lexists(path):
        return None
    try:
        shutil.rmtree(path)
        return None
    except (OSError, RecursionError):
        pass
    for argv in (["chmod", "-R", "u+rwx", "--", path], ["rm", "-rf", "--", path]):
        try:
            subprocess.run(argv, capture_output=True, timeout=120, check=False)
        except (OSError, subprocess.SubprocessError) as e:
            return f"{argv[0]}: {e}"
    return f"{path} is still there" if os.path.lexists(path) else None
