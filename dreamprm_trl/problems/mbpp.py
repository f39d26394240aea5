"""MBPP (the original or sanitized JSON Lines release): one problem per row, judged by its asserts."""

from __future__ import annotations

import ast
import builtins
import os

from ..sandbox import TestSuite
from .fields import need_str, need_str_list, opt_str
from .problem import PRELUDES, Problem
from .rows import read_rows

def _mbpp_entry_point(test: str, code: str) -> str | None:
    """The function a test calls: one defined in the reference code if possible, else the first non-builtin."""
    try:
        called = [
            n.func.id for n in ast.walk(ast.parse(test)) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
        ]
    except SyntaxError:
        return None
    try:
        defined = {n.name for n in ast.walk(ast.parse(code)) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    except SyntaxError:
        defined = set()
    for name in called:
        if name in defined:
            return name
    return next((name for name in called if not hasattr(builtins, name)), None)


def load_mbpp(path: str | os.PathLike) -> list[Problem]:
    """MBPP problems from a .jsonl/.json(.gz) file in the original schema (``text``, ``code``, ``test_list``,
    ``test_setup_code``, ``task_id``; the sanitized split's ``prompt`` works for ``text``).

    The prompt shows the description and the first test (which fixes the function name); that test is also the
    public test. ``tests`` runs all of ``test_list`` after ``test_setup_code``.
    """
    problems = []
    for i, row in enumerate(read_rows(path)):
        where = f"{path} row {i} (task_id={row.get('task_id')!r})"
        if not isinstance(row.get("task_id"), (int, str)) or row.get("task_id") == "":
            raise ValueError(f"{where}: field 'task_id' must be an int or a non-empty str")
        text = need_str(row, "prompt" if "prompt" in row and "text" not in row else "text", where)
        tests = need_str_list(row, "test_list", where)
        if not tests:
            raise ValueError(f"{where}: field 'test_list' is empty; MBPP problems need at least one assert")
        setup = opt_str(row, "test_setup_code", where) or ""
        code = opt_str(row, "code", where) or ""
        task_id = row["task_id"]
        problems.append(
            Problem(
                task_id=f"MBPP/{task_id}" if isinstance(task_id, int) else task_id,
                prompt=f"{text.strip()}\nYour code should pass this test:\n{tests[0]}",
                tests=TestSuite.asserts(tests, setup=setup, prelude=PRELUDES["mbpp"]),
                public_tests=TestSuite.asserts(tests[:1], setup=setup, prelude=PRELUDES["mbpp"]),
                style="assert",
                entry_point=_mbpp_entry_point(tests[0], code),
                source="mbpp",
                metadata={"reference_code": code, "challenge_test_list": row.get("challenge_test_list") or []},
            )
        )
    return problems
