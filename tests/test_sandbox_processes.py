"""Host-side plumbing of the sandbox: killing what a program left running (``sandbox.processes``, psutil) and the
staged in-sandbox harness (``sandbox.staging``, standard library only)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil

from dreamprm_trl.sandbox import confinement, processes, staging
from dreamprm_trl.sandbox.limits import MARKER_ENV

# A parent with one child, and a grandchild that leaves the tree (setsid, its parent exits): only the environment
# marker finds it.
TREE = """
import os, subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(60)
    os._exit(0)
print("ready", flush=True)
time.sleep(60)
"""


def _with_marker(marker: str) -> list[int]:
    found = []
    for proc in psutil.process_iter(["environ", "status"], ad_value=None):
        if (proc.info["environ"] or {}).get(MARKER_ENV) == marker and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc.pid)
    return found


def test_kill_tree_kills_descendants_and_marked_orphans():
    marker = uuid.uuid4().hex
    env = {**os.environ, MARKER_ENV: marker}
    root = subprocess.Popen([sys.executable, "-c", TREE], env=env, stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert root.stdout.readline() == b"ready\n"
        deadline = time.monotonic() + 10
        while len(_with_marker(marker)) < 3 and time.monotonic() < deadline:  # root, child, orphaned grandchild
            time.sleep(0.02)
        assert len(_with_marker(marker)) == 3
        assert processes.kill_tree(root.pid, marker) == 3
        root.wait(timeout=10)
        time.sleep(0.1)
        assert _with_marker(marker) == []
        assert processes.kill_tree(None, marker) == 0  # nothing left to find
    finally:
        if root.poll() is None:
            root.kill()
            root.wait()


def test_harness_is_standard_library_only_and_relative():
    optional = {"numpy"}  # imported under `except ImportError`, only to hand a program's arrays back as arrays
    for path in staging.HARNESS_FILES:
        for node in ast.walk(ast.parse(Path(path).read_text())):
            if isinstance(node, ast.Import):
                outside = [a.name for a in node.names if a.name.split(".")[0] not in sys.stdlib_module_names]
            elif isinstance(node, ast.ImportFrom):
                outside = [] if node.level == 1 or node.module.split(".")[0] in sys.stdlib_module_names else [node.module]
            else:
                continue
            assert set(outside) <= optional, f"{path}: imports {outside}"
    assert sorted(Path(p).name for p in staging.HARNESS_FILES) == [
        "__init__.py", "main.py", "procs.py", "proxy.py", "remote.py", "supervise.py", "tester.py", "wire.py"]


def test_staged_harness_imports_in_isolated_python_and_under_bwrap():
    folder = staging.harness_dir()
    package = Path(folder) / staging.PACKAGE
    assert sorted(p.name for p in package.glob("*.py")) == sorted(Path(p).name for p in staging.HARNESS_FILES)
    assert len(list((package / "__pycache__").glob("*.pyc"))) == len(staging.HARNESS_FILES)  # compiled once
    run = subprocess.run([sys.executable, "-I", "-S", "-c", staging.probe_code(folder) + "; print('ok')"],
                         capture_output=True, text=True, cwd="/", env={})
    assert (run.returncode, run.stdout) == (0, "ok\n"), run.stderr
    if confinement.bwrap_works():
        argv = confinement.bwrap_command(confinement.bwrap_works()) + [sys.executable, "-I", "-S", "-c",
                                                                        staging.probe_code() + "; print('ok')"]
        run = subprocess.run(argv, capture_output=True, text=True)
        assert (run.returncode, run.stdout) == (0, "ok\n"), run.stderr
