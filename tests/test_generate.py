"""The generate stage and sharding, through real runs against a scripted OpenAI server on loopback.

Every reply is a function of the request (the prompt and the seed) and costs a fixed number of
completion tokens, so budgets are exact and two runs that send the same requests write the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support.openai_fakes import ScriptedOpenAIServer, assert_no_teacher_threads, chat_reply

from pipelines.cli import main
from pipelines.recipe import RecipeError, load_recipe, parse_recipe
from pipelines.runner import Options, StageFailed, run
from pipelines.store import RunDir, RunLocked
from stages.generate import DEFAULT_TEMPLATE, GenerateConfig
from stages.sources.synthetic_problems import generate as synthetic_problems

N = 12
TOKENS = 10  # completion tokens of every reply
SYSTEM = "You are a careful math tutor."
BOXED = "put your final answer within \\boxed{}"


def reply(body: dict[str, Any], n: int) -> dict[str, Any]:
    """Content from the prompt and the seed only; a fixed cost, so budgets are exact."""
    user = body["messages"][-1]["content"]
    h = hashlib.sha256(f"{user}|{body['seed']}|{body['temperature']}".encode()).hexdigest()[:12]
    return chat_reply(f"<think>work {h}</think>\nThe answer is \\boxed{{{body['seed']}}}.",
                      prompt_tokens=len(user) // 4, completion_tokens=TOKENS)


@pytest.fixture
def server() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer(reply) as s:
        yield s


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    yield
    assert_no_teacher_threads()


def recipe_text(base_url: str, *, samples: int = 3, temperature: float = 0.7, budget: int | None = None,
                concurrency: int = 4, problems_per_part: int = 64, seed: int = 5, n: int = N,
                parse: bool = True, emit: bool = False, source: str | None = None) -> str:
    source = source or f"{{kind: synthetic, n: {n}}}"
    text = f"""\
name: gen
seed: {seed}
workers: 1
stages:
  - name: ingest
    uses: ingest
    sources: [{source}]
  - name: generate
    uses: generate
    inputs: [ingest]
    system_prompt: {SYSTEM}
    problems_per_part: {problems_per_part}
    teachers:
      - name: scripted
        backend: openai
        model: scripted-model
        base_url: {base_url}
        api_key_env: TF_TEST_GENERATE_KEY
        samples: {samples}
        max_tokens: 64
        temperature: {temperature}
        concurrency: {concurrency}
        max_retries: 0
