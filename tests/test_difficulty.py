"""The difficulty stage: the rule that picks a level, strict judgements with retries, and the cache.

The stage is called directly with a fake ``out``: it is a plain global stage function, and a recipe
run would only add ingest time. The scripted server answers each problem from a fixed script
indexed by try (seed - base seed), so the number of requests, retries included, is exact.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pydantic import ValidationError
from support.openai_fakes import ScriptedOpenAIServer, assert_no_teacher_threads, chat_reply
from support.outputs import CollectingOutput

from schemas.tables import PROBLEMS
from stages.contract import Context, Inputs
from stages.difficulty import DifficultyConfig, decide, difficulty, empirical_level, requirements
from stages.io import write_parquet

SEED = 11


# --- helpers -------------------------------------------------------------------------------------------

def problem(pid: str, question: str, pass_rate: float | None = None, n_samples: int | None = None,
            **extra: Any) -> dict[str, Any]:
    return {"problem_id": pid, "question": question, "answer": "1", "answer_type": "math",
            "source": {"dataset": "synthetic", "config": None, "split": "train", "revision": None, "row": 0},
            "pass_rate": pass_rate, "n_samples": n_samples, **extra}


def write_problems(path: Path, rows: list[dict]) -> list[str]:
    write_parquet(pa.Table.from_pylist(rows, schema=PROBLEMS), str(path), PROBLEMS)
    return [str(path)]


def context(tmp_path: Path, cache: Path | None = None, shard: tuple[int, int] | None = None) -> Context:
    return Context(recipe="difficulty-test", run_id="r", recipe_fingerprint="f", code_version="c", seed=SEED,
                   sample=None, stage="difficulty", stage_type="difficulty", fingerprint="fp",
                   tokenizer_spec="chars", stage_dir=str(tmp_path / "stage"), shard=shard,
                   request_cache=str(cache or tmp_path / "cache"))


def run_stage(files: list[str], config: DifficultyConfig, ctx: Context) -> CollectingOutput:
    out = CollectingOutput()
    difficulty(Inputs({"problems": files}), config, ctx, out)
    assert not out.rejected
    return out


def cfg(**kw: Any) -> DifficultyConfig:
    return DifficultyConfig.model_validate(kw)


# --- the rule -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("rate", "level"), [
    (1.0, "easy"), (0.8, "easy"), (0.79999, "medium"), (0.4, "medium"), (0.39, "hard"), (0.0, "hard")])
def test_thresholds_map_boundaries_to_the_easier_level(rate: float, level: str) -> None:
    assert empirical_level(rate, 8, cfg()) == level


def test_pass_rate_needs_a_value_and_enough_samples() -> None:
    c = cfg(min_samples=4)
    assert empirical_level(None, 8, c) is None
    assert empirical_level(0.5, None, c) is None
    assert empirical_level(0.5, 3, c) is None
    assert empirical_level(0.5, 4, c) == "medium"


def test_custom_levels_and_thresholds() -> None:
    c = cfg(levels=["trivial", "easy", "medium", "hard"], pass_rate_thresholds=[0.95, 0.7, 0.3])
    assert [empirical_level(r, 10, c) for r in (0.95, 0.9, 0.3, 0.29)] == \
        ["trivial", "easy", "medium", "hard"]
    assert c.fallback_level == "easy"  # the middle, rounded towards easy
    assert cfg(levels=["easy", "hard"], pass_rate_thresholds=[0.5]).fallback_level == "easy"


@pytest.mark.parametrize(("combine", "level", "source"), [
    ("empirical_first", "hard", "empirical"), ("judged_first", "medium", "judged"),
    ("harder", "hard", "empirical")])
def test_combine_modes_when_both_sources_speak(combine: str, level: str, source: str) -> None:
    got = decide(problem("a", "q", 0.25, 8), "medium", 1, cfg(combine=combine))
    assert got == (level, f"pass_rate 0.25 over 8 samples -> hard; judged medium; {combine} -> {level}",
                   source)


def test_harder_takes_the_judgement_when_it_is_harder() -> None:
    assert decide(problem("a", "q", 0.9, 8), "medium", 1, cfg(combine="harder"))[::2] == ("medium", "judged")


@pytest.mark.parametrize("combine", ["empirical_first", "judged_first", "harder"])
def test_one_source_is_used_whatever_the_mode(combine: str) -> None:
    c = cfg(combine=combine)
    assert decide(problem("a", "q"), "easy", 1, c) == ("easy", "no pass rate; judged easy -> easy", "judged")
    assert decide(problem("a", "q", 0.9, 8), "unknown", 3, c) == (
        "easy", "pass_rate 0.9 over 8 samples -> easy; judgement unknown after 3 tries -> easy", "empirical")
    assert decide(problem("a", "q", 0.1, 5), None, 0, c) == (
        "hard", "pass_rate 0.1 over 5 samples -> hard; not judged -> hard", "empirical")


def test_neither_source_falls_back() -> None:
    assert decide(problem("a", "q"), "unknown", 3, cfg()) == (
        "medium", "no pass rate; judgement unknown after 3 tries -> fallback medium", "fallback")
    assert decide(problem("a", "q", 0.1, 2), None, 0, cfg(fallback="hard")) == (
        "hard", "pass_rate 0.1 over 2 samples, fewer than 4; not judged -> fallback hard", "fallback")


@pytest.mark.parametrize(("kw", "message"), [
    ({"levels": ["easy"], "pass_rate_thresholds": []}, "at least 2 levels"),
    ({"levels": ["easy", "Easy"], "pass_rate_thresholds": [0.5]}, "unique"),
    ({"levels": ["easy", "unknown"], "pass_rate_thresholds": [0.5]}, "cannot be a level"),
    ({"levels": ["easy", " hard"], "pass_rate_thresholds": [0.5]}, "surrounding spaces"),
    ({"pass_rate_thresholds": [0.8]}, "needs len(levels) - 1 = 2"),
    ({"pass_rate_thresholds": [0.4, 0.8]}, "strictly descending"),
    ({"pass_rate_thresholds": [0.5, 0.5]}, "strictly descending"),
    ({"pass_rate_thresholds": [1.5, 0.4]}, "[0, 1]"),
    ({"fallback": "extreme"}, "not one of the levels"),
    ({"prompt_template": "{question} {difficulty}"}, "unknown field(s) ['difficulty']"),
    ({"prompt_template": "Rate it: {levels}"}, "must contain {question}"),
    ({"prompt_template": "{question"}, "not a valid template"),
    ({"retries": -1}, "greater than or equal to 0"),
    ({"min_samples": 0}, "greater than 0"),
    ({"combine": "average"}, "empirical_first"),
    ({"teacher": {"backend": "nope", "name": "x"}}, "backend"),
    ({"levelz": ["a", "b"]}, "Extra inputs"),
])
def test_config_errors_say_what_is_wrong(kw: dict, message: str) -> None:
    with pytest.raises(ValidationError) as e:
        cfg(**kw)
    assert message in str(e.value)


def test_requirements_follow_the_teacher() -> None:
    assert requirements(cfg()) == ()
    assert requirements(cfg(teacher={"backend": "llamacpp", "name": "j"})) == (("llama_cpp", "llamacpp"),)


# --- judgements against a scripted server -------------------------------------------------------------

# Replies per problem, by try: what the teacher says on its first, second, third... request.
SCRIPT = {
    "What is 1 + 1?": ["hard"],
    "Integrate x sin x.": ["I think it's medium", '{"answer": "medium"}'],
    "Prove Fermat's last theorem.": ["very hard", "Hard or medium", '{"level": "hard"}'],
    "Count primes below 30.": ['{"answer": "Easy"}'],
}


def scripted(body: dict[str, Any], n: int) -> dict[str, Any]:
    user = body["messages"][-1]["content"]
    question = next(q for q in SCRIPT if q in user)
    return chat_reply(SCRIPT[question][body["seed"] - SEED], completion_tokens=3)


@pytest.fixture
def server() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer(scripted) as s:
        yield s
    assert_no_teacher_threads()


def teacher_config(server: ScriptedOpenAIServer, **kw: Any) -> DifficultyConfig:
    return cfg(teacher={"backend": "openai", "name": "judge", "model": "scripted-model",
                        "base_url": server.base_url, "api_key_env": "TF_TEST_DIFFICULTY_KEY",
                        "max_tokens": 16, "max_retries": 0, "concurrency": 4}, **kw)


def judged_problems() -> list[dict]:
    qs = list(SCRIPT)
    return [problem("a", qs[0]), problem("b", qs[1], 0.25, 8), problem("c", qs[2]),
            problem("d", qs[3], 0.5, 2, level="L1", metadata='{"k": 1}')]


def test_judgements_are_strict_retried_and_cached(server, tmp_path) -> None:
    files = write_problems(tmp_path / "in.parquet", judged_problems())
    config = teacher_config(server, problems_per_part=3)
    out = run_stage(files, config, context(tmp_path))

    rows = out.rows()
    assert [r["problem_id"] for r in rows] == ["a", "b", "c", "d"]
    assert [r["difficulty_judged"] for r in rows] == ["hard", "medium", "unknown", "easy"]
    assert [r["difficulty"] for r in rows] == ["hard", "hard", "medium", "easy"]
    assert [r["difficulty_rule"] for r in rows] == [
        "no pass rate; judged hard -> hard",
        "pass_rate 0.25 over 8 samples -> hard; judged medium; empirical_first -> hard",
        "no pass rate; judgement unknown after 3 tries -> fallback medium",
        "pass_rate 0.5 over 2 samples, fewer than 4; judged easy -> easy"]
    # every other column as it came in
    assert rows[3]["level"] == "L1" and rows[3]["metadata"] == '{"k": 1}' and rows[1]["n_samples"] == 8
    assert all(t.schema.equals(PROBLEMS) for t in out.tables) and len(out.tables) == 2

    # a: 1 try, b: 2, c: 3 (retries=2), d: 1 -> 7 requests; seeds are base + try index
    assert len(server.received) == 7
    tries = Counter((next(q for q in SCRIPT if q in b["messages"][-1]["content"]), b["seed"] - SEED)
                    for b in server.received)
    assert tries == Counter({(q, i): 1 for q, n in zip(SCRIPT, (1, 2, 3, 1), strict=True) for i in range(n)})
    for body in server.received:
        schema = body["response_format"]["json_schema"]["schema"]
        assert body["response_format"]["type"] == "json_schema"
        assert schema["properties"]["answer"]["enum"] == ["easy", "medium", "hard"]
        assert "Reply with exactly one word, one of: easy, medium, hard." in body["messages"][-1]["content"]

    assert out.collected["levels"] == {"easy": 1, "medium": 1, "hard": 2}
    assert out.collected["judged"] == {"easy": 1, "hard": 1, "medium": 1, "unknown": 1}
    assert out.collected["rules"] == {"empirical": 1, "judged": 2, "fallback": 1}
    assert out.collected["teacher"] == {"requests": 7, "cached": 0, "generated": 7, "generated_tokens": 21}

    # the same run again with the same cache sends nothing and writes the same rows
    again = run_stage(files, config, context(tmp_path))
    assert len(server.received) == 7
    assert again.rows() == rows
    assert again.collected["teacher"] == {"requests": 7, "cached": 7, "generated": 0, "generated_tokens": 0}


def test_fewer_retries_give_up_sooner_and_shards_split_the_work(server, tmp_path) -> None:
    files = write_problems(tmp_path / "in.parquet", judged_problems())
    config = teacher_config(server, retries=0, combine="judged_first")
    first = run_stage(files, config, context(tmp_path, shard=(0, 2)))
    second = run_stage(files, config, context(tmp_path, shard=(1, 2)))
    rows = first.rows() + second.rows()
    assert [r["problem_id"] for r in first.rows()] == ["a", "b"]
    assert [r["difficulty_judged"] for r in rows] == ["hard", "unknown", "unknown", "easy"]
    assert [r["difficulty"] for r in rows] == ["hard", "hard", "medium", "easy"]
    assert rows[1]["difficulty_rule"] == \
        "pass_rate 0.25 over 8 samples -> hard; judgement unknown after 1 try -> hard"
    assert len(server.received) == 4


def test_system_prompt_and_choices_reach_the_teacher(server, tmp_path) -> None:
    rows = [problem("e", "What is 1 + 1?", choices=["1", "2"])]
    files = write_problems(tmp_path / "in.parquet", rows)
    config = teacher_config(server, system_prompt="You rate problems.",
                            prompt_template="Levels: {levels}\n{question}")
    run_stage(files, config, context(tmp_path))
    (body,) = server.received
    user = "Levels: easy, medium, hard\nWhat is 1 + 1?\n\nA. 1\nB. 2"
    assert body["messages"] == [{"role": "system", "content": "You rate problems."},
                                {"role": "user", "content": user}]


def test_without_a_teacher_pass_rates_decide(tmp_path) -> None:
    rows = [problem("a", "q1", 0.9, 8), problem("b", "q2", 0.4, 4), problem("c", "q3", 0.0, 16),
            problem("d", "q4"), problem("e", "q5", 1.0, 3)]
    files = write_problems(tmp_path / "in.parquet", rows)
    out = run_stage(files, cfg(teacher=None), context(tmp_path))
    got = out.rows()
    assert [r["difficulty"] for r in got] == ["easy", "medium", "hard", "medium", "medium"]
    assert all(r["difficulty_judged"] is None for r in got)
    assert got[3]["difficulty_rule"] == "no pass rate; not judged -> fallback medium"
    assert out.collected == {"levels": {"easy": 1, "medium": 3, "hard": 1}, "judged": {},
                             "rules": {"empirical": 3, "judged": 0, "fallback": 2}, "teacher": {}}
    assert not (tmp_path / "cache").exists()


def test_empty_input_writes_nothing(tmp_path) -> None:
    out = run_stage([], cfg(), context(tmp_path))
    assert out.rows() == [] and out.collected["levels"] == {"easy": 0, "medium": 0, "hard": 0}


# --- the embedded model ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_embedded_llamacpp_judgements_are_levels_or_unknown(tmp_path) -> None:
    rows = [problem("a", "What is 2 + 2?"), problem("b", "Prove that there are infinitely many primes."),
            problem("c", "Find all integer solutions of x^3 + y^3 = z^3.", 0.5, 8)]
    files = write_problems(tmp_path / "in.parquet", rows)
    config = cfg(teacher={"backend": "llamacpp", "name": "embedded", "max_tokens": 4})
    out = run_stage(files, config, context(tmp_path))
    got = out.rows()
    assert len(got) == 3
    assert all(r["difficulty_judged"] in ("easy", "medium", "hard", "unknown") for r in got), got
    assert all(r["difficulty"] in ("easy", "medium", "hard") for r in got)
    assert got[2]["difficulty"] == "medium"  # empirical_first: the pass rate decides
    assert out.collected["teacher"]["generated"] >= 3
