"""The unit tests of one problem (:class:`TestSuite`), in one of five styles, and their JSON form.

Suites are plain data: they cross into the sandbox as a dict, without their expected outputs (the parent compares,
see :mod:`.verdict`), and their JSON is part of the label cache's keys.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Sequence

SUITE_KINDS = ("stdio", "call", "check", "asserts", "unittest")


@dataclass(frozen=True)
class TestSuite:
    """The unit tests of one problem, in one of five styles.

    ``stdio`` (LiveCodeBench stdin/stdout), ``call`` (LiveCodeBench functional: one JSON value per input line,
    ``class Solution`` method or plain function), ``check`` (HumanEval ``check(candidate)``), ``asserts`` (MBPP),
    ``unittest`` (ClassEval ``TestCase`` classes). Build with the constructors, not the raw fields.

    ``prelude`` is code run before the program, in the program's namespace (and, for test-code suites, in the
    tests' namespace), as benchmark harnesses do: MBPP's ``from typing import *``, LiveCodeBench's import block.
    The loaders in :mod:`dreamprm_trl.problems` set each benchmark's own (``problems.problem.PRELUDES``).
    """

    __test__ = False  # not a pytest test class

    kind: str
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    fn_name: str | None = None
    code: str = ""
    entry_point: str | None = None
    assertions: tuple[str, ...] = ()
    setup: str = ""
    test_classes: tuple[str, ...] = ()
    prelude: str = ""

    def __post_init__(self) -> None:
        if self.kind not in SUITE_KINDS:
            raise ValueError(f"TestSuite kind {self.kind!r} is not one of {SUITE_KINDS}")
        if self.kind in ("stdio", "call") and len(self.inputs) != len(self.outputs):
            raise ValueError(
                f"TestSuite.{self.kind}: {len(self.inputs)} inputs but {len(self.outputs)} outputs; "
                "pass one expected output per input"
            )
        if self.kind == "call" and not self.fn_name:
            raise ValueError("TestSuite.call needs fn_name (the function or Solution method to call)")
        if self.kind == "check" and not (self.code and self.entry_point):
            raise ValueError("TestSuite.check needs both the check code and the entry_point name")
        if self.kind == "unittest" and not self.test_classes:
            raise ValueError("TestSuite.unittest needs test_classes: the TestCase class names to run")

    # -- constructors -------------------------------------------------------------------------------------------
    @classmethod
    def stdio(cls, inputs: Sequence[str], outputs: Sequence[str], prelude: str = "") -> "TestSuite":
        """Stdin/stdout tests: the program reads ``inputs[i]`` and must print ``outputs[i]``."""
        return cls("stdio", inputs=tuple(map(str, inputs)), outputs=tuple(map(str, outputs)), prelude=prelude)

    @classmethod
    def call(cls, fn_name: str, inputs: Sequence[str], outputs: Sequence[str], prelude: str = "") -> "TestSuite":
        """Call-based tests: each input holds one JSON argument per line; output is a JSON value."""
        return cls("call", inputs=tuple(map(str, inputs)), outputs=tuple(map(str, outputs)), fn_name=fn_name, prelude=prelude)

    @classmethod
    def check(cls, check: str, entry_point: str, prelude: str = "") -> "TestSuite":
        """HumanEval style: ``check`` defines ``check(candidate)``, called with the program's ``entry_point``."""
        return cls("check", code=check, entry_point=entry_point, prelude=prelude)

    @classmethod
    def asserts(cls, asserts: Sequence[str], setup: str = "", prelude: str = "") -> "TestSuite":
        """MBPP style: each string is one test (usually one ``assert`` line), run after ``setup``."""
        if isinstance(asserts, str):
            asserts = [line for line in asserts.splitlines() if line.strip()]
        return cls("asserts", assertions=tuple(asserts), setup=setup, prelude=prelude)

    @classmethod
    def unittest(cls, test_code: str, test_classes: Sequence[str], setup: str = "", prelude: str = "") -> "TestSuite":
        """ClassEval style: ``test_code`` defines ``unittest.TestCase`` classes; one verdict per class."""
        if isinstance(test_classes, str):
            test_classes = [test_classes]
        return cls("unittest", code=test_code, test_classes=tuple(test_classes), setup=setup, prelude=prelude)

    @classmethod
    def from_problem(cls, problem: Any) -> "TestSuite":
        """The suite of a ``Problem`` (duck-typed on ``problem.tests``; a dict with ``"kind"`` also works)."""
        tests = getattr(problem, "tests", None)
        if tests is None and isinstance(problem, dict):
            tests = problem.get("tests")
        if isinstance(tests, TestSuite):
            return tests
        if isinstance(tests, dict):
            return cls.from_dict(tests)
        raise ValueError(
            f"cannot build a TestSuite from {type(problem).__name__}: its .tests is {type(tests).__name__}, "
            "expected a TestSuite (build one with TestSuite.stdio/call/check/asserts/unittest)"
        )

    # -- serialisation ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-safe dict (lists, not tuples); inverse of :meth:`from_dict`."""
        d = asdict(self)
        if not d["prelude"]:  # suites without one keep their old JSON (and cache keys)
            del d["prelude"]
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "TestSuite":
        d = dict(d)
        if "asserts" in d:
            d["assertions"] = d.pop("asserts")
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"TestSuite.from_dict: unknown keys {sorted(unknown)}; expected a subset of {sorted(known)}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def __len__(self) -> int:
        if self.kind in ("stdio", "call"):
            return len(self.inputs)
        if self.kind == "asserts":
            return len(self.assertions)
        if self.kind == "unittest":
            return len(self.test_classes)
        return 1
