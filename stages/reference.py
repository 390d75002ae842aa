"""Reference traces: a problem's own worked solution as a trace, for sources that ship solutions.

Useful on its own (curate a dataset's human solutions into SFT shards) and as the teacher-free path
of a dry run: it exercises every stage after generation without a model.
"""

from __future__ import annotations

import pyarrow as pa
from pydantic import Field

from schemas.ids import digest, trace_id
from schemas.tables import TRACES
from schemas.validate import rejected_table
from stages.contract import Context, Result, StageConfig


class ReferenceConfig(StageConfig):
    answer_template: str = Field(
        "The final answer is $\\boxed{{{answer}}}$.",
        description="the answer shown after the reasoning; {answer} is the reference answer",
    )


def reference_traces(batch: pa.Table, config: ReferenceConfig, ctx: Context) -> Result:
    template_hash = digest(config.answer_template, length=16)
    rows, rejected = [], []
    for p in batch.to_pylist():
        if not (p["solution"] or "").strip():
            rejected.append({"table": "problems", "reason": "no_solution", "problem_id": p["problem_id"],
                             "detail": "the problem has no reference solution", "source": p["source"],
                             "row": p})
            continue
        answer = None if p["answer"] is None else config.answer_template.format(answer=p["answer"])
        rows.append({
            "trace_id": trace_id(p["problem_id"], "reference", 0),
            "problem_id": p["problem_id"],
            "variant": "reference",
            "sample_index": 0,
            "teacher": {"backend": "reference", "model": p["source"]["dataset"],
                        "revision": p["source"]["revision"], "sampling_params": "{}", "seed": None,
                        "prompt_template_hash": template_hash},
            "completion": p["solution"] if answer is None else f"{p['solution']}\n\n{answer}",
            "reasoning": p["solution"],
            "answer": answer,
            "final_answer": p["answer"],
            "finish_reason": "stop",
        })
    if rows:
        counts = ctx.tokenizer.count
        reasoning, answers = counts([r["reasoning"] for r in rows]), counts([r["answer"] for r in rows])
        for r, nr, na in zip(rows, reasoning, answers, strict=True):
            r["reasoning_tokens"], r["answer_tokens"] = nr, na
    return Result(pa.Table.from_pylist(rows, schema=TRACES), rejected_table(rejected))
