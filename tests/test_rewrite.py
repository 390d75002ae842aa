"""The rewrite stage: pure helpers, and the stage fn against a scripted OpenAI server on loopback.

Every reply is a function of the original trace named in the prompt and the request seed (index 0:
the first rewrite, index 1: the retry), so each trace takes a known path through the stage and the
exact number of requests, rejections and kept rows can be asserted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError
from support.openai_fakes import ScriptedOpenAIServer, assert_no_teacher_threads, chat_reply

from schemas.tables import PROBLEMS, TRACES
from stages.rewrite import (
    DEFAULT_TEMPLATES,
    STRICT_SUFFIX,
    RewriteConfig,
    build_prompt,
    choose,
    over_budget,
    rewrite,
    template_hash,
)

SEED = 7
BUDGETS = {"easy": 10, "medium": 20, "hard": 30}
ORIGINAL_TOKENS = 50
TEACHER = {"backend": "openai", "name": "rw", "model": "scripted-model", "api_key_env": "TF_TEST_REWRITE_KEY",
           "max_tokens": 256, "temperature": 0.0, "max_retries": 0, "concurrency": 2}
STRICT_START = STRICT_SUFFIX.split("{")[0]


def words(n: int, tag: str = "w") -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


def config(base_url: str = "http://127.0.0.1:9/v1", **kw: Any) -> RewriteConfig:
    return RewriteConfig(teacher={**TEACHER, "base_url": base_url}, **kw)


# --- pure helpers ----------------------------------------------------------------------------------------

def test_prompt_structure_follows_the_level():
    c = config(budgets=BUDGETS)
    easy = build_prompt(c, "easy", "What is 2+2?", "ORIGINAL REASONING", "4")
    medium = build_prompt(c, "medium", "What is 2+2?", "ORIGINAL REASONING", "4")
    hard = build_prompt(c, "hard", "What is 2+2?", "ORIGINAL REASONING", "4")
    for prompt, budget in ((easy, 10), (medium, 20), (hard, 30)):
        assert "What is 2+2?" in prompt and "ORIGINAL REASONING" in prompt
        assert f"at most {budget} tokens" in prompt
        assert "<think>...</think>" in prompt and "\\boxed{...}" in prompt
        assert "The reference answer is 4" in prompt
        assert "Summary" in prompt
        assert STRICT_START not in prompt
    assert all(w in easy for w in ("Analysis", "Approach")) and "Reflection" not in easy
    assert "Improvement" not in easy
    assert all(w in medium for w in ("Analysis", "Approach", "Reflection", "Improvement"))
    assert "Decomposition" not in medium
    assert all(w in hard for w in ("Decomposition", "sub-problem", "Reflection", "Improvement",
                                   "Integration"))
    # an unknown level uses default_level's template and budget
    assert build_prompt(c, "extreme", "q", "r", "4") == build_prompt(c, "medium", "q", "r", "4")
    assert c.level("extreme") == c.level(None) == "medium" and c.level("hard") == "hard"


def test_reference_only_when_asked_and_known_and_the_retry_adds_the_suffix():
    with_ref = config()
    without = config(include_reference=False)
    assert "reference answer" not in build_prompt(without, "easy", "q", "r", "4")
    assert "reference answer" not in build_prompt(with_ref, "easy", "q", "r", None)
    strict = build_prompt(with_ref, "hard", "q", "r", "4", strict=True)
    suffix = STRICT_SUFFIX.format(budget=1024)
    assert strict == build_prompt(with_ref, "hard", "q", "r", "4") + "\n\n" + suffix
    # a level missing from budgets takes default_level's budget
    partial = config(budgets={"medium": 99},
                     templates={**DEFAULT_TEMPLATES, "easy": "{question} in {budget}"})
    assert build_prompt(partial, "easy", "q", "r", None) == "q in 99"


def test_over_budget_at_the_boundary():
    assert not over_budget(115, 100, 1.15) and over_budget(116, 100, 1.15)
    assert not over_budget(100, 100, 1.0) and over_budget(101, 100, 1.0)
    assert not over_budget(None, 100, 1.0)


def test_choose_keeps_by_policy():
    original = {"trace_id": "o", "reasoning_tokens": 50}
    short, long_ = {"trace_id": "r", "reasoning_tokens": 10}, {"trace_id": "r", "reasoning_tokens": 60}
    same = {"trace_id": "r", "reasoning_tokens": 50}
    assert choose("shortest", original, None) == [original]
    assert choose("shortest", original, short) == [short]
    assert choose("shortest", original, long_) == [original]
    assert choose("shortest", original, same) == [original]  # not shorter: nothing gained
    assert choose("both", original, long_) == [original, long_]
    assert choose("both", original, None) == [original]
    assert choose("shortest", original, long_, original_tokens=70) == [long_]


def test_config_validation():
    with pytest.raises(ValidationError, match="positive"):
        config(budgets={"easy": -1, "medium": 5})
    with pytest.raises(ValidationError, match="positive"):
        config(budgets={"easy": 0, "medium": 5})
    with pytest.raises(ValidationError):
        config(keep="longest")
    with pytest.raises(ValidationError, match="unknown field"):
        config(templates={"medium": "{question} {answer}"})
    with pytest.raises(ValidationError, match="default_level"):
        config(default_level="extreme")
    with pytest.raises(ValidationError):
        config(tolerance=0.5)
    with pytest.raises(ValidationError):
        config(unknown_key=1)
    c = config()
    assert c.budgets == {"easy": 256, "medium": 512, "hard": 1024} and c.keep == "shortest"
    assert c.tolerance == 1.15 and c.include_reference and c.traces_per_part == 256


# --- the stage fn against a scripted server ----------------------------------------------------------------

def reply(body: dict[str, Any], n: int) -> dict[str, Any]:
    """The path of each original (named ORIG-k in its reasoning) by attempt: seed - SEED is the index."""
    user = body["messages"][-1]["content"]
    k = int(re.search(r"ORIG-(\d)", user).group(1))
    index = body["seed"] - SEED
    if k == 1:
        text = f"<think>{words(5, 'a')}</think>\nThe answer is \\boxed{{4}}."
    elif k == 2:
        text = (f"<think>{words(40, 'b')}</think>\n\\boxed{{6}}" if index == 0
                else f"<think>{words(8, 'c')}</think>\nSo \\boxed{{6}}.")
    elif k == 3:
        text = f"<think>{words(50, f'd{index}')}</think>\n\\boxed{{8}}"
    elif k == 4:
        text = f"<think>{words(6, 'e')}</think>\n\\boxed{{5}}"
    elif k == 5:
        text = f"<think>{words(3, 'f')}</think>\nI am not sure."
    elif k == 8:
        text = "<think>half of one</think>\n\\boxed{0.5}"
    else:
        raise AssertionError(f"no request expected for trace {k}")
    return chat_reply(text, prompt_tokens=len(user.split()), completion_tokens=len(text.split()))


@pytest.fixture
def server() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer(reply) as s:
        yield s
    assert_no_teacher_threads()


class FakeOut:
    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.rejected: list[dict] = []
        self.collected: dict[str, Any] = {}

    def write(self, rows: pa.Table) -> None:
        assert rows.schema == TRACES
        self.rows.extend(rows.to_pylist())

    def reject(self, rejected: pa.Table) -> None:
        self.rejected.extend(rejected.to_pylist())

    def consumed(self, n: int) -> None:
        raise AssertionError("not a source")

    def stats(self, values: dict[str, Any]) -> None:
        self.collected.update(values)


def problem(k: int, difficulty: str | None, answer: str | None) -> dict:
    return {"problem_id": f"p{k}", "question": f"Question {k}?", "answer": answer, "answer_type": "math",
            "difficulty": difficulty}


def trace(k: int, *, verified: bool = True, variant: str | None = "original", final: str = "4") -> dict:
    return {"trace_id": f"t{k}", "problem_id": f"p{k}",
            "parent_trace_id": "t0" if variant == "concise" else None, "variant": variant, "sample_index": 0,
            "completion": f"<think>ORIG-{k}</think> \\boxed{{{final}}}",
            "reasoning": f"ORIG-{k} " + words(ORIGINAL_TOKENS - 1), "answer": f"\\boxed{{{final}}}",
            "final_answer": final, "finish_reason": "stop", "flags": [], "reasoning_tokens": ORIGINAL_TOKENS,
            "answer_tokens": 1, "checkers": [{"name": "math", "version": "1", "verdict": "pass"}],
            "verdict": "pass" if verified else "fail", "score": 1.0 if verified else 0.0,
            "verified": verified}


def write_inputs(tmp_path: Path, traces: list[dict], problems: list[dict]) -> dict[str, list[str]]:
    pq.write_table(pa.Table.from_pylist(traces, schema=TRACES), tmp_path / "traces.parquet")
    pq.write_table(pa.Table.from_pylist(problems, schema=PROBLEMS), tmp_path / "problems.parquet")
    return {"traces": [str(tmp_path / "traces.parquet")], "problems": [str(tmp_path / "problems.parquet")]}


def context(cache: Path) -> SimpleNamespace:
    return SimpleNamespace(seed=SEED, request_cache=str(cache), shard=None, stage="rewrite",
                           tokenizer=SimpleNamespace(count=lambda xs: [len(x.split()) for x in xs]))


def run_stage(inputs: dict, cfg: RewriteConfig, cache: Path) -> FakeOut:
    out = FakeOut()
    rewrite(inputs, cfg, context(cache), out)
    return out


ORDER = ["t1", "t2", "t3", "t4", "t5", "t6", "t7"]


@pytest.fixture
def inputs(tmp_path: Path) -> dict:
    problems = [problem(1, "easy", "4"), problem(2, "medium", "6"), problem(3, "hard", "8"),
                problem(4, "medium", "4"), problem(5, "easy", "4"), problem(6, "easy", "4"),
                problem(7, "easy", "4")]
    traces = [trace(1), trace(2, final="6"), trace(3, final="8"), trace(4), trace(5),
              trace(6, verified=False), trace(7, variant="concise")]
    return write_inputs(tmp_path, traces, problems)


def test_each_trace_takes_its_path(server, inputs, tmp_path):
    cfg = config(server.base_url, budgets=BUDGETS, traces_per_part=3)  # parts split the traces
    out = run_stage(inputs, cfg, tmp_path / "cache")

    # 1 + 2 + 2 + 1 + 1 requests; the retries (index 1, seed + 1) carry the strict suffix
    sent = [(re.search(r"ORIG-(\d)", b["messages"][-1]["content"]).group(1), b["seed"] - SEED,
             STRICT_START in b["messages"][-1]["content"]) for b in server.received]
    assert sorted(sent) == [("1", 0, False), ("2", 0, False), ("2", 1, True), ("3", 0, False),
                            ("3", 1, True), ("4", 0, False), ("5", 0, False)]
    assert all(b["model"] == "scripted-model" and len(b["messages"]) == 1 for b in server.received)
    hard_prompt = next(b["messages"][0]["content"] for b in server.received if "ORIG-3" in
                       b["messages"][0]["content"])
    assert "Decomposition" in hard_prompt and "at most 30 tokens" in hard_prompt
    assert "The reference answer is 8" in hard_prompt

    hashes = {level: template_hash(DEFAULT_TEMPLATES[level]) for level in BUDGETS}
    # a rewrite's id: its own, stable (checked by the re-run below), naming no input trace
    kept_ids = {r["parent_trace_id"]: r["trace_id"] for r in out.rows if r.get("variant") == "concise"}
    tried_ids = {r["trace_id"]: r["related_id"] for r in out.rejected}
    rid = {k: kept_ids.get(f"t{k}") or tried_ids[f"t{k}"] for k in range(1, 6)}
    assert len(set(rid.values())) == 5 and not set(rid.values()) & {f"t{k}" for k in range(1, 8)}
    got = [(r["reason"], r["trace_id"], r["related_id"], r["problem_id"], r["table"]) for r in out.rejected]
    assert got == [
        ("over_budget", "t3", rid[3], "p3", "traces"), ("answer_changed", "t4", rid[4], "p4", "traces"),
        ("no_final_answer", "t5", rid[5], "p5", "traces")]
    assert "50 reasoning tokens vs a budget of 30" in out.rejected[0]["detail"]
    assert "'5'" in out.rejected[1]["detail"] and "'4'" in out.rejected[1]["detail"]
    attempt = json.loads(out.rejected[0]["row"])
    assert attempt["trace_id"] == rid[3] and attempt["parent_trace_id"] == "t3"
    assert attempt["verified"] is False and attempt["variant"] == "concise"

    # keep "shortest": the kept rewrites replace their originals, everything else is as it came
    assert [r["trace_id"] for r in out.rows] == [rid[1], rid[2], "t3", "t4", "t5", "t6", "t7"]
    originals = {r["trace_id"]: r for r in pa.Table.from_pylist(
        [trace(3, final="8"), trace(4), trace(5), trace(6, verified=False), trace(7, variant="concise")],
        schema=TRACES).to_pylist()}
    for r in out.rows[2:]:
        assert r == originals[r["trace_id"]]
    r1, r2 = out.rows[:2]
    for r, k, level, budget, final, tokens, seed in ((r1, 1, "easy", 10, "4", 5, SEED),
                                                      (r2, 2, "medium", 20, "6", 8, SEED + 1)):
        assert r["parent_trace_id"] == f"t{k}" and r["variant"] == "concise" and r["problem_id"] == f"p{k}"
        assert r["rewrite"] == {"model": "scripted-model", "template": hashes[level], "difficulty": level,
                                "budget": budget}
        assert r["verified"] is True and r["verdict"] == "pass" and r["score"] == 1.0
        assert r["check_reason"] is None and r["flags"] == [] and r["sample_index"] == 0
        assert r["final_answer"] == final and r["reasoning_tokens"] == tokens
        assert r["teacher"]["backend"] == "openai" and r["teacher"]["model"] == "scripted-model"
        assert r["teacher"]["seed"] == seed and r["teacher"]["prompt_template_hash"] == hashes[level]
        assert json.loads(r["teacher"]["sampling_params"])["seed"] == SEED
        assert [c["name"] for c in r["checkers"]] == ["math", "math"]
        assert r["checkers"][1]["verdict"] == "pass" and r["checkers"][1]["version"]
        assert r["completion"].startswith("<think>") and r["finish_reason"] == "stop"

    stats = out.collected
    assert stats["levels"] == {
        "easy": {"attempted": 2, "kept": 1, "tokens_before": 100, "tokens_before_kept": 50, "tokens_after": 5,
                 "rejected": {"no_final_answer": 1}},
        "hard": {"attempted": 1, "kept": 0, "tokens_before": 50, "tokens_before_kept": 0, "tokens_after": 0,
                 "rejected": {"over_budget": 1}},
        "medium": {"attempted": 2, "kept": 1, "tokens_before": 100, "tokens_before_kept": 50,
                   "tokens_after": 8,
                   "rejected": {"answer_changed": 1}},
    }
    assert stats["retried"] == 2
    assert stats["teacher"]["requests"] == stats["teacher"]["generated"] == 7
    assert stats["teacher"]["cached"] == 0

    # the same request cache: nothing is sent again, and the rows are the same
    again = run_stage(inputs, cfg, tmp_path / "cache")
    assert len(server.received) == 7
    assert again.rows == out.rows and again.rejected == out.rejected
    assert again.collected["levels"] == stats["levels"] and again.collected["teacher"]["cached"] == 7

    # keep "both": each kept rewrite right after its original; still nothing new to ask
    both = run_stage(inputs, cfg.model_copy(update={"keep": "both"}), tmp_path / "cache")
    assert len(server.received) == 7
    assert [r["trace_id"] for r in both.rows] == ["t1", rid[1], "t2", rid[2], "t3", "t4", "t5", "t6", "t7"]
    assert both.rows[1] == r1 and both.rows[3] == r2
    # per-parent accounting: every input trace is named by an output row
    for rows in (out.rows, both.rows):
        named = {r["trace_id"] for r in rows} | {r["parent_trace_id"] for r in rows}
        assert set(ORDER) <= named


def test_the_rewrite_answer_is_checked_with_the_math_checker(server, tmp_path):
    problems = [problem(8, "easy", "\\frac{1}{2}")]
    traces = [trace(8, final="\\frac{1}{2}")]
    inputs = write_inputs(tmp_path, traces, problems)
    out = run_stage(inputs, config(server.base_url, budgets=BUDGETS), tmp_path / "cache")
    assert len(server.received) == 1 and out.rejected == []
    (row,) = out.rows
    assert row["parent_trace_id"] == "t8" and row["final_answer"] == "0.5" and row["verified"] is True
    assert row["checkers"][-1]["name"] == "math" and row["checkers"][-1]["verdict"] == "pass"


def test_without_a_reference_the_original_answer_is_the_gold(server, tmp_path):
    """No reference answer: the rewrite must agree with the answer the original was verified on."""
    problems = [{**problem(8, None, None)}]
    agree = write_inputs(tmp_path, [trace(8, final="1/2")], problems)
    out = run_stage(agree, config(server.base_url, budgets=BUDGETS), tmp_path / "cache")
    assert [r["parent_trace_id"] for r in out.rows] == ["t8"] and out.rejected == []
    assert "reference answer" not in server.received[0]["messages"][0]["content"]
    assert out.collected["levels"]["medium"]["kept"] == 1  # no difficulty: default_level

    differ = write_inputs(tmp_path, [trace(8, final="3")], problems)
    out = run_stage(differ, config(server.base_url, budgets=BUDGETS), tmp_path / "cache")
    assert [r["trace_id"] for r in out.rows] == ["t8"]
    assert [r["reason"] for r in out.rejected] == ["answer_changed"]
