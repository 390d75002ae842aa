"""A stand-in for the engine's writer, for tests that call a global stage directly."""

from __future__ import annotations

from typing import Any

import pyarrow as pa


class CollectingOutput:
    """Keeps what the stage writes, rejects and reports, as the runner's PartWriter would receive it."""

    def __init__(self) -> None:
        self.tables: list[pa.Table] = []
        self.rejected: list[pa.Table] = []
        self.collected: dict[str, Any] = {}

    def write(self, rows: pa.Table) -> None:
        self.tables.append(rows)

    def reject(self, rejected: pa.Table) -> None:
        self.rejected.append(rejected)

    def consumed(self, n: int) -> None:
        pass

    def stats(self, values: dict[str, Any]) -> None:
        self.collected.update(values)

    def rows(self) -> list[dict]:
        return [r for t in self.tables for r in t.to_pylist()]

    def rejected_rows(self) -> list[dict]:
        return [r for t in self.rejected for r in t.to_pylist()]
