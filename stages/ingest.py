"""Ingest: problems from the Hub, local files and the built-in generator into the ``problems`` table.

A row that cannot be a problem (no question, wrong types, oversized text, unreadable line, a
question already seen from the same source) goes to ``rejected`` with its location and reason.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from pydantic import Field

from schemas.ids import canonical_json, problem_id
from schemas.tables import PROBLEMS
from schemas.validate import Invalid, rejected_table, string_list, text_field
from stages.contract import Context, Inputs, Output, StageConfig
from stages.sources.read import Source, SourceRow, mapped, read_source

FIELDS = ("question", "answer", "answer_type", "choices", "tests", "solution", "domain", "level")


class IngestConfig(StageConfig):
    sources: list[Source] = Field(min_length=1, description="where problems come from")
    max_question_chars: int = Field(20_000, gt=0)
    max_answer_chars: int = Field(5_000, gt=0)
    max_solution_chars: int = Field(200_000, gt=0)
    keep_metadata: bool = Field(True, description="keep unmapped source columns as JSON in 'metadata'")
    batch_rows: int = Field(10_000, gt=0, description="rows per written part")


def ingest(inputs: Inputs, config: IngestConfig, ctx: Context, out: Output) -> None:
    seen: dict[str, str] = {}  # problem_id -> where first seen; ids are short, a million fit easily
    rows: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    for src in config.sources:
        required = tuple(dict.fromkeys((src.columns.get("question", "question"), *src.columns.values())))
        for item in read_source(src, sample=ctx.sample, seed=ctx.seed, required=required):
            out.consumed(1)
            problem = to_problem(item, src.columns, src.answer_type, src.domain, config)
            if isinstance(problem, Invalid):
                rejected.append(_reject(item, problem.reason, f"{item.where}: {problem.detail}"))
            elif problem["problem_id"] in seen:
                first = seen[problem["problem_id"]]
                rejected.append(_reject(item, "duplicate_id", f"{item.where}: same question as {first}",
                                        related_id=problem["problem_id"]))
            else:
                seen[problem["problem_id"]] = item.where
                rows.append(problem)
            if len(rows) >= config.batch_rows:
                out.write(pa.Table.from_pylist(rows, schema=PROBLEMS))
                rows = []
            if len(rejected) >= config.batch_rows:
                out.reject(rejected_table(rejected))
                rejected = []
    if rows:
        out.write(pa.Table.from_pylist(rows, schema=PROBLEMS))
    if rejected:
        out.reject(rejected_table(rejected))


def to_problem(item: SourceRow, columns: dict[str, str], answer_type: str, domain: str | None,
               config: IngestConfig) -> dict[str, Any] | Invalid:
    if item.fields is None:
        return Invalid("unreadable", item.error or "unreadable row")
    row = item.fields
    view = _view(row, columns)
    question = text_field(view, "question", required=True, max_chars=config.max_question_chars)
    answer = text_field(view, "answer", required=False, max_chars=config.max_answer_chars,
                        allow_numbers=True)
    solution = text_field(view, "solution", required=False,
                          max_chars=config.max_solution_chars)
    kind = text_field(view, "answer_type", required=False, max_chars=32)
    dom = text_field(view, "domain", required=False, max_chars=64)
    level = text_field(view, "level", required=False, max_chars=64, allow_numbers=True)
    choices = string_list(view, "choices", max_chars=config.max_answer_chars * 26)
    checked = {"question": question, "answer": answer, "solution": solution, "answer_type": kind,
               "domain": dom, "level": level, "choices": choices}
    for field, value in checked.items():
        if isinstance(value, Invalid):  # name the source column too, when the recipe maps it
            mapped_from = f" (source column '{columns[field]}')" if field in columns else ""
            return Invalid(value.reason, value.detail + mapped_from)
    tests = mapped(row, columns, "tests")
    used = {columns.get(f, f) for f in FIELDS}
    extra = {k: v for k, v in row.items() if k not in used}
    return {
        "problem_id": problem_id(question, item.source["dataset"]),
        "question": question,
        "answer": answer,
        "answer_type": kind or answer_type,
        "choices": choices,
        "tests": None if tests is None else (tests if isinstance(tests, str) else canonical_json(tests)),
        "solution": solution,
        "domain": dom or domain,
        "level": level,
        "source": item.source,
        "metadata": canonical_json(extra) if config.keep_metadata and extra else None,
    }


def _view(row: dict[str, Any], columns: dict[str, str]) -> dict[str, Any]:
    return {f: mapped(row, columns, f) for f in FIELDS}


def _reject(item: SourceRow, reason: str, detail: str, related_id: str | None = None) -> dict[str, Any]:
    return {"table": "source", "reason": reason, "detail": detail, "source": item.source,
            "related_id": related_id, "row": item.fields if item.fields is not None else item.raw}
