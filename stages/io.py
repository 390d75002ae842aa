"""Reading and writing tables the same way everywhere: deterministic Parquet, DuckDB over parts."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence

import duckdb
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.tables import with_version

PARQUET_OPTIONS = {"compression": "zstd", "compression_level": 3, "row_group_size": 10_000,
                   "write_statistics": True}


def open_location(url: str) -> tuple[fsspec.AbstractFileSystem, str, bool]:
    """(filesystem, root, is local) for a path or fsspec URL; local roots are made absolute."""
    fs, root = fsspec.core.url_to_fs(url)
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    local = "file" in protocols
    return fs, os.path.abspath(root) if local else root, local


def write_parquet(table: pa.Table, path: str, schema: pa.Schema | None = None) -> None:
    """Same table, same bytes: fixed options and no timestamps in the file."""
    if schema is not None:
        table = table.select(schema.names).cast(with_version(schema))
    with fsspec.open(path, "wb", auto_mkdir=True) as f:
        pq.write_table(table, f, **PARQUET_OPTIONS)


def parquet_columns(path: str) -> list[str]:
    """The column names of one Parquet file (local or fsspec), from its footer."""
    with fsspec.open(path, "rb") as f:
        return pq.ParquetFile(f).schema_arrow.names


def parquet_rows(files: Sequence[str]) -> int:
    """Row count from footers only: counting never reads the data."""
    total = 0
    for path in files:
        with fsspec.open(path, "rb") as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def connect(files: Sequence[str] = (), database: str = ":memory:",
            spill: str | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection that spills to a temp folder and can read the run's (fsspec) files.

    ``database`` on disk keeps tables larger than memory (dedup's features); ``spill`` names the
    spill folder (default: a new temp folder).
    """
    spill = spill or tempfile.mkdtemp(prefix="tracefoundry-duckdb-")
    con = duckdb.connect(database, config={"temp_directory": spill})
    protocols = {p.split("://", 1)[0] for p in files if "://" in p} - {"file"}
    for protocol in protocols:
        con.register_filesystem(fsspec.filesystem(protocol))
    return con


def sql_list(files: Sequence[str]) -> str:
    """A DuckDB list literal of file paths for read_parquet."""
    return "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"


def shard_range(total: int, shard: tuple[int, int] | None) -> tuple[int, int]:
    """Rows [start, stop) of shard i of N: contiguous slices, so shards in order equal the whole."""
    if shard is None:
        return 0, total
    i, n = shard
    return total * i // n, total * (i + 1) // n


def iter_rows(files: Sequence[str], batch_size: int, start: int = 0, stop: int | None = None,
              columns: list[str] | None = None) -> Iterator[pa.Table]:
    """Batches of the rows [start, stop) of a table's parts, in order, without reading the rest."""
    offset = 0
    for path in files:
        with fsspec.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            n = pf.metadata.num_rows
            if offset + n <= start or (stop is not None and offset >= stop):
                offset += n
                continue
            for batch in pf.iter_batches(batch_size=batch_size, columns=columns):
                lo, hi = offset, offset + batch.num_rows
                offset = hi
                a, b = max(lo, start), hi if stop is None else min(hi, stop)
                if a < b:
                    yield pa.Table.from_batches([batch.slice(a - lo, b - a)])
                if stop is not None and offset >= stop:
                    return
