"""The one reader of the project's row files (problems, candidates, labels): JSON Lines or JSON, optionally gzipped.

Hand-written, not ``datasets.load_dataset("json")``: that writes a disk cache per file, turns a mixed-type column
into opaque JSON values (``"passed": "no"`` passes silently) and reports a bad line as a ``DatasetGenerationError``
without the file or line, while every error here names both.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

from ..schema import VERDICT

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
    if VERDICT in row and not isinstance(row[VERDICT], bool):
        raise ValueError(
            f"{where}: '{VERDICT}' must be true or false, got {row[VERDICT]!r:.40} ({type(row[VERDICT]).__name__}); "
            "write a JSON boolean."
        )
