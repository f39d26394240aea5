"""Method-level ground-truth step labels for ClassEval-style problems: what measures the Monte-Carlo labels' noise."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from ..sandbox import SandboxedExecutor, TestSuite
from ..steps import Step, split_steps
from .units import default_executor, suite_of

if TYPE_CHECKING:
    from ..problems import Problem

__all__ = ["step_ground_truth"]


def _method_tests(problem: Problem, suite: TestSuite) -> dict[str, str]:
    """Method name -> the TestCase class that tests it.

    Read from ``problem.metadata["method_tests"]`` or ClassEval's ``methods_info``; else ClassEval's naming
    convention (``<Class>Test<CamelCaseMethod>``) matched against the suite's test classes.
    """
    meta = problem.metadata or {}
    if isinstance(meta.get("method_tests"), Mapping):
        return dict(meta["method_tests"])
    if meta.get("methods_info"):
        return {m["method_name"]: m["test_class"] for m in meta["methods_info"] if m.get("test_class")}
    out = {}
    for cls in suite.test_classes:
        if "Test" in cls:
            camel = cls.split("Test", 1)[1]
            if camel:
                out[camel] = cls
    return {"camel:" + k: v for k, v in out.items()}


def _method_name(step: Step) -> str | None:
    return step.name.rsplit(".", 1)[-1] if step.kind == "method" and step.name else None


def step_ground_truth(
    problem: Problem,
    code: str,
    per_test: Sequence[bool] | None = None,
    executor: SandboxedExecutor | None = None,
    splitter: Callable[[str], list[Step]] = split_steps,
) -> list[float]:
    """Method-level ground-truth step labels for a ClassEval-style problem (one TestCase class per method).

    Definition: run the whole program once against every test class (``per_test[j]`` is the verdict of
    ``suite.test_classes[j]``; pass it if known, else ``executor`` runs the program). For a step k < K, the
    label is 1.0 iff every tested method defined in steps 1..k passes its own test class, 0.0 otherwise; steps
    that define no tested method (imports, helpers) keep the label of the steps before them, starting from 1.0.
    The last step's label is the program's verdict on the whole suite (all method classes plus the whole-class
    test), as for Monte-Carlo labels. Methods are judged inside the full program, so a method that calls a
    later, broken helper fails at its own step. Returns one float per step of ``splitter(code)``.
    """
    suite = suite_of(problem)
    if suite is None or suite.kind != "unittest":
        raise ValueError(
            f"step_ground_truth needs a unittest suite with one TestCase per method (ClassEval); task "
            f"{problem.task_id!r} has {'no tests' if suite is None else suite.kind + ' tests'}."
        )
    if per_test is None:
        per_test = default_executor(executor).run_many([(code, suite)])[0].per_test
    if len(per_test) != len(suite.test_classes):
        raise ValueError(
            f"per_test has {len(per_test)} verdicts but task {problem.task_id!r} has {len(suite.test_classes)} test "
            "classes; pass the per_test of a run on this problem's suite."
        )
    verdict = dict(zip(suite.test_classes, map(bool, per_test)))
    tests = _method_tests(problem, suite)
    steps = splitter(code)
    labels, ok = [], True
    for step in steps[:-1]:
        name = _method_name(step)
        if name is not None:
            cls = tests.get(name) or tests.get("camel:" + "".join(w.capitalize() for w in name.split("_")))
            if cls is not None:
                ok = ok and verdict[cls]
        labels.append(float(ok))
    if steps:
        labels.append(float(all(verdict.values())))
    return labels
