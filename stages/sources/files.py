"""Local or fsspec files (JSONL, Parquet, CSV; globs) as a stream of rows with exact locations.

JSONL is read line by line so a bad line is reported by its line number and kept in ``rejected``
rather than failing the whole file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, Literal

import fsspec
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from fsspec.utils import infer_compression

Format = Literal["jsonl", "parquet", "csv"]
_SUFFIXES: dict[str, Format] = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
                                ".parquet": "parquet", ".csv": "csv"}


@dataclass(frozen=True)
class Row:
    """One source row: where it came from and its fields, or why it could not be read."""

    file: str
    index: int  # 0-based row index; for JSONL the line number is index + 1
    fields: dict[str, Any] | None
    raw: str | None = None  # the unparsable text, when fields is None
    error: str | None = None


def expand(paths: list[str]) -> list[str]:
    """Globs to a sorted, de-duplicated file list; an empty match is an error, not an empty dataset."""
    files: list[str] = []
    for pattern in paths:
        fs, _, matches = fsspec.get_fs_token_paths(pattern)
        if not matches:
            raise FileNotFoundError(f"no file matches '{pattern}'")
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        files += [m if protocol == "file" else f"{protocol}://{m}" for m in matches]
    return sorted(dict.fromkeys(files))


def detect_format(path: str, fmt: Format | None) -> Format:
    if fmt:
        return fmt
    name = path.removesuffix(".gz").removesuffix(".zst")
    for suffix, found in _SUFFIXES.items():
        if name.endswith(suffix):
            return found
    raise ValueError(f"{path}: cannot tell the format from the name; set 'format' (jsonl, parquet or csv)")


def count_rows(path: str, fmt: Format) -> int:
    if fmt == "parquet":
        with fsspec.open(path, "rb") as f:
            return pq.ParquetFile(f).metadata.num_rows
    return sum(1 for _ in read_rows(path, fmt))


def read_rows(path: str, fmt: Format, required_columns: tuple[str, ...] = ()) -> Iterator[Row]:
    if fmt == "jsonl":
        yield from _jsonl(path)
        return
    with fsspec.open(path, "rb", compression="infer") as f:
        if fmt == "parquet":
            reader = pq.ParquetFile(f)
            _check_columns(path, reader.schema_arrow.names, required_columns)
            batches = reader.iter_batches(batch_size=4096)
        else:
            reader = pacsv.open_csv(f)
            _check_columns(path, reader.schema.names, required_columns)
            batches = reader
        index = 0
        for batch in batches:
            for fields in batch.to_pylist():
                yield Row(path, index, fields)
                index += 1


def _open_binary(path: str) -> IO[bytes]:
    """Plain local files open without fsspec, which seeks and so cannot read pipes or /dev/stdin."""
    if "://" not in path and infer_compression(path) is None:
        return open(path, "rb")
    return fsspec.open(path, "rb", compression="infer").open()


def _jsonl(path: str) -> Iterator[Row]:
    with _open_binary(path) as f:
        for index, data in enumerate(f):
            try:  # decode line by line: one bad byte rejects its line, not the whole file
                line = data.decode("utf-8")
            except UnicodeDecodeError as e:
                raw = data.decode("utf-8", errors="backslashreplace").rstrip("\r\n")
                yield Row(path, index, None, raw=raw, error=f"invalid UTF-8 at byte {e.start}: {e.reason}")
                continue
            if not line.strip():  # blank lines hold no row
                continue
            try:
                fields = json.loads(line)
            except json.JSONDecodeError as e:
                yield Row(path, index, None, raw=line.rstrip("\r\n"), error=f"invalid JSON: {e.msg}")
                continue
            if not isinstance(fields, dict):
                yield Row(path, index, None, raw=line.rstrip("\r\n"), error="a line must be a JSON object")
                continue
            yield Row(path, index, fields)


def _check_columns(path: str, names: list[str], required: tuple[str, ...]) -> None:
    """A column missing from a whole columnar file is a recipe mistake: say so, don't reject every row."""
    missing = [c for c in required if c not in names]
    if missing:
        raise KeyError(f"{path}: column(s) {missing} not found; the file has: {', '.join(names)}")
