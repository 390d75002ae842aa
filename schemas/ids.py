"""Content-hash ids: the same input always gets the same id, on any machine, in any run."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from typing import Any

_WS = re.compile(r"\s+")


def digest(*parts: Any, length: int = 32) -> str:
    """A stable hex digest of JSON-serialisable parts (order matters)."""
    payload = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:length]


def normalise_question(text: str) -> str:
    """NFKC and collapsed whitespace only: digits, signs and case carry meaning in math and code."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text)).strip()


def problem_id(question: str, dataset: str) -> str:
    return digest("problem", normalise_question(question), dataset)


def trace_id(problem: str, teacher_key: str, sample_index: int) -> str:
    return digest("trace", problem, teacher_key, sample_index)


def canonical_json(value: Any) -> str:
    """Deterministic JSON for hashing and for storing free-form values (non-JSON types become strings)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
