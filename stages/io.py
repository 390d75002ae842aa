"""Reading and writing tables the same way everywhere: deterministic Parquet, DuckDB over parts."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence

import duckdb
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.tables import with_version

PARQUET_OPTIONS = {"compression": "zstd", "compression_level": 3, "row_group_size": 10_000,
                   "write_statistics": True}


def write_parquet(table: pa.Table, path: str, schema: pa.Schema | None = None) -> None:
    """Same table, same bytes: fixed options and no timestamps in the file."""
    if schema is not None:
        table = table.select(schema.names).cast(with_version(schema))
    with fsspec.open(path, "wb", auto_mkdir=True) as f:
        pq.write_table(table, f, **PARQUET_OPTIONS)


def parquet_rows(files: Sequence[str]) -> int:
    """Row count from footers only: counting never reads the data."""
    total = 0
    for path in files:
        with fsspec.open(path, "rb") as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def connect(files: Sequence[str] = ()) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection that spills to a temp folder and can read the run's (fsspec) files."""
    con = duckdb.connect(config={"temp_directory": tempfile.mkdtemp(prefix="tracefoundry-duckdb-")})
    protocols = {p.split("://", 1)[0] for p in files if "://" in p} - {"file"}
    for protocol in protocols:
        con.register_filesystem(fsspec.filesystem(protocol))
    return con


def sql_list(files: Sequence[str]) -> str:
    """A DuckDB list literal of file paths for read_parquet."""
    return "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"
