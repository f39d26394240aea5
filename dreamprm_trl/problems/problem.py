"""One coding problem from any benchmark (`Problem`), the preludes each benchmark's harness runs, and the
lossless round trip through ``datasets.Dataset`` rows (`problems_to_dataset` / `problems_from_dataset`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..sandbox import TestSuite
from .fields import json_field, need_str, opt_str, suite_field

# Code each benchmark's own harness runs before the program (``TestSuite.prelude``). MBPP: the evaluation harness
# prepends ``from typing import *`` (annotations such as ``List[int]`` work without an import). LiveCodeBench:
# ``import_string`` of ``lcb_runner/evaluation/testing_util.py``, prepended to stdio and call-based programs alike.
# HumanEval and ClassEval run the program as written (the prompt carries its own imports).
_LCB_MODULES = ("string", "re", "datetime", "collections", "heapq", "bisect", "copy", "math", "random", "statistics",
                "itertools", "functools", "operator", "io", "sys", "json")
PRELUDES: dict[str, str] = {
    "humaneval": "",
    "mbpp": "from typing import *\n",
    "classeval": "",
    "livecodebench": "".join(f"from {m} import *\n" for m in (*_LCB_MODULES, "builtins", "typing"))
    + "".join(f"import {m}\n" for m in _LCB_MODULES)
    + "sys.setrecursionlimit(50000)\n",
}


STYLES = ("call", "stdin", "assert", "unittest")


@dataclass
class Problem:
    """One coding problem. A candidate program is full source code runnable on its own, conventionally
    ``starter_code + completion`` (for HumanEval ``starter_code == prompt``, the signature and docstring).

    ``tests`` are the hidden tests that give labels, ``public_tests`` the examples a user sees in the statement.
    """

    task_id: str
    prompt: str
    starter_code: str = ""
    tests: TestSuite | None = None
    public_tests: TestSuite | None = None
    style: str = "call"
    entry_point: str | None = None
    difficulty: str | None = None
    source: str = ""
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.task_id, str) or not self.task_id:
            raise ValueError(f"Problem.task_id must be a non-empty str, got {self.task_id!r}")
        if self.style not in STYLES:
            raise ValueError(f"Problem {self.task_id!r}: style {self.style!r} is not one of {STYLES}")
        for name in ("tests", "public_tests"):
            value = getattr(self, name)
            if isinstance(value, Mapping):
                setattr(self, name, TestSuite.from_dict(value))
            elif value is not None and not isinstance(value, TestSuite):
                raise TypeError(
                    f"Problem {self.task_id!r}: {name} must be an sandbox.TestSuite or None, "
                    f"got {type(value).__name__}"
                )

    @property
    def fn_name(self) -> str | None:
        """Alias of ``entry_point`` (LiveCodeBench's name for it)."""
        return self.entry_point

    def to_row(self) -> dict:
        """Flat row with a fixed schema (test suites and metadata as JSON strings, None as "")."""
        return {
            "task_id": self.task_id,
            "prompt": self.prompt,
            "starter_code": self.starter_code,
            "tests": self.tests.to_json() if self.tests is not None else "",
            "public_tests": self.public_tests.to_json() if self.public_tests is not None else "",
            "style": self.style,
            "entry_point": self.entry_point or "",
            "difficulty": self.difficulty or "",
            "source": self.source,
            "metadata": json.dumps(self.metadata, sort_keys=True),
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any], where: str = "row") -> Problem:
        """Inverse of :meth:`to_row`; ``where`` names the row in error messages."""
        if not isinstance(row, Mapping):
            raise ValueError(f"{where}: expected a mapping with Problem fields, got {type(row).__name__}")
        task_id = row.get("task_id")
        where = f"{where} (task_id={task_id!r})"
        try:
            return cls(
                task_id=need_str(row, "task_id", where),
                prompt=need_str(row, "prompt", where),
                starter_code=opt_str(row, "starter_code", where) or "",
                tests=suite_field(row, "tests", where),
                public_tests=suite_field(row, "public_tests", where),
                style=opt_str(row, "style", where) or "call",
                entry_point=opt_str(row, "entry_point", where) or None,
                difficulty=opt_str(row, "difficulty", where) or None,
                source=opt_str(row, "source", where) or "",
                metadata=json_field(row, "metadata", where, dict) or {},
            )
        except (TypeError, ValueError) as err:
            if str(err).startswith(where):
                raise
            raise ValueError(f"{where}: {err}") from err


def problems_to_dataset(problems: Iterable[Problem]):
    """``datasets.Dataset`` with one :meth:`Problem.to_row` row per problem."""
    import datasets

    rows = [p.to_row() for p in problems]
    if not rows:
        return datasets.Dataset.from_dict({k: [] for k in Problem("x", "").to_row()})
    return datasets.Dataset.from_list(rows)


def problems_from_dataset(dataset: Iterable[Mapping[str, Any]]) -> list[Problem]:
    """Inverse of :func:`problems_to_dataset` (any iterable of rows works)."""
    return [Problem.from_row(row, where=f"row {i}") for i, row in enumerate(dataset)]
