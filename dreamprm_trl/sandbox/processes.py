"""Host-side process control: waiting for a sandbox to exit, and killing what is left of it (with ``psutil``).

A sandbox that did not report cleanly may have left processes behind: its process tree, and (in rlimits mode,
where there is no PID namespace) daemons that left the tree but still carry the program's environment marker.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time

import psutil

from .limits import MARKER_ENV


def _live_table() -> dict[int, tuple[int, dict | None]]:
    """pid -> (ppid, environment or None when unreadable) of every live (non-zombie) process. Fresh ``Process``
    objects, not ``process_iter``'s shared cache: executor threads call this concurrently."""
    table = {}
    for pid in psutil.pids():
        try:
            info = psutil.Process(pid).as_dict(["ppid", "status", "environ"], ad_value=None)
        except psutil.Error:
            continue
        if info["status"] != psutil.STATUS_ZOMBIE and info["ppid"] is not None:
            table[pid] = (info["ppid"], info["environ"])
    return table


def _targets(root: int | None, marker: str) -> set[int]:
    """``root`` (when alive), every process carrying ``marker``, and all their descendants; never ourselves."""
    table = _live_table()
    targets = {pid for pid, (_, env) in table.items() if env and env.get(MARKER_ENV) == marker}
    if root in table:
        targets.add(root)
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    stack = list(targets)
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in targets:
                targets.add(child)
                stack.append(child)
    targets.discard(os.getpid())
    return targets


def kill_tree(root: int | None, marker: str, rounds: int = 50) -> int:
    """SIGKILL ``root``, its descendants and every process carrying ``marker`` in its environment.

    Processes are stopped first so that none can fork while the tree is collected; rounds repeat until nothing is
    left. Returns how many were killed.
    """
    killed: set[int] = set()
    for _ in range(rounds):
        targets = _targets(root, marker)
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


def wait_exit(proc: subprocess.Popen, seconds: float) -> None:
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
