"""Field validation for problem rows: every error names the row and the field."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..sandbox import TestSuite



def need_str(row: Mapping, key: str, where: str) -> str:
    if key not in row or row[key] is None:
        raise ValueError(f"{where}: missing field {key!r}")
    if not isinstance(row[key], str):
        raise ValueError(f"{where}: field {key!r} must be a str, got {type(row[key]).__name__}")
    return row[key]


def opt_str(row: Mapping, key: str, where: str) -> str | None:
    value = row.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{where}: field {key!r} must be a str, got {type(value).__name__}")
    return value


def need_str_list(row: Mapping, key: str, where: str) -> list[str]:
    value = row.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: field {key!r} must be a list of str, got {value!r:.80}")
    return value


def json_field(row: Mapping, key: str, where: str, kind: type) -> Any:
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


def suite_field(row: Mapping, key: str, where: str) -> TestSuite | None:
    value = row.get(key)
    if isinstance(value, TestSuite):
        return value
    data = json_field(row, key, where, dict)
    if data is None:
        return None
    try:
        return TestSuite.from_dict(data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: field {key!r} is not a TestSuite dict ({err})") from None
