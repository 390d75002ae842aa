"""Row validation: a bad row becomes a ``rejected`` row with a reason, never an exception or a silent drop."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from schemas.ids import canonical_json
from schemas.tables import REJECTED


@dataclass(frozen=True)
class Invalid:
    """Why a row cannot be used: ``reason`` is a short stable key, ``detail`` names the field."""

    reason: str
    detail: str


def text_field(row: Mapping[str, Any], field: str, *, required: bool, max_chars: int,
               allow_numbers: bool = False) -> str | Invalid | None:
    """Read one text field: strings pass, numbers pass where they are natural (answers), rest is invalid."""
    value = row.get(field)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return Invalid("missing_" + field, f"field '{field}' is missing or null") if required else None
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if not (isinstance(value, str) or (allow_numbers and is_number)):
        return Invalid("wrong_type", f"field '{field}' must be a string, got {type(value).__name__}")
    text = value if isinstance(value, str) else format_number(value)
    if required and not text.strip():
        return Invalid("empty_" + field, f"field '{field}' is empty")
    if len(text) > max_chars:
        return Invalid("oversized", f"field '{field}' has {len(text)} characters, limit {max_chars}")
    return text


def format_number(value: int | float) -> str:
    """Answers stored as numbers (GSM8K-style) become their shortest exact text: 3.0 -> '3'."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def string_list(row: Mapping[str, Any], field: str, *, max_chars: int) -> list[str] | Invalid | None:
    value = row.get(field)
    if value is None:
        return None
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        return Invalid("wrong_type", f"field '{field}' must be a list of strings")
    if sum(len(v) for v in value) > max_chars:
        return Invalid("oversized", f"field '{field}' exceeds {max_chars} characters")
    return list(value)


def rejected_table(rows: list[Mapping[str, Any]]) -> pa.Table:
    """Build ``rejected`` rows; ``row`` may be any mapping and is stored as JSON so nothing is lost."""
    out = []
    for r in rows:
        item = {name: r.get(name) for name in REJECTED.names}
        if not isinstance(item["row"], str | type(None)):
            item["row"] = canonical_json(item["row"])
        out.append(item)
    return pa.Table.from_pylist(out, schema=REJECTED)
