"""The executor: :class:`SandboxedExecutor`, :func:`execute` and :func:`execute_many` run candidate programs
against a :class:`~.suite.TestSuite` in the sandbox, one program at a time or many in parallel.

Each program runs in its own child processes (``python -I``) under resource limits and, when ``bwrap`` works,
inside a bubblewrap sandbox (only the Python installation visible, read-only; a private size-capped ``/tmp``; no
network; own PID namespace). Test code runs in a process of its own and reaches the program through a proxy, so no
program can forge a verdict (:mod:`.harness`). Expected outputs never enter the sandbox; the parent compares
(:mod:`.verdict`). Execution is opt-in, as with HF ``code_eval``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Iterable

from tqdm.auto import tqdm

from .confinement import isolation
from .limits import (
    DEFAULT_MAX_OUTPUT_BYTES, DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT, HARNESS_VERSION, OPT_IN_ENV,
)
from .run import run_one
from .suite import TestSuite
from .verdict import ExecutionResult

_OPT_IN_ERROR = (
    "Refusing to execute model-written code: pass allow_code_execution=True (or set the environment variable "
    f"{OPT_IN_ENV}=1) to confirm that you accept the risk. The code runs in a sandbox (see "
    "dreamprm_trl.sandbox.isolation()), but untrusted code can never be made entirely safe."
)


def _check_opt_in(allow_code_execution: bool) -> None:
    if not (allow_code_execution or os.environ.get(OPT_IN_ENV, "") == "1"):
        raise PermissionError(_OPT_IN_ERROR)


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
        return run_one(code, suite, self.timeout, self.memory_mb, self.max_output_bytes, self.isolation())

    def run_many(self, pairs: Iterable[tuple[str, TestSuite]]) -> list[ExecutionResult]:
        """Run ``(code, suite)`` pairs in parallel; results keep the input order."""
        _check_opt_in(self.allow_code_execution)
        pairs = list(pairs)
        level = self.isolation()
        workers = max(1, min(len(pairs) or 1, self.workers or os.cpu_count() or 1))
        results: list[ExecutionResult | None] = [None] * len(pairs)

        def job(i: int) -> None:
            code, suite = pairs[i]
            results[i] = run_one(code, suite, self.timeout, self.memory_mb, self.max_output_bytes, level)

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