"""
    if budget is not None:
        text += f"        budget: {budget}\n"
    if parse:
        text += "  - name: parse\n    uses: parse\n    inputs: [generate, ingest]\n"
    if emit:
        text += "  - name: emit\n    uses: emit\n    inputs: [parse, ingest]\n    test_size: 0.25\n"
    return text


def recipe_of(base_url: str, **kw: Any):
    return parse_recipe(recipe_text(base_url, **kw), "gen.yaml")


def opts(cache: Path, **kw: Any) -> Options:
    return Options(progress=False, request_cache=str(cache), **kw)


def statuses(reports) -> dict[str, str]:
    return {r.stage: r.status for r in reports}


def stage_bytes(run_dir: Path, stage: str = "generate") -> dict[str, bytes]:
    """Every output and rejected part of a stage, by name."""
    files = sorted((run_dir / stage).glob("part-*.parquet")) + sorted((run_dir / stage).glob("rejected/*"))
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in files}


def read_parts(run_dir: Path, stage: str = "generate", pattern: str = "part-*.parquet") -> pa.Table:
    files = sorted((run_dir / stage).glob(pattern))
    assert files, f"no {pattern} in {run_dir / stage}"
    return pa.concat_tables([pq.read_table(p) for p in files])


def rows(run_dir: Path, stage: str = "generate") -> list[dict]:
    return read_parts(run_dir, stage).select(["trace_id", "problem_id", "completion"]).to_pylist()


def manifest(run_dir: Path, stage: str = "generate") -> dict:
    found = RunDir(str(run_dir)).manifest(stage)
    assert found is not None, f"no manifest for {stage}"
    return found


def users(server: ScriptedOpenAIServer, since: int = 0) -> list[str]:
    return [b["messages"][-1]["content"] for b in server.received[since:]]


def problems(run_dir: Path) -> list[dict]:
    return read_parts(run_dir, "ingest").to_pylist()


# --- 1. rows, ids, provenance and what the server saw ------------------------------------------------

def test_every_problem_gets_each_sample_once_with_provenance(server, tmp_path):
    run_dir = tmp_path / "run"
    reports = run(recipe_of(server.base_url), str(run_dir), opts(tmp_path / "cache"))
    assert statuses(reports) == {"ingest": "ran", "generate": "ran", "parse": "ran"}
    probs = problems(run_dir)
    assert len(probs) == N
    traces = read_parts(run_dir).to_pylist()
    assert len(traces) == 3 * N
    assert Counter((t["problem_id"], t["sample_index"]) for t in traces) == \
        Counter({(p["problem_id"], i): 1 for p in probs for i in range(3)})
    assert len({t["trace_id"] for t in traces}) == 3 * N
    # problems in input order, samples in index order
    assert [(t["problem_id"], t["sample_index"]) for t in traces] == \
        [(p["problem_id"], i) for p in probs for i in range(3)]

    template_hashes = set()
    for t in traces:
        teacher = t["teacher"]
        assert teacher["backend"] == "openai" and teacher["model"] == "scripted-model"
        assert teacher["revision"] is None
        sampling = json.loads(teacher["sampling_params"])
        assert sampling["max_tokens"] == 64 and sampling["seed"] == 5 and sampling["temperature"] == 0.7
        assert teacher["seed"] == 5 + t["sample_index"]
        assert f"\\boxed{{{5 + t['sample_index']}}}" in t["completion"]
        assert t["completion_tokens"] == TOKENS and t["finish_reason"] == "stop"
        assert t["variant"] == "original" and t["parent_trace_id"] is None
        template_hashes.add(teacher["prompt_template_hash"])
    assert len(template_hashes) == 1 and len(template_hashes.pop()) == 16

    # the server got one request per sample: the system prompt, then the rendered template
    assert len(server.received) == 3 * N
    by_question = {p["question"]: p for p in probs}
    seen = Counter()
    for body in server.received:
        system, user = body["messages"]
        assert system == {"role": "system", "content": SYSTEM}
        assert user["role"] == "user"
        question, _, instruction = user["content"].rpartition("\n\n")
        assert question in by_question and BOXED in instruction
        assert user["content"] == DEFAULT_TEMPLATE.format(question=question)
        assert body["model"] == "scripted-model" and body["max_tokens"] == 64
        seen[question, body["seed"]] += 1
    assert seen == Counter({(q, 5 + i): 1 for q in by_question for i in range(3)})

    m = manifest(run_dir)
    assert m["parents_in"] == m["parents_with_output"] == N and m["parents_rejected"] == 0
    assert m["rows_out"] == 3 * N and m["rows_rejected"] == 0
    stats = m["stats"]["teachers"]["scripted"]
    assert stats["samples"] == stats["generated_samples"] == 3 * N
    assert stats["cached_samples"] == 0
    assert stats["completion_tokens"] == stats["generated_tokens"] == stats["spent"] == 3 * N * TOKENS
    assert stats["budget"] is None and stats["budget_exhausted_problems"] == 0
    assert stats["backend"] == "openai" and stats["model"] == "scripted-model"
    assert stats["backend_attempts"] == 3 * N and stats["backend_retries"] == 0
    # parse ran over what generate wrote
    assert manifest(run_dir, "parse")["rows_in"] == 3 * N


def test_choices_are_lettered_after_the_question(server, tmp_path):
    # the synthetic source has no multiple-choice problems, so a files source brings one
    data = tmp_path / "mc.jsonl"
    data.write_text(json.dumps({"question": "Which is prime?", "answer": "B",
                                "choices": ["4", "7", "9"]}) + "\n"
                    + json.dumps({"question": "What is 2 + 2?", "answer": "4"}) + "\n")
    source = f'{{kind: files, paths: ["{data}"]}}'
    run(recipe_of(server.base_url, samples=1, source=source, parse=False), str(tmp_path / "run"),
        opts(tmp_path / "cache"))
    assert sorted(users(server)) == sorted([
        DEFAULT_TEMPLATE.format(question="What is 2 + 2?"),
        DEFAULT_TEMPLATE.format(question="Which is prime?\n\nA. 4\nB. 7\nC. 9"),
    ])


# --- 2. the request cache -----------------------------------------------------------------------------

def test_request_cache_means_no_completion_is_paid_for_twice(server, tmp_path):
    cache = tmp_path / "cache"
    run(recipe_of(server.base_url), str(tmp_path / "a"), opts(cache))
    assert len(server.received) == 3 * N
    first = stage_bytes(tmp_path / "a")

    # a new run directory, the same cache: nothing sent, the same bytes
    run(recipe_of(server.base_url), str(tmp_path / "b"), opts(cache))
    assert len(server.received) == 3 * N
    assert stage_bytes(tmp_path / "b") == first
    stats = manifest(tmp_path / "b")["stats"]["teachers"]["scripted"]
    assert stats["cached_samples"] == stats["samples"] == 3 * N and stats["generated_samples"] == 0
    assert stats["completion_tokens"] == 3 * N * TOKENS
    assert "backend_attempts" not in stats  # a fully cached run never opens the backend

    # --force re-runs the stage, from the cache
    reports = run(recipe_of(server.base_url), str(tmp_path / "b"), opts(cache, force={"generate"}))
    assert statuses(reports) == {"ingest": "cached", "generate": "ran", "parse": "ran"}
    assert len(server.received) == 3 * N
    assert stage_bytes(tmp_path / "b") == first

    # problems_per_part is not part of a request: other parts, no request
    run(recipe_of(server.base_url, problems_per_part=5), str(tmp_path / "c"), opts(cache))
    assert len(server.received) == 3 * N
    assert sorted(p.name for p in (tmp_path / "c" / "generate").glob("part-*.parquet")) == \
        ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert rows(tmp_path / "c") == rows(tmp_path / "a")

    # a sampling parameter is: every request again, and other completions
    reports = run(recipe_of(server.base_url, temperature=0.3), str(tmp_path / "b"), opts(cache))
    assert statuses(reports) == {"ingest": "cached", "generate": "ran", "parse": "ran"}
    assert len(server.received) == 2 * 3 * N
    assert {b["temperature"] for b in server.received[3 * N:]} == {0.3}
    again = rows(tmp_path / "b")
    assert {r["problem_id"] for r in again} == {r["problem_id"] for r in rows(tmp_path / "a")}
    assert not {r["trace_id"] for r in again} & {r["trace_id"] for r in rows(tmp_path / "a")}
    assert not {r["completion"] for r in again} & {r["completion"] for r in rows(tmp_path / "a")}


def test_an_unreadable_cache_entry_is_sent_again(server, tmp_path):
    cache = tmp_path / "cache"
    run(recipe_of(server.base_url, samples=1, parse=False), str(tmp_path / "a"), opts(cache))
    entries = sorted(cache.glob("*/*.json"))
    assert len(entries) == N
    entries[0].write_text("{ torn")
    run(recipe_of(server.base_url, samples=1, parse=False), str(tmp_path / "b"), opts(cache))
    assert len(server.received) == N + 1
    assert stage_bytes(tmp_path / "b") == stage_bytes(tmp_path / "a")


def test_a_failed_run_keeps_what_it_got_and_resumes_with_the_rest(server, tmp_path):
    failing = [True]

    def flaky_reply(body: dict[str, Any], n: int) -> Any:
        if failing[0] and n == 5:
            return 400, {"error": {"message": "no", "type": "invalid_request_error"}}, {}
        return reply(body, n)

    server.reply = flaky_reply
    recipe, cache, run_dir = recipe_of(server.base_url, concurrency=1), tmp_path / "cache", tmp_path / "run"
    failed = r"stage 'generate' \(generate\) failed: OpenAITeacherError: .*HTTP 400"
    with pytest.raises(StageFailed, match=failed):
        run(recipe, str(run_dir), opts(cache))
    assert RunDir(str(run_dir)).manifest("generate") is None
    assert len(list(cache.glob("*/*.json"))) == 5  # every sample that came back is kept
    failing[0] = False
    reports = run(recipe, str(run_dir), opts(cache))
    assert statuses(reports) == {"ingest": "cached", "generate": "ran", "parse": "ran"}
    assert len(server.received) == 6 + 3 * N - 5  # the failed one again, and what was never asked
    stats = manifest(run_dir)["stats"]["teachers"]["scripted"]
    assert (stats["cached_samples"], stats["generated_samples"]) == (5, 3 * N - 5)
    run(recipe, str(tmp_path / "clean"), opts(tmp_path / "cache2"))
    assert stage_bytes(run_dir) == stage_bytes(tmp_path / "clean")


# --- 3. the budget ------------------------------------------------------------------------------------

def test_budget_keeps_a_prefix_of_problems_and_a_raise_sends_only_what_is_missing(server, tmp_path):
    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    reports = run(recipe_of(server.base_url, samples=2, budget=70, concurrency=1), str(run_dir), opts(cache))
    assert statuses(reports) == {"ingest": "ran", "generate": "ran", "parse": "ran"}
    ids = [p["problem_id"] for p in problems(run_dir)]
    # 0, 20, 40, 60 < 70: four problems start; 80 >= 70: the rest are cut
    assert len(server.received) == 8  # one request at a time: nothing past the budget was sent
    traces = read_parts(run_dir).to_pylist()
    assert [(t["problem_id"], t["sample_index"]) for t in traces] == [(p, i) for p in ids[:4] for i in (0, 1)]
    rejected = read_parts(run_dir, pattern="rejected/part-*.parquet").to_pylist()
    assert [r["problem_id"] for r in rejected] == ids[4:]
    assert {r["reason"] for r in rejected} == {"budget_exhausted"}
    assert {r["stage"] for r in rejected} == {"generate"}
    assert all("spent 80 of its budget of 70" in r["detail"] for r in rejected)
    m = manifest(run_dir)
    assert (m["parents_in"], m["parents_with_output"], m["parents_rejected"]) == (12, 4, 8)
    assert m["parents_in"] == m["parents_with_output"] + m["parents_rejected"]
    assert m["rejected_by_reason"] == {"budget_exhausted": 8} and m["rows_out"] == 8
    stats = m["stats"]["teachers"]["scripted"]
    assert (stats["spent"], stats["budget"], stats["samples"], stats["budget_exhausted_problems"]) == \
        (80, 70, 8, 8)
    assert manifest(run_dir, "parse")["rows_in"] == 8

    # raise it: the 16 missing samples are sent, nothing else, and the output is a run without budget
    reports = run(recipe_of(server.base_url, samples=2, budget=1000, concurrency=1), str(run_dir),
                  opts(cache))
    assert statuses(reports) == {"ingest": "cached", "generate": "ran", "parse": "ran"}
    assert len(server.received) == 24
    assert Counter((u, b["seed"]) for u, b in zip(users(server), server.received, strict=True)).most_common(
        1)[0][1] == 1  # no sample was asked for twice
    stats = manifest(run_dir)["stats"]["teachers"]["scripted"]
    assert (stats["samples"], stats["cached_samples"], stats["generated_samples"], stats["spent"]) == \
        (24, 8, 16, 240)
    assert not list((run_dir / "generate").glob("rejected/*"))
    run(recipe_of(server.base_url, samples=2, concurrency=1), str(tmp_path / "free"), opts(tmp_path / "c2"))
    assert stage_bytes(run_dir) == stage_bytes(tmp_path / "free")


def test_budget_cut_does_not_depend_on_concurrency(server, tmp_path):
    def slow_reply(body: dict[str, Any], n: int) -> dict[str, Any]:
        time.sleep(0.002 * (n % 3))  # out of order, so later samples may land first
        return reply(body, n)

    server.reply = slow_reply
    outputs, sent = {}, {}
    for concurrency in (1, 8):
        before = len(server.received)
        run_dir = tmp_path / f"c{concurrency}"
        run(recipe_of(server.base_url, samples=2, budget=70, concurrency=concurrency, parse=False),
            str(run_dir), opts(tmp_path / f"cache{concurrency}"))
        outputs[concurrency] = stage_bytes(run_dir)
        sent[concurrency] = len(server.received) - before
        assert manifest(run_dir)["stats"]["teachers"]["scripted"]["spent"] == 80
    assert outputs[1] == outputs[8]
    assert sent[1] == 8
    # with requests in flight a few past the cut may be sent (and cached), never one sample twice
    assert 8 <= sent[8] <= 8 + 8


def test_budget_spans_parts(server, tmp_path):
    # problems_per_part 3: the budget (90 tokens = 4.5 problems) runs out in the second part
    run_dir = tmp_path / "run"
    run(recipe_of(server.base_url, samples=2, budget=90, concurrency=1, problems_per_part=3, parse=False),
        str(run_dir), opts(tmp_path / "cache"))
    ids = [p["problem_id"] for p in problems(run_dir)]
    assert [t["problem_id"] for t in read_parts(run_dir).to_pylist()] == [p for p in ids[:5] for _ in (0, 1)]
    assert [r["problem_id"] for r in read_parts(run_dir, pattern="rejected/part-*.parquet").to_pylist()] == \
        ids[5:]
    assert len(server.received) == 10
    assert manifest(run_dir)["stats"]["teachers"]["scripted"]["spent"] == 100


# --- 4. shards ----------------------------------------------------------------------------------------

def generate_files(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "generate").iterdir())


def test_shards_then_a_whole_run_merges_them_into_the_unsharded_output(server, tmp_path):
    recipe = recipe_of(server.base_url, emit=True)
    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    reports = run(recipe, str(run_dir), opts(cache, until="ingest"))
    assert statuses(reports) == {"ingest": "ran", "generate": "not run", "parse": "not run",
                                 "emit": "not run"}
    ids = [p["problem_id"] for p in problems(run_dir)]
    for i in range(3):
        before = len(server.received)
        reports = run(recipe, str(run_dir), opts(cache, shard=(i, 3)))
        assert statuses(reports) == {"ingest": "cached", "generate": "ran", "parse": "not run",
                                     "emit": "not run"}
        assert len(server.received) - before == 4 * 3  # its slice of 4 problems, 3 samples each
        shard = RunDir(str(run_dir)).read_json("generate", f"_shard-0000{i}-of-00003.json")
        assert shard["shard"] == [i, 3] and shard["parents_in"] == 4 and shard["rows_out"] == 12
        assert [t["problem_id"] for t in read_parts(run_dir, pattern=f"part-s0000{i}of00003-*.parquet")
                .to_pylist()] == [p for p in ids[4 * i:4 * i + 4] for _ in range(3)]
    assert generate_files(run_dir) == [f"_shard-0000{i}-of-00003.json" for i in range(3)] + \
        [f"part-s0000{i}of00003-00000.parquet" for i in range(3)]
    assert not (run_dir / "parse").exists() and not (run_dir / "_lock.shard-00000-of-00003").exists()

    # a second shard task of a done shard does nothing
    reports = run(recipe, str(run_dir), opts(cache, shard=(1, 3)))
    assert statuses(reports)["generate"] == "cached" and len(server.received) == 36

    before = len(server.received)
    reports = run(recipe, str(run_dir), opts(cache))
    assert statuses(reports) == {"ingest": "cached", "generate": "ran", "parse": "ran", "emit": "ran"}
    assert len(server.received) == before  # merging sends nothing
    m = manifest(run_dir)
    assert m["shards"] == 3 and "shard" not in m
    assert (m["rows_in"], m["rows_out"], m["rows_rejected"]) == (N, 3 * N, 0)
    assert (m["parents_in"], m["parents_with_output"], m["parents_rejected"]) == (N, N, 0)
    stats = m["stats"]["teachers"]["scripted"]
    assert (stats["samples"], stats["generated_samples"], stats["spent"]) == (3 * N, 3 * N, 3 * N * TOKENS)
    assert stats["backend"] == "openai"
    assert manifest(run_dir, "parse")["rows_in"] == 3 * N
    assert manifest(run_dir, "emit")["rows_in"] == 3 * N

    whole = tmp_path / "whole"
    run(recipe, str(whole), opts(tmp_path / "cache2"))
    assert rows(run_dir) == rows(whole)
    assert rows(run_dir, "parse") == rows(whole, "parse")
    assert manifest(run_dir, "emit")["files"].keys() == manifest(whole, "emit")["files"].keys()

    # everything is up to date now
    reports = run(recipe, str(run_dir), opts(cache))
    assert set(statuses(reports).values()) == {"cached"}


def test_a_whole_run_completes_the_missing_shard_itself(server, tmp_path):
    recipe = recipe_of(server.base_url)
    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    run(recipe, str(run_dir), opts(cache, until="ingest"))
    probs = problems(run_dir)
    run(recipe, str(run_dir), opts(cache, shard=(0, 3)))
    run(recipe, str(run_dir), opts(cache, shard=(2, 3)))
    before = len(server.received)
    reports = run(recipe, str(run_dir), opts(cache))
    assert statuses(reports) == {"ingest": "cached", "generate": "ran", "parse": "ran"}
    middle = {DEFAULT_TEMPLATE.format(question=p["question"]) for p in probs[4:8]}
    assert len(server.received) - before == 12 and set(users(server, before)) == middle
    m = manifest(run_dir)
    assert m["shards"] == 3 and m["rows_out"] == 3 * N
    run(recipe, str(tmp_path / "whole"), opts(cache))
    assert rows(run_dir) == rows(tmp_path / "whole")


def test_a_forced_whole_run_starts_over_instead_of_merging_old_shards(server, tmp_path):
    recipe = recipe_of(server.base_url)
    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    run(recipe, str(run_dir), opts(cache, until="ingest"))
    for i in range(2):
        run(recipe, str(run_dir), opts(cache, shard=(i, 2)))
    run(recipe, str(run_dir), opts(cache))
    assert manifest(run_dir)["shards"] == 2
    sharded = rows(run_dir)
    reports = run(recipe, str(run_dir), opts(cache, force={"generate"}))
    assert statuses(reports) == {"ingest": "cached", "generate": "ran", "parse": "ran"}
    assert generate_files(run_dir) == ["_manifest.json", "part-00000.parquet"]
    assert "shards" not in manifest(run_dir)
    stats = manifest(run_dir)["stats"]["teachers"]["scripted"]
    assert stats["cached_samples"] == 3 * N and len(server.received) == 3 * N  # from the cache
    assert rows(run_dir) == sharded


def test_a_shard_run_needs_ingest_first(server, tmp_path):
    with pytest.raises(ValueError, match=r"stage 'generate' reads 'ingest', which is not complete.*--until "
                                         r"ingest"):
        run(recipe_of(server.base_url), str(tmp_path / "run"), opts(tmp_path / "cache", shard=(0, 3)))
    assert not server.received


def test_strays_of_another_shard_count_are_removed_by_the_merge(server, tmp_path):
    recipe = recipe_of(server.base_url, parse=False)
    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    run(recipe, str(run_dir), opts(cache, until="ingest"))
    run(recipe, str(run_dir), opts(cache, shard=(0, 2)))
    for i in range(3):
        run(recipe, str(run_dir), opts(cache, shard=(i, 3)))
    assert "part-s00000of00002-00000.parquet" in generate_files(run_dir)
    run(recipe, str(run_dir), opts(cache))
    assert generate_files(run_dir) == ["_manifest.json", *(f"_shard-0000{i}-of-00003.json" for i in range(3)),
                                       *(f"part-s0000{i}of00003-00000.parquet" for i in range(3))]
    assert manifest(run_dir)["shards"] == 3 and manifest(run_dir)["rows_out"] == 3 * N
    assert len(server.received) == 3 * N  # shard 0/2's problems came from the cache


# --- 5. shard tasks side by side, and the whole-run lock -----------------------------------------------

def test_two_shard_tasks_run_at_once(server, tmp_path):
    def slow_reply(body: dict[str, Any], n: int) -> dict[str, Any]:
        time.sleep(0.01)  # both tasks are in flight together
        return reply(body, n)

    server.reply = slow_reply
    recipe = recipe_of(server.base_url, parse=False)
    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    run(recipe, str(run_dir), opts(cache, until="ingest"))
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def task(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            run(recipe, str(run_dir), opts(cache, shard=(i, 2)))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=task, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert len(server.received) == 3 * N
    assert {p.name for p in (run_dir / "generate").glob("_shard-*.json")} == \
        {"_shard-00000-of-00002.json", "_shard-00001-of-00002.json"}
    run(recipe, str(run_dir), opts(cache))
    assert manifest(run_dir)["shards"] == 2 and len(server.received) == 3 * N
    run(recipe, str(tmp_path / "whole"), opts(cache))
    assert rows(run_dir) == rows(tmp_path / "whole")


def write_lock(path: Path, pid: int) -> None:
    holder = {"host": socket.gethostname(), "pid": pid, "since": "2024-01-01T00:00:00+00:00"}
    path.write_text(json.dumps(holder))


def test_a_live_shard_lock_keeps_a_whole_run_out(server, tmp_path):
    recipe = recipe_of(server.base_url, parse=False)
    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    run(recipe, str(run_dir), opts(cache, until="ingest"))
    lock = run_dir / "_lock.shard-00001-of-00002"
    write_lock(lock, os.getpid())
    with pytest.raises(RunLocked, match="a shard task is running"):
        run(recipe, str(run_dir), opts(cache))
    assert not (run_dir / "_lock").exists() and manifest(run_dir, "ingest") and not server.received
    # the other shard's task is not kept out
    run(recipe, str(run_dir), opts(cache, shard=(0, 2)))
    # a lock left by a dead process is no obstacle
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    write_lock(lock, int(dead.stdout))
    run(recipe, str(run_dir), opts(cache))
    assert manifest(run_dir)["shards"] == 2


def test_a_live_whole_run_keeps_shard_tasks_out(server, tmp_path):
    recipe = recipe_of(server.base_url, parse=False)
    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    run(recipe, str(run_dir), opts(cache, until="ingest"))
    with RunDir(str(run_dir)).lock(), pytest.raises(RunLocked, match="a whole run is running"):
        run(recipe, str(run_dir), opts(cache, shard=(0, 2)))
    assert not server.received and not (run_dir / "_lock.shard-00000-of-00002").exists()


# --- 6. the command line ------------------------------------------------------------------------------

def test_cli_shard_flag(server, tmp_path, capsys):
    recipe_file = tmp_path / "gen.yaml"
    recipe_file.write_text(recipe_text(server.base_url))
    run_dir, cache = str(tmp_path / "run"), str(tmp_path / "cache")
    base = ["run", str(recipe_file), "--run-dir", run_dir, "--request-cache", cache, "--no-progress"]
    assert main([*base, "--shard", "1/2"]) == 1
    assert "run it first" in capsys.readouterr().err
    assert main([*base, "--until", "ingest"]) == 0
    assert main([*base, "--shard", "1/2"]) == 0
    assert len(server.received) == 6 * 3
    assert (tmp_path / "run" / "generate" / "_shard-00001-of-00002.json").exists()
    assert list((tmp_path / "cache").glob("*/*.json"))  # the cache named on the command line
    assert not (tmp_path / "run" / "_request_cache").exists()
    capsys.readouterr()
    assert main([*base, "--shard", "2/2"]) == 1
    assert "--shard 2/2: need 0 <= i < N" in capsys.readouterr().err
    assert main([*base, "--shard", "x"]) == 1
    assert "--shard x: write it as i/N, e.g. 0/4" in capsys.readouterr().err
    assert main(base) == 0
    assert manifest(tmp_path / "run")["shards"] == 2 and len(server.received) == 3 * N


# --- 7. configuration errors at recipe load ------------------------------------------------------------

def load_error(text: str, tmp_path: Path) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    return str(e.value)


def test_unknown_template_field(tmp_path):
    text = recipe_text("http://127.0.0.1:9/v1").replace(
        f"system_prompt: {SYSTEM}", f"system_prompt: {SYSTEM}\n    prompt_template: 'Solve {{problem}}'")
    message = load_error(text, tmp_path)
    assert f"{tmp_path / 'recipe.yaml'}:12: stages[1].prompt_template:" in message
    assert "unknown field(s) ['problem']" in message and "['choices', 'question']" in message


def test_unbalanced_template_brace(tmp_path):
    with pytest.raises(ValueError, match="not a valid template"):
        GenerateConfig.model_validate({"teachers": [{"backend": "openai", "name": "a", "model": "m",
                                                     "base_url": "http://127.0.0.1:9/v1"}],
                                       "prompt_template": "Solve {question"})


def test_duplicate_teacher_names(tmp_path):
    text = recipe_text("http://127.0.0.1:9/v1")
    teacher = text[text.index("      - name: scripted"):text.index("  - name: parse")]
    message = load_error(text.replace(teacher, teacher * 2), tmp_path)
    assert f"{tmp_path / 'recipe.yaml'}:8: stages[1]: " in message
    assert "teacher names must be unique (got ['scripted', 'scripted'])" in message


def test_unknown_backend_lists_the_allowed_ones(tmp_path):
    message = load_error(recipe_text("http://127.0.0.1:9/v1").replace("backend: openai", "backend: opnai"),
                         tmp_path)
    assert "stages[1].teachers[0]" in message and "'opnai'" in message
    for name in ("llamacpp", "openai", "vllm"):
        assert name in message


def test_synthetic_source_has_no_choices():
    # why test_choices_are_lettered_after_the_question brings its own file
    assert not any(p.get("choices") for p in synthetic_problems(200, seed=0))
