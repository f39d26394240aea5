"""ClassEval (``ClassEval_data.json`` schema): complete a class skeleton, judged by one TestCase per method."""

from __future__ import annotations

import os
import textwrap

from ..sandbox import TestSuite
from .fields import need_str, need_str_list, opt_str
from .problem import Problem
from .rows import read_rows

def _docstring_text(description: str) -> str:
    text = textwrap.dedent(description).strip()
    for quote in ('"""', "'''"):
        if text.startswith(quote) and text.endswith(quote) and len(text) >= 6:
            text = textwrap.dedent(text[3:-3]).strip()
    return text


def load_classeval(path: str | os.PathLike) -> list[Problem]:
    """ClassEval tasks (``ClassEval_data.json`` schema): complete a class skeleton, judged by one
    ``unittest.TestCase`` per method plus a whole-class test. The task's import statements run as test set-up
    (the official tests use them without importing). ``metadata["method_tests"]`` maps method → test class.
    """
    problems = []
    for i, row in enumerate(read_rows(path)):
        where = f"{path} row {i} (task_id={row.get('task_id')!r})"
        skeleton = need_str(row, "skeleton", where)
        class_name = need_str(row, "class_name", where)
        test_classes = need_str_list(row, "test_classes", where)
        imports = row.get("import_statement") or []
        if not isinstance(imports, list) or not all(isinstance(s, str) for s in imports):
            raise ValueError(f"{where}: field 'import_statement' must be a list of str")
        methods = row.get("methods_info") or []
        if not isinstance(methods, list) or not all(isinstance(m, dict) and "method_name" in m for m in methods):
            raise ValueError(f"{where}: field 'methods_info' must be a list of objects with 'method_name'")
        description = _docstring_text(opt_str(row, "class_description", where) or "")
        problems.append(
            Problem(
                task_id=need_str(row, "task_id", where),
                prompt=f"{description}\n\n{skeleton}" if description else skeleton,
                starter_code=skeleton,
                tests=TestSuite.unittest(need_str(row, "test", where), test_classes, setup="\n".join(imports)),
                style="unittest",
                entry_point=class_name,
                source="classeval",
                metadata={
                    "class_name": class_name,
                    "methods": [m["method_name"] for m in methods],
                    "method_tests": {m["method_name"]: m["test_class"] for m in methods if m.get("test_class")},
                    "import_statement": imports,
                    "solution_code": opt_str(row, "solution_code", where) or "",
                },
            )
        )
    return problems
