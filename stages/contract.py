"""The one contract between stages and the engines that run them (local runner, Beam, Airflow).

A stage is a config model plus one function, and a ``StageType`` entry in ``stages.registry`` saying
which table it reads and writes. Two kinds:

- ``batch`` (record-parallel): ``fn(batch: pa.Table, config, ctx) -> Result``. Pure: the engine maps
  it over record batches in a process pool (local) or a ``ParDo`` (Beam). It may fan out (problems ->
  traces) but sees one batch only. A batch stage that ``needs`` the problems table (parse, verify)
  is called ``fn(batch, config, ctx, problems)`` with the problems its batch refers to.
- ``global``: ``fn(inputs: Inputs, config, ctx, out: Output) -> None``. Sees whole tables as Parquet
  files (read them lazily with Polars or DuckDB, never all in memory) and streams its output through
  ``out``. Sources (ingest) are global stages without inputs.

The engine owns everything else: batching, fingerprints, writing parts, ``rejected``, accounting,
manifests. A stage says what to keep and why not; it never counts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from schemas.tables import REJECTED

Table = Literal["problems", "traces"]
Kind = Literal["batch", "global"]


class StageConfig(BaseModel):
    """Base of every stage's parameters: unknown keys are errors, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Result:
    """What a batch function returns: kept (or produced) rows and rejected rows with reasons."""

    rows: pa.Table
    rejected: pa.Table = field(default_factory=REJECTED.empty_table)


@dataclass(frozen=True)
class Context:
    """What a stage may know about its run. Picklable: it travels to pool workers and Beam DoFns."""

    recipe: str
    run_id: str
    recipe_fingerprint: str
    code_version: str
    seed: int
    sample: int | None
    stage: str
    stage_type: str
    fingerprint: str
    tokenizer_spec: str
    stage_dir: str
    shard: tuple[int, int] | None = None  # (i, N): this task runs slice i of N (model-calling stages)
    request_cache: str | None = None  # where model-calling stages keep completions (default: in the run)
    workers: int = 1  # processes a global stage may use for CPU-bound work (the recipe's ``workers``)

    @property
    def tokenizer(self):
        from stages.tokens import load_tokenizer

        return load_tokenizer(self.tokenizer_spec)

    def pipeline_provenance(self) -> dict[str, str]:
        """The ``pipeline`` part of provenance: no wall-clock time, so reruns give the same bytes."""
        return {
            "recipe": self.recipe,
            "config_fingerprint": self.recipe_fingerprint,
            "code_version": self.code_version,
            "run_id": self.run_id,
        }


@dataclass(frozen=True)
class Inputs:
    """Upstream tables of a global stage, as lists of Parquet files (empty list: empty table)."""

    files: dict[str, list[str]]

    def __getitem__(self, table: str) -> list[str]:
        return self.files[table]


class Output(Protocol):
    """Where a global stage streams its results; the engine writes parts and counts from them."""

    def write(self, rows: pa.Table) -> None: ...

    def reject(self, rejected: pa.Table) -> None: ...

    def consumed(self, n: int) -> None:
        """A source stage reports how many rows it read, so the engine can check none vanished."""

    def stats(self, values: dict[str, Any]) -> None:
        """Numbers for the manifest's ``stats`` (tokens spent per teacher...); shards' stats are summed."""


@dataclass(frozen=True)
class StageType:
    name: str
    summary: str
    config: type[StageConfig]
    fn: Callable[..., Any]
    kind: Kind
    input_table: Table | None  # None: a source
    output_table: Table
    needs: tuple[Table, ...] = ()  # further tables a global stage reads (emit reads problems)
    output_glob: str = "part-*.parquet"  # where its output rows are, relative to the stage folder
    version: int = 1  # bump when the stage's output changes for the same config
    # (module, extra) pairs checked before it runs; a function of the config when it depends on it
    requires: tuple[tuple[str, str], ...] | Callable[[Any], tuple[tuple[str, str], ...]] = ()
    shardable: bool = False  # runs one slice with --shard i/N (model-calling stages)
    # traces -> traces stages that add rows (rewrite) are counted per parent trace: every input
    # trace has output (itself or rows whose parent_trace_id names it) or a rejected row naming it
    counts_parent_traces: bool = False

    def requirements(self, config: StageConfig) -> tuple[tuple[str, str], ...]:
        return self.requires(config) if callable(self.requires) else self.requires
