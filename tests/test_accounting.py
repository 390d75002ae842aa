"""Per-parent accounting of stages that add traces (rewrite): every input trace has output or a reason."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipelines import accounting
from schemas.tables import REJECTED, TRACES
from stages.io import write_parquet


def write(path, rows, schema=TRACES) -> list[str]:
    write_parquet(pa.Table.from_pylist(rows, schema=schema), str(path), schema)
    return [str(path)]


def test_rewrites_beside_replacing_and_rejected_are_counted_per_input_trace(tmp_path):
    inputs = write(tmp_path / "in.parquet", [
        {"trace_id": "a", "problem_id": "p"}, {"trace_id": "b", "problem_id": "p"},
        {"trace_id": "c", "problem_id": "p"}, {"trace_id": "x", "problem_id": "p", "parent_trace_id": "old"}])
    outputs = write(tmp_path / "out.parquet", [
        {"trace_id": "a", "problem_id": "p"}, {"trace_id": "a2", "problem_id": "p", "parent_trace_id": "a"},
        {"trace_id": "b2", "problem_id": "p", "parent_trace_id": "b"},  # replaced its original
        {"trace_id": "x", "problem_id": "p", "parent_trace_id": "old"}])  # an earlier rewrite, passed on
    rejected = write(tmp_path / "rej.parquet", [
        {"table": "traces", "reason": "over_budget", "trace_id": "a", "problem_id": "p"},  # a has output
        {"table": "traces", "reason": "answer_changed", "trace_id": "c", "problem_id": "p"}], REJECTED)
    counts = accounting.count("traces", "traces", inputs, outputs, rejected, None, parent_traces=True)
    assert (counts["parents_in"], counts["parents_with_output"], counts["parents_rejected"]) == (4, 3, 1)
    accounting.check("rewrite", "traces", "traces", counts)  # c vanished? no: rejected with a reason

    lost = write(tmp_path / "lost.parquet", [{"trace_id": "a", "problem_id": "p"}])
    counts = accounting.count("traces", "traces", inputs, lost, rejected, None, parent_traces=True)
    with pytest.raises(accounting.AccountingError, match="vanished"):
        accounting.check("rewrite", "traces", "traces", counts)
