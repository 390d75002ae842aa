"""Source configs and one reader over all of them, shared by ``ingest`` and ``ingest_traces``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field

from stages.contract import StageConfig
from stages.sources import files, hub
from stages.sources.sample import choose


class SourceBase(StageConfig):
    name: str | None = Field(
        None, description="dataset name in ids and provenance (default: the path or Hub id as written)"
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="our field -> source column, e.g. {question: problem, answer: solution}; "
        "unmapped fields use a source column of the same name when there is one",
    )
    answer_type: str = Field("math", description="checker family for rows without an answer_type column")
    domain: str | None = Field(None, description="domain for rows without a domain column")


class SyntheticSource(SourceBase):
    kind: Literal["synthetic"]
    n: int = Field(200, ge=0, description="problems to generate (before --sample)")
    families: list[str] | None = None
    levels: list[str] | None = None
    seed: int | None = Field(None, description="generator seed (default: the recipe seed)")


class FilesSource(SourceBase):
    kind: Literal["files"]
    paths: list[str] = Field(min_length=1, description="files or globs, local or any fsspec URL")
    format: files.Format | None = Field(None, description="jsonl, parquet or csv (default: from the name)")


class HubSource(SourceBase):
    kind: Literal["hub"]
    path: str = Field(description="Hub dataset id, or a local dataset folder")
    config: str | None = None
    split: str = "train"
    revision: str | None = None
    streaming: bool = False
    data_files: list[str] | None = None


Source = Annotated[SyntheticSource | FilesSource | HubSource, Field(discriminator="kind")]


@dataclass(frozen=True)
class SourceRow:
    source: dict[str, Any]  # the provenance ``source`` struct
    where: str  # human location for messages: "data/a.jsonl line 7"
    fields: dict[str, Any] | None
    raw: str | None = None
    error: str | None = None


def dataset_name(src: SyntheticSource | FilesSource | HubSource) -> str:
    if src.name:
        return src.name
    if isinstance(src, FilesSource):
        return ",".join(src.paths)
    if isinstance(src, HubSource):
        return src.path
    return "tracefoundry/synthetic"


def read_source(src: SyntheticSource | FilesSource | HubSource, *, sample: int | None, seed: int,
                required: tuple[str, ...]) -> Iterator[SourceRow]:
    """Rows of one source, sampled deterministically when ``sample`` is set (N rows per source)."""
    name = dataset_name(src)
    if isinstance(src, SyntheticSource):
        yield from _synthetic(src, name, sample, seed)
    elif isinstance(src, FilesSource):
        yield from _files(src, name, sample, seed, required)
    else:
        yield from _hub(src, name, sample, seed)


def _synthetic(src: SyntheticSource, name: str, sample: int | None, seed: int) -> Iterator[SourceRow]:
    from stages.sources import synthetic_problems as gen

    gen_seed = src.seed if src.seed is not None else seed
    n = src.n if sample is None else min(src.n, sample)
    kwargs = {k: v for k, v in (("families", src.families), ("levels", src.levels)) if v}
    for p in gen.generate(n, gen_seed, **kwargs):
        fields = {"question": p["question"], "answer": p["answer"], "answer_type": p["answer_type"],
                  "solution": p["solution"], "level": p["level"], "domain": "math", "family": p["family"]}
        source = {"dataset": name, "config": f"seed={gen_seed}", "split": "train", "revision": None,
                  "row": p["index"]}
        yield SourceRow(source, f"{name} row {p['index']}", fields)


def _files(src: FilesSource, name: str, sample: int | None, seed: int,
           required: tuple[str, ...]) -> Iterator[SourceRow]:
    paths = files.expand(src.paths)
    formats = {p: files.detect_format(p, src.format) for p in paths}
    keep: dict[str, set[int]] | None = None
    if sample is not None:
        counts = [(p, files.count_rows(p, formats[p])) for p in paths]
        picked, keep, offset = set(choose(sum(c for _, c in counts), sample, seed)), {}, 0
        for p, c in counts:
            keep[p] = {i - offset for i in picked if offset <= i < offset + c}
            offset += c
    for p in paths:
        # sample by position among the rows count_rows counted: a JSONL row's index is its line
        # number - 1, which runs ahead of its position once the file has blank lines
        for position, row in enumerate(files.read_rows(p, formats[p], required)):
            if keep is not None and position not in keep[p]:
                continue
            unit = "line" if formats[p] == "jsonl" else "row"
            number = row.index + 1 if unit == "line" else row.index
            source = {"dataset": name, "config": None, "split": None, "revision": None, "row": row.index}
            yield SourceRow(source, f"{p} {unit} {number}", row.fields, row.raw, row.error)


def _hub(src: HubSource, name: str, sample: int | None, seed: int) -> Iterator[SourceRow]:
    revision = hub.resolve_revision(src.path, src.revision)
    rows = hub.iter_rows(src.path, src.config, src.split, revision, streaming=src.streaming,
                         sample=sample, seed=seed, data_files=src.data_files)
    for index, fields in rows:
        source = {"dataset": name, "config": src.config, "split": src.split, "revision": revision,
                  "row": index}
        yield SourceRow(source, f"{src.path} [{src.split}] row {index}", fields)


def mapped(row: dict[str, Any], columns: dict[str, str], field: str) -> Any:
    """A field through the recipe's column mapping (falls back to a column of the same name)."""
    return row.get(columns.get(field, field))
