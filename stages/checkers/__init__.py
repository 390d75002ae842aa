"""Checkers by name. Each lives in its own module and is imported only when a recipe uses it."""

from __future__ import annotations

import atexit
import importlib
from typing import Any

from schemas.ids import canonical_json
from stages.checkers.base import Checker

# name -> (module, checker class); each class takes its config model
CHECKERS: dict[str, tuple[str, str]] = {
    "math": ("stages.checkers.math_equiv", "MathChecker"),
    "choice": ("stages.checkers.simple", "ChoiceChecker"),
    "exact": ("stages.checkers.simple", "ExactChecker"),
    "numeric": ("stages.checkers.simple", "NumericChecker"),
    "code": ("stages.checkers.code_sandbox", "CodeChecker"),
    "format": ("stages.checkers.format_check", "FormatChecker"),
}

_OPEN: dict[tuple[str, str], Checker] = {}


def get_checker(name: str, config: Any) -> Checker:
    """One checker per (name, config) per process: its memo and child processes outlive a batch."""
    key = (name, canonical_json(config.model_dump(mode="json")))
    if key not in _OPEN:
        module, cls = CHECKERS[name]
        _OPEN[key] = getattr(importlib.import_module(module), cls)(config)
    return _OPEN[key]


@atexit.register
def close_all() -> None:
    while _OPEN:
        _, checker = _OPEN.popitem()
        checker.close()
