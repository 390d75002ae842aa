"""Named sets of texts to compare against: benchmarks (decontaminate) and earlier releases (dedup).

A set names a Hub dataset (what production recipes write) and may name local files instead; a
local ``path`` always wins, so tests and air-gapped runs use the same recipe with files. A text
column may hold plain strings or chat messages (an emitted release): then one role's turns count.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import Field, model_validator

from stages.contract import StageConfig
from stages.sources.read import FilesSource, HubSource, read_source


class TextSet(StageConfig):
    name: str = Field(description="how rejected rows and stats name this set, e.g. math_500")
    dataset: str | None = Field(None, description="Hub dataset id (or a local dataset folder)")
    config: str | None = None
    split: str = "train"
    revision: str | None = None
    data_files: list[str] | None = None
    path: str | list[str] | None = Field(
        None, description="local files or globs (jsonl, parquet, csv) used instead of the Hub dataset")
    column: str = Field("problem", description="the column holding the text")
    role: str = Field("user", description="when the column holds chat messages: whose turns to take")

    @model_validator(mode="after")
    def _somewhere(self) -> TextSet:
        if not self.dataset and not self.path:
            raise ValueError(f"text set '{self.name}': give a Hub 'dataset' id or a local 'path'")
        return self

    def where(self) -> str:
        return ",".join(self.paths()) if self.path else self.dataset or ""

    def paths(self) -> list[str]:
        return [self.path] if isinstance(self.path, str) else list(self.path or [])


def read_texts(text_set: TextSet, seed: int = 0) -> Iterator[tuple[str, str, str]]:
    """(row id, location, text) of every row with text: "math_500#17", "data/math500.jsonl line 18".

    A row whose column is missing or not text is an error naming the file and row: a benchmark
    read wrongly would silently decontaminate nothing.
    """
    for ordinal, (where, row) in enumerate(_rows(text_set, seed)):
        if text_set.column not in row:
            raise KeyError(f"{where}: no column '{text_set.column}' (text set '{text_set.name}'); "
                           f"columns: {', '.join(sorted(row))}")
        text = text_of(row[text_set.column], text_set.role)
        if text is None:
            kind = type(row[text_set.column]).__name__
            raise ValueError(f"{where}: column '{text_set.column}' holds {kind}, not text or chat messages "
                             f"(text set '{text_set.name}')")
        if text.strip():
            yield f"{text_set.name}#{ordinal}", where, text


def text_of(value: Any, role: str = "user") -> str | None:
    """A string as it is; chat messages as the concatenated turns of ``role``; else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple) and all(isinstance(m, dict) and "content" in m for m in value):
        return "\n\n".join(str(m["content"]) for m in value if m.get("role") == role and m["content"])
    return None


def _rows(text_set: TextSet, seed: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """(location, row) through the same readers as ingest: JSONL line numbers, resolved Hub revisions."""
    if text_set.path:
        src: FilesSource | HubSource = FilesSource(kind="files", name=text_set.name, paths=text_set.paths())
    else:
        src = HubSource(kind="hub", name=text_set.name, path=text_set.dataset, config=text_set.config,
                        split=text_set.split, revision=text_set.revision, data_files=text_set.data_files)
    for item in read_source(src, sample=None, seed=seed, required=(text_set.column,)):
        if item.fields is None:
            raise ValueError(f"{item.where}: {item.error} (text set '{text_set.name}')")
        yield item.where, item.fields
