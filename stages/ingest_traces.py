"""Ingest traces a team already has (e.g. another pipeline's completions) into the ``traces`` table.

A trace's ``problem_id`` is computed exactly as ``ingest`` computes it (question and source name),
so ingesting the same file as problems and as traces, under the same ``name``, links the two.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from pydantic import Field

from schemas.ids import problem_id, trace_id
from schemas.tables import TRACES
from schemas.validate import Invalid, rejected_table, text_field
from stages.contract import Context, Inputs, Output, StageConfig
from stages.sources.read import Source, SourceRow, mapped, read_source

TEXT_FIELDS = ("completion", "reasoning", "answer", "final_answer")


class IngestTracesConfig(StageConfig):
    sources: list[Source] = Field(min_length=1, description="files or datasets holding question + trace text")
    max_chars: int = Field(400_000, gt=0, description="limit per text field")
    batch_rows: int = Field(10_000, gt=0, description="rows per written part")


def ingest_traces(inputs: Inputs, config: IngestTracesConfig, ctx: Context, out: Output) -> None:
    rows: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []

    def flush() -> None:
        if rows:
            _count_tokens(rows, ctx)
            out.write(pa.Table.from_pylist(rows, schema=TRACES))
            rows.clear()
        if rejected:
            out.reject(rejected_table(rejected))
            rejected.clear()

    for src in config.sources:
        required = tuple(dict.fromkeys((src.columns.get("question", "question"), *src.columns.values())))
        for item in read_source(src, sample=ctx.sample, seed=ctx.seed, required=required):
            out.consumed(1)
            trace = to_trace(item, src.columns, config.max_chars)
            if isinstance(trace, Invalid):
                rejected.append({"table": "source", "reason": trace.reason, "detail": f"{item.where}: "
                                 f"{trace.detail}", "source": item.source,
                                 "row": item.fields if item.fields is not None else item.raw})
            else:
                rows.append(trace)
            if len(rows) >= config.batch_rows or len(rejected) >= config.batch_rows:
                flush()
    flush()


def to_trace(item: SourceRow, columns: dict[str, str], max_chars: int) -> dict[str, Any] | Invalid:
    if item.fields is None:
        return Invalid("unreadable", item.error or "unreadable row")
    view = {f: mapped(item.fields, columns, f) for f in ("question", "model", "finish_reason", *TEXT_FIELDS)}
    question = text_field(view, "question", required=True, max_chars=max_chars)
    if isinstance(question, Invalid):
        return question
    texts = {f: text_field(view, f, required=False, max_chars=max_chars, allow_numbers=f != "completion")
             for f in TEXT_FIELDS}
    for value in texts.values():
        if isinstance(value, Invalid):
            return value
    if not any((v or "").strip() for v in texts.values()):
        return Invalid("empty_trace", f"none of the fields {list(TEXT_FIELDS)} has text")
    dataset = item.source["dataset"]
    pid = problem_id(question, dataset)
    model = view["model"] if isinstance(view["model"], str) and view["model"] else dataset
    return {
        "trace_id": trace_id(pid, f"ingest:{dataset}", item.source["row"]),
        "problem_id": pid,
        "variant": "original",
        "sample_index": 0,
        "teacher": {"backend": "ingest", "model": model, "revision": item.source["revision"],
                    "sampling_params": None, "seed": None, "prompt_template_hash": None},
        **texts,
        "finish_reason": view["finish_reason"] if isinstance(view["finish_reason"], str) else None,
    }


def _count_tokens(rows: list[dict[str, Any]], ctx: Context) -> None:
    count = ctx.tokenizer.count
    for key, field in (("reasoning_tokens", "reasoning"), ("answer_tokens", "answer")):
        for row, n in zip(rows, count([r[field] for r in rows]), strict=True):
            row[key] = n
