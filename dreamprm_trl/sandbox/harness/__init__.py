"""The in-sandbox harness: code that runs inside the sandbox, standard library only.

The host stages this folder as the package ``_sandbox_harness`` (see :mod:`dreamprm_trl.sandbox.staging`) and
runs ``_sandbox_harness.main`` with ``python -I -S``. The modules import one another relatively, so they work
under either name; nothing here may import from ``dreamprm_trl`` or any third-party package, because only the
Python installation is visible inside bubblewrap and the harness must start in milliseconds.

- ``main``: the supervisor's entry point: read the payload, decide skips and syntax errors, write the report.
- ``procs``: process control inside the sandbox: limits, forks, waiting, killing and reaping descendants.
- ``supervise``: stdio runs, and the candidate and test processes of the other suite kinds.
- ``proxy``: the candidate process's side of the proxy (serving the program's objects).
- ``remote``: the test process's side of the proxy (handles and synced containers).
- ``tester``: the test process: runs a suite's test code against the program through the proxy.
- ``wire``: the plain-data encoding and framing between the two processes.
"""
