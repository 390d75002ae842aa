"""Arrow schemas of every table a run writes.

One place defines the columns so that stages, the runner, emit and the card agree. Later stages
add columns to ``problems`` and ``traces``; they are declared here too, as optional columns, so a
reader always knows the type of a column it meets. Bump ``SCHEMA_VERSION`` when a column changes
meaning or type: it is stored in every Parquet file's schema metadata and in every fingerprint.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = "4"

SOURCE = pa.struct(
    [
        ("dataset", pa.string()),  # Hub id, file path, or "synthetic"
        ("config", pa.string()),
        ("split", pa.string()),
        ("revision", pa.string()),
        ("row", pa.int64()),  # row index in that source (line number - 1 for JSONL)
    ]
)

TEACHER = pa.struct(
    [
        ("backend", pa.string()),  # vllm | openai | llamacpp | reference | ingest
        ("model", pa.string()),
        ("revision", pa.string()),  # model revision or file hash
        ("sampling_params", pa.string()),  # canonical JSON
        ("seed", pa.int64()),
        ("prompt_template_hash", pa.string()),
    ]
)

REWRITE = pa.struct(
    [
        ("model", pa.string()),
        ("template", pa.string()),
        ("difficulty", pa.string()),
        ("budget", pa.int64()),
    ]
)

CHECK = pa.struct([("name", pa.string()), ("version", pa.string()), ("verdict", pa.string())])

PIPELINE = pa.struct(
    [
        ("recipe", pa.string()),
        ("config_fingerprint", pa.string()),
        ("code_version", pa.string()),
        ("run_id", pa.string()),
    ]
)

PROVENANCE = pa.struct(
    [
        ("source", SOURCE),
        ("teacher", TEACHER),
        ("rewrite", REWRITE),
        ("checkers", pa.list_(CHECK)),
        ("pipeline", PIPELINE),
    ]
)

PROBLEMS = pa.schema(
    [
        ("problem_id", pa.string()),
        ("question", pa.string()),
        ("answer", pa.string()),  # reference answer; null when the source has none
        ("answer_type", pa.string()),  # math | choice | numeric | exact | code | text
        ("choices", pa.list_(pa.string())),
        ("tests", pa.string()),  # code tests as JSON
        ("solution", pa.string()),  # reference worked solution, when the source has one
        ("domain", pa.string()),
        ("level", pa.string()),  # the source's own difficulty label, if any
        ("source", SOURCE),
        ("metadata", pa.string()),  # unmapped source columns, canonical JSON
        # consistency (per problem, over its verified samples); null until that stage runs
        ("n_samples", pa.int64()),
        ("n_clusters", pa.int64()),  # classes of equivalent final answers, by the checker
        ("majority_answer", pa.string()),
        ("agreement", pa.float64()),  # share of samples in the majority class
        ("pass_rate", pa.float64()),  # share of samples verified against the reference
        ("score_mean", pa.float64()),
        ("score_cv", pa.float64()),  # coefficient of variation of per-sample scores (DeepDistill)
        ("pseudo_label", pa.string()),  # the majority answer where there is no reference and it agrees
        # difficulty: the level used downstream, the teacher's judgement, and the rule that chose
        ("difficulty", pa.string()),
        ("difficulty_judged", pa.string()),  # a level, or "unknown" after malformed judgements
        ("difficulty_rule", pa.string()),  # e.g. "pass_rate 0.25 over 8 samples -> hard (judged medium)"
    ]
)

TRACES = pa.schema(
    [
        ("trace_id", pa.string()),
        ("problem_id", pa.string()),
        ("parent_trace_id", pa.string()),
        ("variant", pa.string()),  # original | concise | reference
        ("sample_index", pa.int64()),
        ("teacher", TEACHER),
        ("completion", pa.string()),  # the raw text as the teacher returned it
        ("reasoning", pa.string()),
        ("answer", pa.string()),  # the final-answer text shown after the reasoning
        ("final_answer", pa.string()),  # the extracted answer a checker compares
        ("finish_reason", pa.string()),
        ("flags", pa.list_(pa.string())),  # parse findings: truncated, empty_answer, unclosed_reasoning, ...
        ("prompt_tokens", pa.int64()),  # as the teacher reported them
        ("completion_tokens", pa.int64()),
        ("reasoning_tokens", pa.int64()),
        ("answer_tokens", pa.int64()),
        ("rewrite", REWRITE),
        ("checkers", pa.list_(CHECK)),
        # verify: never drops a row; sets these (see stages/verify.py for what "verified" means)
        ("verdict", pa.string()),  # pass | fail | judged_pass | judged_fail | pseudo_pass | error
        ("score", pa.float64()),  # [0, 1]; code: fraction of tests passed
        ("verified", pa.bool_()),
        ("check_reason", pa.string()),  # why not verified, for people
        ("check_details", pa.string()),  # per-checker details, canonical JSON
    ]
)

REJECTED = pa.schema(
    [
        ("stage", pa.string()),  # the instance name in the recipe
        ("stage_type", pa.string()),
        ("table", pa.string()),  # which table the row belonged to: source | problems | traces
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("problem_id", pa.string()),
        ("trace_id", pa.string()),
        ("related_id", pa.string()),  # e.g. the row a duplicate duplicates
        ("source", SOURCE),
        ("row", pa.string()),  # the dropped row as JSON, so nothing is lost
    ]
)

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])

SFT = pa.schema(
    [
        ("messages", pa.list_(MESSAGE)),
        ("problem_id", pa.string()),
        ("trace_id", pa.string()),
        ("variant", pa.string()),
        ("reasoning_tokens", pa.int64()),
        ("answer_tokens", pa.int64()),
        ("provenance", PROVENANCE),
    ]
)

RL = pa.schema(
    [
        ("data_source", pa.string()),
        ("prompt", pa.list_(MESSAGE)),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
        (
            "extra_info",
            pa.struct([("split", pa.string()), ("index", pa.int64()), ("problem_id", pa.string())]),
        ),
        ("problem_id", pa.string()),
        ("answer_type", pa.string()),
        ("ground_truth", pa.string()),
        ("provenance", PROVENANCE),
    ]
)

TABLES: dict[str, pa.Schema] = {"problems": PROBLEMS, "traces": TRACES, "rejected": REJECTED}


def with_version(schema: pa.Schema) -> pa.Schema:
    """Stamp the schema version into Parquet metadata so readers can refuse what they don't know."""
    return schema.with_metadata({b"tracefoundry.schema_version": SCHEMA_VERSION.encode()})
