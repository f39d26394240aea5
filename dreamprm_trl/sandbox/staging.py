"""The harness folder the sandbox runs: ``harness/`` staged as the package ``_sandbox_harness``, compiled once.

The folder is copied (not used in place) so that bubblewrap can mount it read-only without the rest of the
package, and so that its bytecode is compiled once, not in every sandbox (that would cost milliseconds per
program). Under bubblewrap it is mounted at :data:`INSIDE_HARNESS`; in rlimits mode it is used where it lies.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

PACKAGE = "_sandbox_harness"  # the harness's package name inside the sandbox
INSIDE_HARNESS = "/run/dreamprm"  # where the staged folder is mounted inside bubblewrap
HARNESS_FILES = tuple(sorted(str(p) for p in (Path(__file__).parent / "harness").glob("*.py")))

_state: dict[str, str] = {}
_lock = threading.Lock()


def harness_dir() -> str:
    """The staged folder (it holds :data:`PACKAGE`). One folder per harness version and uid, shared by processes
    and never left behind by a killed one; used only when it is ours and writable by nobody else, else rebuilt
    privately."""
    with _lock:
        if "dir" not in _state:
            import hashlib

            digest = hashlib.sha256(sys.version.encode())
            for path in HARNESS_FILES:
                digest.update(Path(path).read_bytes())
            shared = os.path.join(tempfile.gettempdir(), f"dreamprm-harness-{os.getuid()}-{digest.hexdigest()[:16]}")
            if not _ours(shared):
                folder = _build()
                try:
                    os.rename(folder, shared)
                except OSError:  # another process made it first (or the name is taken)
                    shutil.rmtree(folder, ignore_errors=True)
            if not _ours(shared):
                import atexit

                shared = _build()
                atexit.register(shutil.rmtree, shared, True)
            _state["dir"] = shared
        return _state["dir"]


def _build() -> str:
    import py_compile

    folder = tempfile.mkdtemp(prefix="dreamprm-harness-tmp-")
    package = os.path.join(folder, PACKAGE)
    os.mkdir(package)
    for path in HARNESS_FILES:
        py_compile.compile(shutil.copy2(path, package), doraise=True)
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
        return all(os.path.isfile(os.path.join(folder, PACKAGE, os.path.basename(p))) for p in HARNESS_FILES)
    except OSError:
        return False


def harness_argv(folder: str) -> list[str]:
    """Run the harness from ``folder`` as a package (so its bytecode is used), then forget the folder: the
    harness's own modules import one another relatively, through the package, not through ``sys.path``."""
    start = f"import sys; sys.path.insert(0, {folder!r}); import {PACKAGE}.main as h; del sys.path[0]; h.main()"
    return [sys.executable, "-I", "-S", "-c", start]


def probe_code(folder: str = INSIDE_HARNESS) -> str:
    """A one-liner that imports the harness from ``folder``: a sandbox where it fails would fail every program."""
    return f"import sys; sys.path.insert(0, {folder!r}); import {PACKAGE}.main, {PACKAGE}.proxy, {PACKAGE}.tester"
