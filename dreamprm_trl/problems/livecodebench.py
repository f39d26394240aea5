"""LiveCodeBench (``code_generation_lite`` schema): stdin or functional problems, filtered by contest date.

Private test cases ship as base64(zlib(pickle(json))); they are decoded with an unpickler that refuses every
global, so a malicious row raises instead of running code.
"""

from __future__ import annotations

import base64
import io
import json
import os
import pickle
import re
import zlib
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any

from ..sandbox import TestSuite
from .fields import json_field, need_str, opt_str
from .problem import PRELUDES, Problem
from .rows import read_rows

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
        meta = json_field(row, "metadata", where, dict) or {}
        raw_date = row.get("contest_date") or meta.get("contest_date")
        if _in_window(raw_date, start, end, where):
            problems.append(_lcb_problem(row, meta, raw_date, where))
    return problems


def _in_window(raw_date: Any, start: date | None, end: date | None, where: str) -> bool:
    """Whether a row's contest date falls in ``[start, end]`` (always, without a window)."""
    if start is None and end is None:
        return True
    if raw_date is None:
        raise ValueError(f"{where}: field 'contest_date' is missing, so the date filter cannot place it")
    day = _to_date(raw_date, f"{where}: field 'contest_date'")
    return not ((start is not None and day < start) or (end is not None and day > end))


def _lcb_problem(row: Mapping, meta: dict, raw_date: Any, where: str) -> Problem:
    """One row as a `Problem`: hidden tests = public + private cases, all stdin or all functional."""
    public = _decode_test_cases(row.get("public_test_cases", "[]"), "public_test_cases", where)
    private = _decode_test_cases(row.get("private_test_cases", "[]"), "private_test_cases", where)
    cases = public + private
    if not cases:
        raise ValueError(f"{where}: fields 'public_test_cases' and 'private_test_cases' hold no test cases")
    types = {c["testtype"] for c in cases}
    if len(types) > 1:
        raise ValueError(f"{where}: fields 'public_test_cases' + 'private_test_cases' mix stdin and functional cases")
    question_id = row.get("question_id")
    if not isinstance(question_id, (str, int)) or question_id == "":
        raise ValueError(f"{where}: field 'question_id' must be a non-empty str")
    functional = types == {"functional"}
    fn_name = meta.get("func_name") if functional else None
    if functional and (not isinstance(fn_name, str) or not fn_name):
        raise ValueError(f"{where}: field 'metadata' needs 'func_name' for functional test cases")
    difficulty = row.get("difficulty") or meta.get("difficulty")
    return Problem(
        task_id=f"LiveCodeBench/{question_id}",
        prompt=need_str(row, "question_content", where),
        starter_code=opt_str(row, "starter_code", where) or "",
        tests=_lcb_suite(cases, fn_name),
        public_tests=_lcb_suite(public, fn_name) if public else None,
        style="call" if functional else "stdin",
        entry_point=fn_name,
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
