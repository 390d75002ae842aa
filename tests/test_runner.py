"""The local runner: accounting, skipping, re-running what changed, determinism and resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.accounting import AccountingError
from pipelines.recipe import parse_recipe
from pipelines.runner import Options, StageFailed, run
from pipelines.store import RunDir, RunLocked
from schemas.tables import PROBLEMS
from stages import registry
from stages.contract import Result, StageConfig, StageType

REQUIRED = {"input_table", "output_table", "rows_in", "rows_out", "rows_rejected", "rejected_by_reason",
            "fingerprint", "code_version", "started_at", "finished_at", "seconds"}


def shard_bytes(run_dir: Path) -> dict[str, bytes]:
    shards = sorted(run_dir.glob("emit/data/*/*.parquet"))
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in shards}


def statuses(reports) -> dict[str, str]:
    return {r.stage: r.status for r in reports}


def test_every_manifest_keeps_the_accounting_contract(laptop_run):
    manifests = RunDir(str(laptop_run.run_dir)).manifests()
    assert set(manifests) == {"ingest", "dedup_problems", "generate", "parse", "verify", "consistency",
                              "difficulty", "rewrite", "dedup_traces", "emit"}
    for name, m in manifests.items():
        assert set(m) >= REQUIRED, name
        assert sum(m["rejected_by_reason"].values()) == m["rows_rejected"]
        if m["input_table"] == m["output_table"] or m["input_table"] == "source":
            assert m["rows_in"] == m["rows_out"] + m["rows_rejected"], name
        else:
            assert m["parents_in"] == m["parents_with_output"] + m["parents_rejected"], name
    assert manifests["ingest"]["rows_in"] == laptop_run.sample
    dedup = manifests["dedup_problems"]  # the generator's look-alikes differ in their numbers: all stay
    assert dedup["rows_in"] == manifests["ingest"]["rows_out"] == dedup["rows_out"]
    assert dedup["stats"]["dedup"]["semantic"]["rows_embedded"] == dedup["rows_in"]
    assert manifests["generate"]["parents_in"] == dedup["rows_out"]
    assert manifests["generate"]["rows_out"] == 2 * laptop_run.sample  # two samples per problem
    assert manifests["parse"]["tokenizer"]["revision"].startswith("sha256:")
    spent = manifests["generate"]["stats"]["teachers"]["smollm2"]
    assert spent["samples"] == 2 * laptop_run.sample and spent["completion_tokens"] > 0
    # 32-token completions: most are cut off, and the manifest says how many kept rows are suspect
    assert 0 < manifests["parse"]["flags"]["truncated"] <= manifests["parse"]["rows_out"]
    verify = manifests["verify"]
    assert sum(verify["verdicts"].values()) == verify["rows_out"] == verify["rows_in"]
    assert verify["verified"] <= verify["verdicts"].get("pass", 0)
    consistency = manifests["consistency"]  # traces -> problems: counted per problem
    assert consistency["parents_in"] == consistency["rows_out"] == laptop_run.sample
    difficulty = manifests["difficulty"]
    assert sum(difficulty["stats"]["levels"].values()) == difficulty["rows_out"] == laptop_run.sample
    rewrite = manifests["rewrite"]  # counted per input trace: every one has output or a reason
    assert rewrite["parents_in"] == verify["rows_out"] == rewrite["parents_with_output"]
    attempted = sum(s["attempted"] for s in rewrite["stats"]["levels"].values())
    assert attempted == verify["verified"]
    traces = manifests["dedup_traces"]
    assert traces["rows_in"] == rewrite["rows_out"] == traces["rows_out"] + traces["rows_rejected"]
    assert manifests["emit"]["rows_in"] == traces["rows_out"]
    assert manifests["parse"]["flags"]["truncated"] == sum(
        t["finish_reason"] == "length" for t in pq.read_table(laptop_run.run_dir / "generate").to_pylist())


def test_second_run_skips_every_stage(laptop_run):
    before = {p: p.stat().st_mtime_ns for p in laptop_run.run_dir.rglob("*.parquet")}
    reports = run(laptop_run.recipe, str(laptop_run.run_dir), laptop_run.options())
    assert set(statuses(reports).values()) == {"cached"}
    assert before == {p: p.stat().st_mtime_ns for p in laptop_run.run_dir.rglob("*.parquet")}


def test_changing_one_stage_reruns_it_and_what_follows(laptop_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(laptop_run.run_dir, run_dir)
    text, options = laptop_run.text, laptop_run.options()

    emit_changed = parse_recipe(text.replace("test_size: 0.25", "test_size: 0.3"), "laptop.yaml")
    reports = run(emit_changed, str(run_dir), options)
    assert statuses(reports) == {"ingest": "cached", "dedup_problems": "cached", "generate": "cached",
                                 "parse": "cached", "verify": "cached", "consistency": "cached",
                                 "difficulty": "cached", "rewrite": "cached", "dedup_traces": "cached",
                                 "emit": "ran"}
    assert RunDir(str(run_dir)).manifest("emit")["config"]["test_size"] == 0.3

    parse_changed = parse_recipe(text.replace("inputs: [generate, dedup_problems]",
                                              "inputs: [generate, dedup_problems]\n    reject: [truncated]"),
                                 "laptop.yaml")
    reports = run(parse_changed, str(run_dir), options)
    assert statuses(reports) == {"ingest": "cached", "dedup_problems": "cached", "generate": "cached",
                                 "parse": "ran", "verify": "ran", "consistency": "ran", "difficulty": "ran",
                                 "rewrite": "ran", "dedup_traces": "ran", "emit": "ran"}


def test_force_from_and_until(laptop_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(laptop_run.run_dir, run_dir)
    opts = laptop_run.options
    reports = run(laptop_run.recipe, str(run_dir), opts(force={"rewrite"}))
    assert statuses(reports) == {"ingest": "cached", "dedup_problems": "cached", "generate": "cached",
                                 "parse": "cached", "verify": "cached", "consistency": "cached",
                                 "difficulty": "cached", "rewrite": "ran", "dedup_traces": "ran",
                                 "emit": "ran"}
    reports = run(laptop_run.recipe, str(run_dir), opts(from_stage="emit"))
    assert set(statuses(reports).values()) == {"not run", "ran"} and statuses(reports)["emit"] == "ran"
    reports = run(laptop_run.recipe, str(tmp_path / "fresh"), opts(until="ingest"))
    assert statuses(reports)["ingest"] == "ran" and set(statuses(reports).values()) == {"ran", "not run"}
    with pytest.raises(ValueError, match=r"upstream stage '\w+' has no up-to-date output"):
        run(laptop_run.recipe, str(tmp_path / "fresh"), opts(from_stage="emit"))
    with pytest.raises(KeyError, match="--force nope: no such stage"):
        run(laptop_run.recipe, str(run_dir), opts(force={"nope"}))


def test_two_runs_give_byte_identical_shards(laptop_run, tmp_path):
    # other workers than the first; completions come from the shared request cache
    run(laptop_run.recipe, str(tmp_path / "again"), laptop_run.options(workers=1))
    first, second = shard_bytes(laptop_run.run_dir), shard_bytes(tmp_path / "again")
    assert first and first == second


# --- a run killed inside a stage resumes and gives the same shards -----------------------------------

RESUME_RECIPE = """\
name: resume
seed: 3
stages:
  - name: ingest
    uses: ingest
    batch_rows: 5
    sources:
      - kind: files
        paths: ["{path}"]
        name: resume-data
  - name: reference_traces
    uses: reference_traces
    inputs: [ingest]
  - name: emit
    uses: emit
    inputs: [reference_traces, ingest]
    rows_per_shard: 7
