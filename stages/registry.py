"""Every stage type by name: what it reads, what it writes, how it runs. Read it like a table."""

from __future__ import annotations

from stages import (
    consistency,
    decontaminate,
    dedup,
    difficulty,
    emit,
    generate,
    ingest,
    ingest_traces,
    parse,
    reference,
    rewrite,
    verify,
)
from stages.contract import StageType

_STAGES: dict[str, StageType] = {}


def register(stage: StageType) -> StageType:
    """Add a stage type (plugins and tests add their own); a name is taken once."""
    if stage.name in _STAGES:
        raise ValueError(f"stage type '{stage.name}' is already registered")
    _STAGES[stage.name] = stage
    return stage


def get(name: str) -> StageType:
    try:
        return _STAGES[name]
    except KeyError:
        raise KeyError(f"unknown stage type '{name}'; known: {', '.join(sorted(_STAGES))}") from None


def all_stages() -> list[StageType]:
    return list(_STAGES.values())


register(StageType(
    name="ingest", kind="global", input_table=None, output_table="problems",
    config=ingest.IngestConfig, fn=ingest.ingest,
    summary="read problems from the Hub, local files or the built-in generator; reject bad rows",
))
register(StageType(
    name="ingest_traces", kind="global", input_table=None, output_table="traces",
    config=ingest_traces.IngestTracesConfig, fn=ingest_traces.ingest_traces,
    summary="read existing traces (question + completion/reasoning/answer) to curate them",
))
register(StageType(
    name="dedup_problems", kind="global", input_table="problems", output_table="problems",
    config=dedup.DedupConfig, fn=dedup.dedup, requires=dedup.requirements,
    summary="drop duplicate problems: exact, near (MinHash), semantic (embeddings); also against a release",
))
register(StageType(
    name="decontaminate", kind="batch", input_table="problems", output_table="problems",
    config=decontaminate.DecontaminateConfig, fn=decontaminate.decontaminate,
    summary="drop problems found in benchmarks (AIME, MATH-500, GPQA...): word 8-grams and fuzzy matches",
))
register(StageType(
    name="reference_traces", kind="batch", input_table="problems", output_table="traces",
    config=reference.ReferenceConfig, fn=reference.reference_traces,
    summary="turn each problem's reference solution into a trace (no teacher needed)",
))
register(StageType(
    name="generate", kind="global", input_table="problems", output_table="traces",
    config=generate.GenerateConfig, fn=generate.generate, requires=generate.requirements, shardable=True,
    summary="sample each problem from each teacher (vllm, openai, llamacpp); cached, budgeted, shardable",
))
register(StageType(
    name="parse", kind="batch", input_table="traces", output_table="traces", needs=("problems",),
    config=parse.ParseConfig, fn=parse.parse,
    summary="split reasoning from answer, extract the final answer, flag truncated and empty answers",
))
register(StageType(
    name="verify", kind="batch", input_table="traces", output_table="traces", needs=("problems",),
    config=verify.VerifyConfig, fn=verify.verify,
    summary="check final answers (math, choice, exact, numeric, code in a sandbox) and format; never drops",
))
register(StageType(
    name="consistency", kind="global", input_table="traces", output_table="problems", needs=("problems",),
    config=consistency.ConsistencyConfig, fn=consistency.consistency,
    summary="per problem: classes of equivalent answers, majority, agreement, pass rate, score CV",
))
register(StageType(
    name="difficulty", kind="global", input_table="problems", output_table="problems",
    config=difficulty.DifficultyConfig, fn=difficulty.difficulty, requires=difficulty.requirements,
    shardable=True,
    summary="a level per problem from the teacher's judgement and the pass rate, with the rule recorded",
))
register(StageType(
    name="rewrite", kind="global", input_table="traces", output_table="traces", needs=("problems",),
    config=rewrite.RewriteConfig, fn=rewrite.rewrite, requires=rewrite.requirements, shardable=True,
    counts_parent_traces=True,
    summary="rewrite verified traces to a length and structure by difficulty; keep those whose answer holds",
))
register(StageType(
    name="dedup_traces", kind="global", input_table="traces", output_table="traces",
    config=dedup.DedupConfig, fn=dedup.dedup, requires=dedup.requirements,
    summary="drop duplicate traces (exact, MinHash); keep the first, shortest verified or highest scored",
))
register(StageType(
    name="emit", kind="global", input_table="traces", output_table="traces", needs=("problems",),
    output_glob="data/sft/*.parquet", config=emit.EmitConfig, fn=emit.emit,
    summary="write Hub-ready SFT and RL shards with a problem-level train/test split",
))
