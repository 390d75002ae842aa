"""Optional dependencies: a missing one fails early with the exact install line (as datatrove does)."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType


class MissingDependency(ImportError):
    pass


def require(module: str, extra: str) -> None:
    """Fail now, not halfway through a run, when an extra is not installed."""
    if importlib.util.find_spec(module.split(".")[0]) is None:
        raise MissingDependency(
            f"'{module}' is not installed; it comes with the '{extra}' extra: "
            f"pip install 'tracefoundry[{extra}]'"
        )


def load(module: str, extra: str) -> ModuleType:
    require(module, extra)
    return importlib.import_module(module)