"""


def problem_lines(n: int) -> list[str]:
    return [json.dumps({"question": f"What is {i} + {i + 1}?", "answer": str(2 * i + 1),
                        "solution": f"{i} + {i + 1} = {2 * i + 1}."}) + "\n" for i in range(n)]


def test_run_killed_inside_a_stage_resumes_to_the_same_shards(tmp_path):
    lines = problem_lines(40)
    data = tmp_path / "problems.jsonl"
    os.mkfifo(data)  # ingest blocks on this pipe, so the kill lands inside the stage for sure
    recipe_file = tmp_path / "resume.yaml"
    recipe_file.write_text(RESUME_RECIPE.format(path=data))
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "pipelines.cli", "run", str(recipe_file), "--run-dir", str(run_dir),
           "--no-progress", "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    feeder = threading.Thread(target=_feed, args=(data, lines[:20]), daemon=True)
    feeder.start()
    deadline = time.monotonic() + 60
    while not (run_dir / "ingest" / "part-00001.parquet").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "ingest never wrote its second part"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    feeder.join(timeout=5)
    assert not (run_dir / "ingest" / "_manifest.json").exists()
    assert (run_dir / "_lock").exists()  # left behind by the killed process

    data.unlink()
    data.write_text("".join(lines))
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    manifest = RunDir(str(run_dir)).manifest("ingest")
    assert manifest["rows_in"] == manifest["rows_out"] == 40
    assert sorted(p.name for p in (run_dir / "ingest").glob("part-*.parquet")) == \
        [f"part-{i:05d}.parquet" for i in range(8)]

    clean = subprocess.run([*cmd[:-5], "--run-dir", str(tmp_path / "clean"), "--no-progress"],
                           capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0, clean.stderr
    assert shard_bytes(run_dir) == shard_bytes(tmp_path / "clean")
    assert len(shard_bytes(run_dir)) >= 6  # several shards per config: sharding is exercised


def _feed(path: Path, lines: list[str]) -> None:
    with open(path, "w") as f:
        for line in lines:
            f.write(line)
            f.flush()
        time.sleep(60)  # hold the pipe open: the reader must still be inside the stage when killed


# --- failures -----------------------------------------------------------------------------------------

class FlakyConfig(StageConfig):
    flag: str


def flaky(batch: pa.Table, config: FlakyConfig, ctx) -> Result:
    if Path(config.flag).exists():
        raise RuntimeError("the flag file says fail")
    return Result(batch)


def leaky(batch: pa.Table, config: StageConfig, ctx) -> Result:
    return Result(batch.slice(1))  # drops a row and says nothing


for _stage in (
    StageType("test_flaky", "fails while a flag exists", FlakyConfig, flaky, "batch", "problems", "problems"),
    StageType("test_leaky", "loses a row", StageConfig, leaky, "batch", "problems", "problems"),
):
    if _stage.name not in {s.name for s in registry.all_stages()}:
        registry.register(_stage)

SMALL = """\
name: small
stages:
  - name: ingest
    uses: ingest
    sources: [{{kind: synthetic, n: 12}}]
  - name: step
    uses: {uses}
    inputs: [ingest]
{extra}"""


def test_failed_stage_keeps_earlier_outputs_and_resumes(tmp_path):
    flag = tmp_path / "fail"
    flag.touch()
    recipe = parse_recipe(SMALL.format(uses="test_flaky", extra=f"    flag: {flag}\n"))
    run_dir = tmp_path / "run"
    with pytest.raises(StageFailed, match=r"stage 'step' \(test_flaky\) failed: RuntimeError: the flag"):
        run(recipe, str(run_dir), Options(workers=1, progress=False))
    assert RunDir(str(run_dir)).manifest("ingest")["rows_out"] == 12
    assert RunDir(str(run_dir)).manifest("step") is None
    assert not (run_dir / "_lock").exists()  # released on failure
    flag.unlink()
    reports = run(recipe, str(run_dir), Options(workers=1, progress=False))
    assert statuses(reports) == {"ingest": "cached", "step": "ran"}


def test_a_stage_that_loses_rows_is_stopped(tmp_path):
    recipe = parse_recipe(SMALL.format(uses="test_leaky", extra=""))
    with pytest.raises(AccountingError, match="12 rows in, 11 out, 0 rejected; 1 rows vanished"):
        run(recipe, str(tmp_path / "run"), Options(workers=1, progress=False))
    assert RunDir(str(tmp_path / "run")).manifest("step") is None


def test_a_live_lock_keeps_a_second_run_out(tmp_path):
    store = RunDir(str(tmp_path / "run"))
    with store.lock(), pytest.raises(RunLocked, match="is in use by pid"):
        RunDir(str(tmp_path / "run")).lock().__enter__()


def test_batch_stage_output_schema_is_checked():
    from pipelines.runner import StageContractError, conform

    with pytest.raises(StageContractError, match="without the column"):
        conform(pa.table({"problem_id": ["a"]}), PROBLEMS, "s")


def test_a_missing_extra_fails_before_any_stage_runs(tmp_path):
    from stages.deps import MissingDependency

    needy = StageType("test_needy", "needs an extra", StageConfig, leaky, "batch", "problems", "problems",
                      requires=(("tracefoundry_no_such_module", "gpu"),))
    if needy.name not in {s.name for s in registry.all_stages()}:
        registry.register(needy)
    recipe = parse_recipe(SMALL.format(uses="test_needy", extra=""))
    with pytest.raises(MissingDependency, match=r"pip install 'tracefoundry\[gpu\]'"):
        run(recipe, str(tmp_path / "run"), Options(workers=1, progress=False))
    assert RunDir(str(tmp_path / "run")).manifest("ingest") is None
