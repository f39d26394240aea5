"""Sandbox limits and switches: the one source of truth for defaults and environment-variable names.

``SandboxedExecutor``, ``execute``, ``execute_many``, the CLI and the README read these; the README section
"Running model-written code" lists what a user may rely on.
"""

from __future__ import annotations

DEFAULT_TIMEOUT = 6.0  # wall-clock seconds per test case (module loading counts toward the first test)
DEFAULT_MEMORY_MB = 1024  # per program: address space of each process + (bwrap) its private /tmp, see memory_split
DEFAULT_MAX_OUTPUT_BYTES = 8 * 1024 * 1024  # stdout of all tests together, and each file the program writes
DEFAULT_MAX_PROCESSES = 32  # processes per program (RLIMIT_NPROC on its own uid; see confinement.sandbox_uid)
STARTUP_GRACE_S = 5.0  # the parent's backstop on top of the supervisor's own deadlines
TMP_SHARE = 8  # under bubblewrap, 1/TMP_SHARE of memory_mb is the size cap of the private /tmp (tmpfs = RAM)
STDERR_TAIL_CHARS = 2000  # how much of the program's stderr a verdict keeps
MAX_REPORT_BYTES = 64 * 1024 * 1024  # what the parent reads of a report, on top of twice max_output_bytes

SANDBOX_ENV = "DREAMPRM_SANDBOX"  # "rlimits" forces rlimits-only isolation, "bwrap" requires bubblewrap
OPT_IN_ENV = "HF_ALLOW_CODE_EVAL"  # "1" opts in to running model-written code, as with HF code_eval
MARKER_ENV = "DREAMPRM_SANDBOX_ID"  # every sandboxed process carries a per-program marker, to be found and killed
HARNESS_VERSION = "2"  # part of cache keys: bump when a verdict could change

RLIMITS_MISSING = (  # what rlimits mode does not guarantee (the fallback warning and the README list these)
    "filesystem isolation (the program can read test data, the repository and your home directory, and write "
    "anything you can)",
    "no network",
    "a private /tmp (a file left there can change a later program's verdict) and a cap on its size",
    "a private PID namespace (the program can read your processes' /proc/<pid>/environ and signal them; a daemon "
    "that kills its supervisor and clears its environment can survive the run)",
    "unforgeable verdicts across runs (the program can rewrite the harness or installed modules on disk)",
)
