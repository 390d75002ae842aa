"""Emit: a Hub-ready folder of SFT and RL shards with provenance on every row.

``<stage dir>/data/<config>/<split>-NNNNN-of-NNNNN.parquet``. SFT is one row per trace (TRL's
``messages`` format, reasoning inside ``<think>``); RL is one row per problem with a ground truth
(verl's layout: ``data_source``, ``prompt``, ``ability``, ``reward_model``, ``extra_info``). The split
is decided by the problem id alone, so a problem never lands in both splits and keeps its split
across releases. Rows are ordered by id (content hashes: a shuffle that is the same every run).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
from pydantic import Field

from schemas.tables import RL, SFT
from schemas.validate import rejected_table
from stages.contract import Context, Inputs, Output, StageConfig
from stages.io import connect, sql_list, write_parquet

SPLITS = ("train", "test")


class EmitConfig(StageConfig):
    test_size: float = Field(0.1, ge=0, lt=1, description="share of problems in the test split")
    rows_per_shard: int = Field(50_000, gt=0)
    system_prompt: str | None = Field(None, description="system message of every SFT conversation")
    user_template: str = Field("{question}", description="the SFT user turn; {question} is the problem")
    rl_template: str = Field(
        "{question}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}.",
        description="the RL prompt; {question} is the problem",
    )


def emit(inputs: Inputs, config: EmitConfig, ctx: Context, out: Output) -> None:
    con = connect(inputs["traces"] + inputs["problems"])
    split = f"CASE WHEN ('0x' || substr(problem_id, 1, 8))::UBIGINT < {int(config.test_size * 2**32)} " \
            "THEN 'test' ELSE 'train' END"
    con.execute(f"CREATE VIEW problems AS SELECT *, {split} AS split FROM read_parquet("
                f"{sql_list(inputs['problems'])})")
    con.execute(f"CREATE VIEW traces AS SELECT * FROM read_parquet({sql_list(inputs['traces'])})")
    con.execute(f"CREATE VIEW empty_traces AS SELECT * FROM traces WHERE {_EMPTY}")
    _reject_unusable(con, out)
    con.execute("""
        CREATE VIEW sft AS SELECT t.*, p.question, p.source, p.split FROM traces t
        JOIN problems p USING (problem_id) WHERE trace_id NOT IN (SELECT trace_id FROM empty_traces)""")
    pipeline = ctx.pipeline_provenance()
    def sft_row(r: dict[str, Any], i: int) -> dict[str, Any]:
        return _sft_row(r, config, pipeline)

    _write_config(con, ctx.stage_dir, "sft", "SELECT * FROM sft", "trace_id", SFT, config.rows_per_shard,
                  sft_row)
    both = con.execute("SELECT count(*) FROM sft WHERE variant = 'concise' AND parent_trace_id IN "
                       "(SELECT trace_id FROM sft)").fetchall()[0][0]
    if both:  # a rewrite kept beside its original: offer each length as its own config too
        _write_config(con, ctx.stage_dir, "sft_long", "SELECT * FROM sft WHERE variant IS DISTINCT FROM "
                      "'concise'", "trace_id", SFT, config.rows_per_shard, sft_row)
        _write_config(con, ctx.stage_dir, "sft_concise", "SELECT * FROM sft WHERE variant = 'concise'",
                      "trace_id", SFT, config.rows_per_shard, sft_row)
    _write_config(con, ctx.stage_dir, "rl",
                  "SELECT * FROM problems WHERE answer IS NOT NULL AND problem_id IN "
                  "(SELECT problem_id FROM sft)", "problem_id", RL, config.rows_per_shard,
                  lambda r, i: _rl_row(r, i, config, pipeline))


_EMPTY = " AND ".join(f"coalesce(trim({c}), '') = ''" for c in ("reasoning", "answer", "completion"))


def _reject_unusable(con: Any, out: Output) -> None:
    """Traces that cannot become a conversation are rejected with a reason, never dropped."""
    checks = {
        "unknown_problem": ("SELECT * FROM traces WHERE problem_id NOT IN (SELECT problem_id FROM problems)",
                            "the trace's problem is not in the problems input"),
        "empty_trace": ("SELECT * FROM empty_traces WHERE problem_id IN (SELECT problem_id FROM problems)",
                        "the trace has no reasoning, answer or completion text"),
    }
    for reason, (query, detail) in checks.items():
        reader = con.sql(query).to_arrow_reader(10_000)
        for batch in reader:
            out.reject(rejected_table([
                {"table": "traces", "reason": reason, "problem_id": r["problem_id"],
                 "trace_id": r["trace_id"], "detail": detail, "row": r} for r in batch.to_pylist()]))


def _write_config(con: Any, stage_dir: str, name: str, query: str, order: str, schema: pa.Schema,
                  rows_per_shard: int, build: Callable[[dict[str, Any], int], dict[str, Any]]) -> None:
    for split in SPLITS:
        n = con.execute(f"SELECT count(*) FROM ({query}) WHERE split = '{split}'").fetchall()[0][0]
        if n == 0 and split != "train":
            continue  # an empty train shard still goes out: a config must load, even if empty
        shards = max(1, math.ceil(n / rows_per_shard))
        reader = con.cursor().sql(f"SELECT * FROM ({query}) WHERE split = '{split}' ORDER BY {order}"
                         ).to_arrow_reader(rows_per_shard)
        rows = _rows(reader)
        for shard in range(shards):
            take = min(rows_per_shard, n - shard * rows_per_shard)
            built = [build(next(rows), shard * rows_per_shard + i) for i in range(take)]
            path = f"{stage_dir}/data/{name}/{split}-{shard:05d}-of-{shards:05d}.parquet"
            write_parquet(pa.Table.from_pylist(built, schema=schema), path, schema)


def _rows(reader: pa.RecordBatchReader) -> Iterator[dict[str, Any]]:
    for batch in reader:
        yield from batch.to_pylist()


def _sft_row(r: dict[str, Any], config: EmitConfig, pipeline: dict[str, str]) -> dict[str, Any]:
    messages = [{"role": "system", "content": config.system_prompt}] if config.system_prompt else []
    messages.append({"role": "user", "content": config.user_template.format(question=r["question"])})
    messages.append({"role": "assistant", "content": assistant_turn(r["reasoning"], r["answer"],
                                                                     r["completion"])})
    return {
        "messages": messages, "problem_id": r["problem_id"], "trace_id": r["trace_id"],
        "variant": r["variant"], "reasoning_tokens": r["reasoning_tokens"],
        "answer_tokens": r["answer_tokens"],
        "provenance": {"source": r["source"], "teacher": r["teacher"], "rewrite": r["rewrite"],
                       "checkers": r["checkers"] or [], "pipeline": pipeline},
    }


def _rl_row(r: dict[str, Any], index: int, config: EmitConfig, pipeline: dict[str, str]) -> dict[str, Any]:
    return {
        "data_source": r["source"]["dataset"],
        "prompt": [{"role": "user", "content": config.rl_template.format(question=r["question"])}],
        "ability": r["domain"] or r["answer_type"],
        "reward_model": {"style": "rule", "ground_truth": r["answer"]},
        "extra_info": {"split": r["split"], "index": index, "problem_id": r["problem_id"]},
        "problem_id": r["problem_id"], "answer_type": r["answer_type"], "ground_truth": r["answer"],
        "provenance": {"source": r["source"], "teacher": None, "rewrite": None, "checkers": [],
                       "pipeline": pipeline},
    }


def assistant_turn(reasoning: str | None, answer: str | None, completion: str | None) -> str:
    """The assistant message: reasoning inside <think>, then the answer; a raw completion if unparsed."""
    if reasoning is None and answer is None:
        return completion or ""
    return f"<think>\n{(reasoning or '').strip()}\n</think>\n\n{(answer or '').strip()}"
