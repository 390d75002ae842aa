"""Emitted shards load with `datasets`, keep the SFT and RL layouts, and never split a problem."""

from __future__ import annotations

import json
import re
from pathlib import Path

import datasets
import polars as pl
import pytest

from pipelines.store import RunDir
from stages.emit import assistant_turn

SHARD = re.compile(r"^(train|test)-(\d{5})-of-(\d{5})\.parquet$")


def load(run_dir: Path, config: str) -> datasets.DatasetDict:
    folder = run_dir / "emit" / "data" / config
    files = {split: sorted(str(p) for p in folder.glob(f"{split}-*.parquet")) for split in ("train", "test")}
    return datasets.load_dataset("parquet", data_files={k: v for k, v in files.items() if v})


@pytest.fixture(scope="module")
def shards(laptop_run):
    return load(laptop_run.run_dir, "sft"), load(laptop_run.run_dir, "rl")


def test_shards_are_named_and_numbered_like_the_hub_expects(laptop_run):
    folder = laptop_run.run_dir / "emit" / "data"
    for config in ("sft", "rl"):
        names = sorted(p.name for p in (folder / config).iterdir())
        assert names, config
        for name in names:
            split, index, total = SHARD.match(name).groups()
            siblings = [n for n in names if n.startswith(split + "-")]
            assert int(total) == len(siblings) and int(index) < int(total)


def test_sft_rows_are_trl_conversations_with_think_blocks(laptop_run, shards):
    sft, _ = shards
    manifest = RunDir(str(laptop_run.run_dir)).manifest("emit")
    deduped = RunDir(str(laptop_run.run_dir)).manifest("dedup_traces")
    assert sum(len(s) for s in sft.values()) == manifest["rows_out"] == deduped["rows_out"]
    assert deduped["rows_in"] >= 2 * laptop_run.sample
    parsed = pl.read_parquet(laptop_run.run_dir / "dedup_traces" / "*.parquet").to_dicts()
    parsed = {r["trace_id"]: r for r in parsed}
    for row in sft["train"]:
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        trace = parsed[row["trace_id"]]
        assistant = row["messages"][-1]["content"]
        assert assistant == f"<think>\n{trace['reasoning'].strip()}\n</think>\n\n{trace['answer'].strip()}"
        assert row["reasoning_tokens"] == trace["reasoning_tokens"]


def test_rl_rows_follow_verls_layout_with_ground_truth(laptop_run, shards):
    _, rl = shards
    problems = pl.read_parquet(laptop_run.run_dir / "ingest" / "part-*.parquet").to_dicts()
    answers = {p["problem_id"]: p["answer"] for p in problems}
    for split, ds in rl.items():
        for i, row in enumerate(ds):
            assert row["reward_model"] == {"style": "rule", "ground_truth": answers[row["problem_id"]]}
            assert row["prompt"][0]["role"] == "user" and "\\boxed{}" in row["prompt"][0]["content"]
            assert row["extra_info"] == {"split": split, "index": i, "problem_id": row["problem_id"]}
            assert row["data_source"] == "tracefoundry/synthetic" and row["ability"] == "math"
    listed = RunDir(str(laptop_run.run_dir)).manifest("emit")["files"]
    assert sum(n for path, n in listed.items() if path.startswith("data/rl/")) == sum(map(len, rl.values()))
    assert {p for p in listed if p.startswith("data/sft/")} == \
        {str(p.relative_to(laptop_run.run_dir / "emit")) for p in laptop_run.run_dir.glob("emit/data/sft/*")}


def test_no_problem_is_in_both_splits(shards):
    for ds in shards:
        train, test = set(ds["train"]["problem_id"]), set(ds["test"]["problem_id"])
        assert train and test and not train & test


def test_every_row_carries_provenance_without_wall_clock_time(laptop_run, shards):
    sft, rl = shards
    run_id = RunDir(str(laptop_run.run_dir)).manifest("emit")["run_id"]
    for ds in (*sft.values(), *rl.values()):
        for prov in ds["provenance"]:
            assert prov["pipeline"]["run_id"] == run_id and prov["pipeline"]["recipe"] == "laptop"
            assert prov["source"]["dataset"] == "tracefoundry/synthetic"
            assert isinstance(prov["source"]["row"], int)
    teacher = next(r for r in sft["train"] if r["variant"] == "original")["provenance"]["teacher"]
    assert teacher["backend"] == "llamacpp" and teacher["model"] == "SmolLM2-135M-Instruct"
    assert teacher["revision"].startswith("sha256:") and teacher["prompt_template_hash"]
    assert json.loads(teacher["sampling_params"])["max_tokens"] > 0
    for row in sft["train"]:  # what verify checked travels with the record
        checks = row["provenance"]["checkers"]
        assert [c["name"] for c in checks][:2] == ["math", "format"] and all(c["version"] for c in checks)


def test_assistant_turn_falls_back_to_the_raw_completion():
    assert assistant_turn(None, None, "raw text") == "raw text"
    assert assistant_turn(" think ", "42", "ignored") == "<think>\nthink\n</think>\n\n42"


def test_originals_kept_beside_their_rewrites_also_go_out_as_sft_long_and_sft_concise(tmp_path):
    from types import SimpleNamespace

    import pyarrow as pa

    from schemas.tables import PROBLEMS, TRACES
    from stages.emit import EmitConfig, emit
    from stages.io import write_parquet

    source = {"dataset": "t", "config": None, "split": None, "revision": None, "row": 0}
    problems = [{"problem_id": f"{i:032x}", "question": f"q{i}", "answer": str(i), "answer_type": "math",
                 "source": source} for i in range(4)]
    traces = []
    for p in problems:
        original = {"trace_id": "o" + p["problem_id"], "problem_id": p["problem_id"], "variant": "original",
                    "reasoning": "long " * 50, "answer": "ok", "completion": "x"}
        traces.append(original)
        if p["problem_id"].endswith(("1", "2")):
            traces.append({**original, "trace_id": "c" + p["problem_id"], "variant": "concise",
                           "parent_trace_id": original["trace_id"], "reasoning": "short"})
    write_parquet(pa.Table.from_pylist(traces, schema=TRACES), str(tmp_path / "t.parquet"), TRACES)
    write_parquet(pa.Table.from_pylist(problems, schema=PROBLEMS), str(tmp_path / "p.parquet"), PROBLEMS)
    ctx = SimpleNamespace(stage_dir=str(tmp_path / "emit"), pipeline_provenance=lambda: {
        "recipe": "r", "config_fingerprint": "f", "code_version": "0", "run_id": "x"})
    out = SimpleNamespace(reject=lambda table: None)
    emit({"traces": [str(tmp_path / "t.parquet")], "problems": [str(tmp_path / "p.parquet")]},
         EmitConfig(test_size=0.0), ctx, out)
    loaded = {c: load(tmp_path, c)["train"] for c in ("sft", "sft_long", "sft_concise")}
    assert len(loaded["sft"]) == 6 and set(loaded["sft_long"]["variant"]) == {"original"}
    assert len(loaded["sft_long"]) == 4 and len(loaded["sft_concise"]) == 2
    assert set(loaded["sft_concise"]["variant"]) == {"concise"}
