"""Counting a finished stage from its files, and checking that no row vanished.

Counts come from what was written, never from what a stage says it did: a stage cannot lose rows
without the manifest showing it.
"""

from __future__ import annotations

from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from stages.io import connect, iter_rows, parquet_rows, sql_list


class AccountingError(RuntimeError):
    """A stage lost or invented rows: a bug in that stage, so the run stops before committing it."""


def count(input_table: str, output_table: str, input_files: list[str], output_files: list[str],
          rejected_files: list[str], consumed: int | None,
          input_range: tuple[int, int] | None = None, parent_traces: bool = False) -> dict[str, Any]:
    """Counts of a stage (or of one shard: ``input_range`` is the slice of the input it read)."""
    if consumed is not None:
        rows_in = consumed
    elif input_range is not None:
        rows_in = input_range[1] - input_range[0]
    else:
        rows_in = parquet_rows(input_files)
    counts: dict[str, Any] = {
        "rows_in": rows_in,
        "rows_out": parquet_rows(output_files),
        "rows_rejected": parquet_rows(rejected_files),
        "rejected_by_reason": _by_reason(rejected_files),
    }
    if input_table != output_table and input_table != "source":
        counts.update(_parents(input_files, output_files, rejected_files, input_range))
    elif parent_traces:
        counts.update(_parent_traces(input_files, output_files, rejected_files, input_range))
    if output_table == "traces":
        counts.update(_trace_findings(output_files))
    return counts


def check(stage: str, input_table: str, output_table: str, counts: dict[str, Any]) -> None:
    if "parents_in" in counts:
        a, b, c = counts["parents_in"], counts["parents_with_output"], counts["parents_rejected"]
        if a != b + c:
            raise AccountingError(
                f"stage '{stage}' ({input_table} -> {output_table}): {a} problems in, {b} with output, "
                f"{c} rejected; {a - b - c} vanished without a reason")
        return
    a, b, c = counts["rows_in"], counts["rows_out"], counts["rows_rejected"]
    if a != b + c:
        raise AccountingError(f"stage '{stage}': {a} rows in, {b} out, {c} rejected; "
                              f"{a - b - c} rows vanished (or appeared) without a reason")


def _by_reason(files: list[str]) -> dict[str, int]:
    if not files:
        return {}
    rows = connect(files).execute(
        f"SELECT reason, count(*) FROM read_parquet({sql_list(files)}) GROUP BY reason ORDER BY reason"
    ).fetchall()
    return {reason: n for reason, n in rows}


def _input_relation(con: Any, files: list[str], input_range: tuple[int, int] | None, column: str) -> str:
    """SQL for one id column of the rows a stage read: all its input, or a shard's slice of it."""
    if not files:
        return f"(SELECT NULL::VARCHAR AS {column} WHERE false)"
    if input_range is None:
        return f"(SELECT {column} FROM read_parquet({sql_list(files)}))"
    parts = list(iter_rows(files, 65536, *input_range, columns=[column]))
    con.register("shard_input", pa.concat_tables(parts) if parts else
                 pa.table({column: pa.array([], pa.string())}))
    return "shard_input"


def _parent_traces(input_files: list[str], output_files: list[str], rejected_files: list[str],
                   input_range: tuple[int, int] | None) -> dict[str, int]:
    """Stages that add traces (rewrite) are counted per input trace: each has output rows naming it
    (itself, or rows whose parent_trace_id is it) or a rejected row naming it."""
    con = connect(input_files + output_files + rejected_files)
    con.execute(f"CREATE TEMP TABLE input_ids AS SELECT trace_id FROM "
                f"{_input_relation(con, input_files, input_range, 'trace_id')}")
    out = ("SELECT CASE WHEN trace_id IN (SELECT trace_id FROM input_ids) THEN trace_id "
           f"ELSE parent_trace_id END AS parent FROM read_parquet({sql_list(output_files)})") \
        if output_files else "SELECT NULL::VARCHAR AS parent WHERE false"
    rejected = f"SELECT trace_id FROM read_parquet({sql_list(rejected_files)})" if rejected_files else \
        "SELECT NULL::VARCHAR AS trace_id WHERE false"
    parents_in, with_output, parents_rejected = con.execute(f"""
        WITH outputs AS ({out}), rejects AS ({rejected})
        SELECT (SELECT count(DISTINCT trace_id) FROM input_ids),
               (SELECT count(DISTINCT parent) FROM outputs
                WHERE parent IN (SELECT trace_id FROM input_ids)),
               (SELECT count(DISTINCT trace_id) FROM rejects
                WHERE trace_id IN (SELECT trace_id FROM input_ids)
                  AND trace_id NOT IN (SELECT parent FROM outputs WHERE parent IS NOT NULL))""").fetchall()[0]
    return {"parents_in": parents_in, "parents_with_output": with_output,
            "parents_rejected": parents_rejected}


def _trace_findings(files: list[str]) -> dict[str, Any]:
    """Kept traces by parse flag (truncated, empty_answer...) and, once verified, by verdict."""
    if not files:
        return {}
    with fsspec.open(files[0], "rb") as f:
        names = pq.read_schema(f).names
    if "flags" not in names:  # emit's shards are not trace parts
        return {}
    con = connect(files)
    parts = sql_list(files)
    found: dict[str, Any] = {"flags": dict(con.execute(
        f"SELECT f, count(*) FROM (SELECT unnest(flags) AS f FROM read_parquet({parts})) "
        "GROUP BY f ORDER BY f").fetchall())}
    verdicts = dict(con.execute(f"SELECT verdict, count(*) FROM read_parquet({parts}) "
                                "WHERE verdict IS NOT NULL GROUP BY verdict ORDER BY verdict").fetchall())
    if verdicts:
        found["verdicts"] = verdicts
        found["verified"] = con.execute(
            f"SELECT count(*) FROM read_parquet({parts}) WHERE verified").fetchall()[0][0]
    return found


def _parents(input_files: list[str], output_files: list[str], rejected_files: list[str],
             input_range: tuple[int, int] | None) -> dict[str, int]:
    """Fan-out and aggregating stages are counted per problem: each problem has output or a reason."""
    con = connect(input_files + output_files + rejected_files)
    read = _input_relation(con, input_files, input_range, "problem_id")

    def ids(files: list[str]) -> str:
        return f"(SELECT DISTINCT problem_id FROM read_parquet({sql_list(files)}))" if files else \
            "(SELECT NULL::VARCHAR AS problem_id WHERE false)"

    parents_in, with_output, rejected = con.execute(f"""
        SELECT (SELECT count(DISTINCT problem_id) FROM {read}),
               (SELECT count(*) FROM {ids(output_files)}),
               (SELECT count(*) FROM {ids(rejected_files)} r
                WHERE r.problem_id IS NOT NULL AND r.problem_id NOT IN {ids(output_files)})""").fetchall()[0]
    return {"parents_in": parents_in, "parents_with_output": with_output, "parents_rejected": rejected}
