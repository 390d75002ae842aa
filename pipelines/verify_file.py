"""``tracefoundry verify FILE``: check the answers in a dataset you already have.

Reads a JSONL or Parquet file, checks each row's prediction against its gold answer with one
checker, and writes the rows with ``verdict``, ``score`` and ``check_reason`` beside the input
(``data.jsonl`` -> ``data.verdicts.jsonl``), so curating existing data needs no recipe.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.json as pj
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from stages.checkers import get_checker
from stages.checkers.base import CheckItem
from stages.parse import extract_final_answer
from stages.verify import VerifyConfig


def verify_file(path: str, checker: str, gold_col: str = "answer", pred_col: str = "prediction",
                choices_col: str | None = None, tests_col: str | None = None, extract: bool = False,
                out: str | None = None, batch_rows: int = 1000,
                progress: bool = True) -> tuple[str, Counter]:
    """Write the verdicts file; return its path and the count of rows per verdict."""
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    fmt = _format(source)
    target = Path(out) if out else source.with_name(f"{source.name.split('.')[0]}.verdicts.{fmt}")
    table = pq.read_table(source) if fmt == "parquet" else _read_jsonl(source)
    needed = [c for c in (pred_col, None if checker == "code" else gold_col, choices_col, tests_col) if c]
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: no column(s) {missing}; columns: {table.column_names} "
                         "(name yours with --gold-col / --pred-col)")
    config = VerifyConfig()
    check = get_checker(checker, getattr(config, checker))
    counts: Counter = Counter()
    parts = []
    bar = tqdm(total=table.num_rows, unit="row", desc=f"verify ({checker})", disable=not progress)
    for batch in _batches(table, batch_rows):
        rows = batch.to_pylist()
        items = [_item(r, checker, gold_col, pred_col, choices_col, tests_col, extract) for r in rows]
        results = check.check(items)
        counts.update(c.verdict for c in results)
        parts.append(batch.append_column("verdict", pa.array([c.verdict for c in results], pa.string()))
                     .append_column("score", pa.array([float(c.score) for c in results], pa.float64()))
                     .append_column("check_reason", pa.array([c.reason for c in results], pa.string())))
        bar.update(batch.num_rows)
    bar.close()
    result = pa.concat_tables(parts) if parts else table
    if fmt == "parquet":
        pq.write_table(result, target, compression="zstd")
    else:
        with open(target, "w", encoding="utf-8") as f:
            for row in result.to_pylist():
                f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    return str(target), counts


def _item(row: dict, checker: str, gold_col: str, pred_col: str, choices_col: str | None,
          tests_col: str | None, extract: bool) -> CheckItem:
    choices = tuple(row[choices_col]) if choices_col and row.get(choices_col) else None
    prediction = row.get(pred_col)
    if extract and prediction is not None:  # a whole completion: take its final answer as parse does
        prediction = extract_final_answer(str(prediction), checker, list(choices) if choices else None)
    tests = row.get(tests_col) if tests_col else None
    return CheckItem(prediction=None if prediction is None else str(prediction),
                     gold=None if row.get(gold_col) is None else str(row[gold_col]), choices=choices,
                     tests=tests if isinstance(tests, str) or tests is None else json.dumps(tests))


def _format(path: Path) -> str:
    suffixes = "".join(path.suffixes).lower()
    if suffixes.endswith(".parquet"):
        return "parquet"
    if suffixes.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    raise ValueError(f"{path}: verify reads .jsonl or .parquet files")


def _read_jsonl(path: Path) -> pa.Table:
    try:
        return pj.read_json(path)
    except pa.ArrowInvalid as e:  # pyarrow names the byte offset; say which line
        raise ValueError(f"{path}: not valid JSON lines: {e}") from None


def _batches(table: pa.Table, n: int) -> Iterator[pa.Table]:
    for start in range(0, table.num_rows, n):
        yield table.slice(start, n)
