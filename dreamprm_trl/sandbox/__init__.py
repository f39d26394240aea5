"""The sandbox stage: run model-written programs against unit tests and return verdicts. Every label and every
pass@k in dreamprm-trl is a verdict of this package.

- ``suite``: :class:`TestSuite`, the unit tests of one problem in one of five styles.
- ``verdict``: :class:`ExecutionResult`, its statuses, the output comparison rules and the verdict rule.
- ``limits``: every default limit and environment-variable name (the one source of truth).
- ``confinement``: the isolation level (bubblewrap or rlimits), the bwrap command, the program's env and uid.
- ``staging``: the in-sandbox harness folder, staged and compiled once, mounted or used in place.
- ``processes``: waiting for a sandbox and killing what it left behind (psutil).
- ``workdir``: each program's work directory: where it goes, its stderr tail, its removal.
- ``run``: one program's run: payload, launch, report, verdict.
- ``executor``: :class:`SandboxedExecutor`, :func:`execute`, :func:`execute_many` (opt-in, parallel).
- ``harness/``: the code that runs inside the sandbox, standard library only.
"""

from .confinement import isolation
from .executor import SandboxedExecutor, execute, execute_many
from .suite import TestSuite
from .verdict import ExecutionResult

__all__ = ["TestSuite", "ExecutionResult", "SandboxedExecutor", "execute", "execute_many", "isolation"]
