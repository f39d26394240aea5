"""How a program is confined: the isolation level (``bwrap`` or ``rlimits``), the bubblewrap command and what it
mounts, and the program's environment, uid and memory split. Host side.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

from . import staging
from .limits import MARKER_ENV, RLIMITS_MISSING, SANDBOX_ENV, TMP_SHARE

INSIDE_WORK = "/tmp/work"  # the work dir's path inside bubblewrap
_ENV_ALLOWLIST = ("LANG", "LC_ALL", "LC_CTYPE", "TZ")
_UID_BASE, _UID_SPAN = 1_500_000_000, 500_000_000  # throw-away uids for programs (root under bwrap only)
_BWRAP_BASE = (
    "--dev", "/dev",
    "--proc", "/proc",
    "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
    "--hostname", "sandbox",
    "--die-with-parent", "--new-session",
)  # fmt: skip

_bwrap_lock = threading.Lock()
_bwrap_state: dict[str, Any] = {}
_site_cache: dict[tuple, list[str]] = {}
_warned = False


def isolation(sandbox: str | None = None) -> str:
    """The isolation level programs run under: ``"bwrap"`` or ``"rlimits"``.

    ``sandbox`` (or the ``DREAMPRM_SANDBOX`` environment variable) may force ``"rlimits"``, or demand ``"bwrap"``:
    then nothing runs without it (a ``RuntimeError``, never a silent downgrade). The default ``"auto"`` uses
    bubblewrap when it is on PATH and works, else warns once, naming what rlimits mode lacks (``RLIMITS_MISSING``).
    """
    global _warned
    choice = (sandbox or os.environ.get(SANDBOX_ENV) or "auto").lower()
    if choice not in ("auto", "bwrap", "rlimits"):
        raise ValueError(f"sandbox={choice!r}: expected 'auto', 'bwrap' or 'rlimits' (also via ${SANDBOX_ENV})")
    if choice == "rlimits":
        return "rlimits"
    if bwrap_works():
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
            + f". Install the Debian package `bubblewrap` for the full sandbox, or set {SANDBOX_ENV}=bwrap "
            "(or pass sandbox='bwrap') to refuse to run instead.",
            RuntimeWarning,
            stacklevel=3,
        )
    return "rlimits"


def bwrap_works() -> str | None:
    """Path of a working ``bwrap`` (tried once per process), else None.

    The probe runs this Python inside the sandbox and checks that it sees the harness, so a sandbox that would
    fail every program (and turn every verdict into a false failure) is never used."""
    with _bwrap_lock:
        if "path" not in _bwrap_state:
            path = shutil.which("bwrap")
            if path:
                try:
                    probe = subprocess.run(
                        [*bwrap_command(path), sys.executable, "-I", "-S", "-c", staging.probe_code()],
                        capture_output=True, timeout=20, check=False,
                    )
                    if probe.returncode != 0:
                        path = None
                except (OSError, subprocess.SubprocessError):
                    path = None
            _bwrap_state["path"] = path
        return _bwrap_state["path"]


def site_paths() -> list[str]:
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


def sandbox_env(work: str, marker: str) -> dict[str, str]:
    """The program's whole environment: a few locale variables, its work dir as HOME and TMPDIR, the marker."""
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
    env[MARKER_ENV] = marker
    return env


def sandbox_uid(level: str) -> int | None:
    """A fresh unprivileged uid for the program when we run as root under bubblewrap (root is exempt from
    RLIMIT_NPROC, so only a uid of its own bounds a fork bomb); None otherwise."""
    if level == "bwrap" and os.geteuid() == 0:
        return _UID_BASE + secrets.randbelow(_UID_SPAN)
    return None


def memory_split(memory_mb: int, level: str) -> tuple[int, int]:
    """``(address space MiB per process, private /tmp MiB)``: under bubblewrap the /tmp cap comes out of
    ``memory_mb``, so that files the program writes count against the same budget."""
    tmp_mb = memory_mb // TMP_SHARE if level == "bwrap" else 0
    return memory_mb - tmp_mb, tmp_mb


def _python_paths() -> list[str]:
    """What the program may see of the host: the Python installation and its import path, nothing else."""
    keep = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable)))}
    keep |= {os.path.realpath(p) for p in site_paths()}
    roots = sorted(p for p in keep if os.path.exists(p))
    return [p for i, p in enumerate(roots) if not any(p.startswith(q + os.sep) for q in roots[:i])]


def _python_mounts() -> list[str]:
    """Read-only binds of the Python installation outside ``/usr``, with traversable parents (bwrap would make
    them 0700)."""
    cmd: list[str] = []
    made: set[str] = set()
    for path in _python_paths():
        if path == "/usr" or path.startswith("/usr/"):
            continue
        parts = Path(path).parts
        for k in range(2, len(parts)):
            parent = os.path.join(*parts[:k])
            if parent not in made and parent != "/tmp":
                made.add(parent)
                cmd += ["--perms", "0755", "--dir", parent]
        cmd += ["--ro-bind", path, path]
    return cmd


def bwrap_command(bwrap: str, uid: int | None = None, tmp_mb: int = 64) -> list[str]:
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
            "--perms", "1777", "--dir", INSIDE_WORK]
    cmd += _python_mounts()
    cmd += ["--ro-bind", staging.harness_dir(), staging.INSIDE_HARNESS]
    return cmd + ["--chdir", INSIDE_WORK, "--"]
