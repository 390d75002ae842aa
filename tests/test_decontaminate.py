"""The ``decontaminate`` stage: verbatim, lightly edited and paraphrased benchmark problems are rejected
with the benchmark row they copy; unrelated problems, same-template look-alikes with other numbers,
short texts and benchmark boilerplate are not.

Benchmarks are local files under ``tmp_path`` (two JSONL sets and a Parquet one); nothing touches
the internet. The last test runs ingest -> decontaminate through the real runner.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from pydantic import ValidationError

from pipelines.recipe import RecipeError, parse_recipe
from pipelines.runner import Options, StageFailed, run
from schemas.tables import PROBLEMS, REJECTED
from stages import textnorm
from stages.contract import Context
from stages.decontaminate import DecontaminateConfig, decontaminate, words

# --- benchmark problems (written for these tests, in the style of each benchmark) ---

AIME = [
    # 0
    "A sequence of positive integers $a_1, a_2, a_3, \\ldots$ satisfies $a_1 = 7$ and "
    "$a_{n+1} = a_n^2 - 3a_n + 3$ for all $n \\ge 1$. Find the remainder when $a_{2024}$ is divided by "
    "$1000$.",
    # 1
    "Let $ABCD$ be a rectangle with $AB = 12$ and $BC = 35$. Point $P$ lies on diagonal $AC$ such that the "
    "circle through $B$, $P$, and $D$ is tangent to line $AC$. The length $AP$ can be written as "
    "$\\frac{m}{n}$, where $m$ and $n$ are relatively prime positive integers. Find $m+n$.",
    # 2
    "Twelve chairs are arranged in a circle. A committee of five people sits in five of the chairs so that "
    "no two committee members sit in adjacent chairs. Two seatings are considered the same if one is a "
    "rotation of the other. Find the number of distinct seatings.",
    # 3
    "A fair six-sided die is rolled four times. The probability that the largest value rolled is exactly "
    "twice the smallest value rolled can be written as $\\frac{m}{n}$, where $m$ and $n$ are relatively "
    "prime positive integers. Find $m+n$.",
    # 4
    "Triangle $ABC$ has side lengths $AB = 13$, $BC = 14$, and $CA = 15$. The incircle of $ABC$ touches "
    "$BC$ at $D$, and the circle with diameter $AD$ meets $BC$ again at $E$. The length $DE$ can be "
    "written as $\\frac{m}{n}$, where $m$ and $n$ are relatively prime positive integers. Find $m+n$.",
    # 5
    "Positive real numbers $x$, $y$, and $z$ satisfy $xyz = 8$ and $x + y + z = 10$. The maximum possible "
    "value of $xy + yz + zx$ can be written as $\\frac{m}{n}$, where $m$ and $n$ are relatively prime "
    "positive integers. Find $m+n$.",
]
MATH500 = [
    # 0
    "The sum of the first $n$ terms of an arithmetic sequence is $3n^2 + 5n$ for every positive integer "
    "$n$. What is the $20$th term of the sequence?",
    # 1
    "If $3x + 7y = 41$ and $5x - 2y = 4$, what is $x^2 + y^2 + 11xy$?",
    # 2: shorter than 8 words, so it has no 8-gram: only an exact copy matches it
    "Evaluate $7^3$.",
    # 3
    "How many of the positive divisors of $2^{6} \\cdot 3^{4} \\cdot 5^{2}$ are perfect squares but not "
    "perfect cubes?",
    # 4
    "A bag contains $5$ red marbles, $4$ blue marbles, and $3$ green marbles. Three marbles are drawn at "
    "random without replacement. What is the probability that exactly two of the drawn marbles have the "
    "same color? Express your answer as a common fraction.",
]
GPQA = [
    "A sample of an ideal monatomic gas is expanded reversibly and adiabatically from an initial volume of "
    "2.0 liters to a final volume of 16.0 liters. If the initial temperature of the gas is 400 kelvin, what "
    "is its final temperature, and by what factor has the internal energy of the gas decreased?",
    "Which of the following compounds shows exactly three signals in its proton NMR spectrum in deuterated "
    "chloroform at room temperature: para-xylene, meta-xylene, mesitylene, or 1,2,4-trimethylbenzene? "
    "Give the symmetry argument that decides it.",
]

# --- training problems that must pass ---

UNRELATED = [
    "A train travels from city A to city B at an average speed of 60 km/h and returns along the same road "
    "at 40 km/h. What is its average speed for the whole round trip, in kilometres per hour?",
    "Prove that for every positive integer $n$, the number $n^5 - n$ is divisible by $30$.",
    "Write a function that returns the length of the longest strictly increasing subsequence of a list of "
    "integers in O(n log n) time.",
]
# AIME boilerplate ("can be written as m/n, where m and n are relatively prime positive integers. Find
# m+n.") around an unrelated problem: its only 8-grams shared with the benchmarks are that boilerplate
BOILERPLATE = (
    "A circle of radius $5$ is inscribed in an isosceles trapezoid whose area is $120$. The length of the "
    "longer base can be written as $\\frac{m}{n}$, where $m$ and $n$ are relatively prime positive "
    "integers. Find $m+n$."
)
# MATH500[1] with every number changed: numbers sit fewer than 8 words apart, so no 8-gram survives
LOOKALIKE = "If $3x + 8y = 43$ and $5x - 3y = 6$, what is $x^3 + y^3 + 12xy$?"

# --- edits of benchmark problems that must be caught ---

# AIME[1] lightly edited: case, spacing, LaTeX spacing, "Find" -> "Determine", a word inserted
LIGHT_EDIT = (
    "let $ABCD$ be a  RECTANGLE with $AB=12$ and $BC = 35$ . Point $P$ lies on the diagonal $AC$ such that "
    "the circle through $B$, $P$ and $D$ is tangent to line $AC$; the length $AP$ can be written as "
    "$\\frac {m}{ n }$ where $m$ and $n$ are relatively prime positive integers. Determine $m + n$."
)
# AIME[2] with punctuation and a couple of words changed
LIGHT_EDIT_2 = (
    "Twelve chairs are arranged around a circle! A committee of five people sits in five of the chairs, so "
    "that no two committee members sit in adjacent chairs. Two seatings count as the same if one is a "
    "rotation of the other -- find the number of distinct seatings"
)
# GPQA[0] with a word changed every few words: no 8-gram survives, only fuzzy matching catches it
PARAPHRASE = (
    "A sample of some ideal monatomic gas gets expanded reversibly and adiabatically from its initial "
    "volume of 2.0 liters to the final volume of 16.0 liters. When the starting temperature of this gas is "
    "400 kelvin, what is the final temperature, and by which factor has the internal energy of that gas "
    "decreased?"
)
# MATH500[4] inside a longer prompt
EMBEDDED = (
    "Solve the following problem step by step.\n\n" + MATH500[4] + "\n\nPut your final answer in \\boxed{}."
)


# --- helpers ---


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def bench_files(tmp_path: Path) -> dict[str, Path]:
    aime = write_jsonl(tmp_path / "aime.jsonl", [{"id": i, "problem": p, "answer": "0"} for i, p in
                                                 enumerate(AIME)])
    math500 = write_jsonl(tmp_path / "math500.jsonl", [{"problem": p, "level": 3} for p in MATH500])
    gpqa = tmp_path / "gpqa.parquet"
    pq.write_table(pa.table({"Question": GPQA, "Correct Answer": ["x"] * len(GPQA)}), gpqa)
    return {"aime": aime, "math_500": math500, "gpqa_diamond": gpqa}


def config(bench_files: dict[str, Path], **changes: Any) -> DecontaminateConfig:
    fuzzy = changes.pop("fuzzy", {})
    benchmarks = [
        {"name": "aime", "path": str(bench_files["aime"])},
        {"name": "math_500", "path": str(bench_files["math_500"])},
        {"name": "gpqa_diamond", "path": str(bench_files["gpqa_diamond"]), "column": "Question"},
    ]
    return DecontaminateConfig.model_validate({"benchmarks": benchmarks, "fuzzy": fuzzy, **changes})


def source(row: int) -> dict[str, Any]:
    return {"dataset": "train.jsonl", "config": None, "split": "train", "revision": None, "row": row}


def problems(questions: list[str]) -> pa.Table:
    rows = [{"problem_id": f"p{i}", "question": q, "answer": "1", "source": source(i)}
            for i, q in enumerate(questions)]
    return pa.Table.from_pylist(rows, schema=PROBLEMS)


def context(tmp_path: Path) -> Context:
    return Context(recipe="decontaminate-test", run_id="r", recipe_fingerprint="f", code_version="c", seed=0,
                   sample=None, stage="decontaminate", stage_type="decontaminate", fingerprint="fp",
                   tokenizer_spec="chars", stage_dir=str(tmp_path / "stage"))


def check(questions: list[str], cfg: DecontaminateConfig,
          tmp_path: Path) -> tuple[list[str], dict[str, dict]]:
    """Run one batch; return the kept questions and the rejected rows by question."""
    batch = problems(questions)
    result = decontaminate(batch, cfg, context(tmp_path))
    assert result.rows.schema == batch.schema
    assert result.rows.num_rows + result.rejected.num_rows == batch.num_rows
    assert result.rejected.schema == REJECTED
    rejected = {json.loads(r["row"])["question"]: r for r in result.rejected.to_pylist()}
    return result.rows.column("question").to_pylist(), rejected


def shared_8grams(a: str, b: str) -> set[str]:
    """The 8-grams the stage compares: of words and numbers, symbols left out."""
    def grams(text: str) -> set[str]:
        return set(textnorm.shingles(words(textnorm.tokens(text)), 8))
    return grams(a) & grams(b)


# --- what is caught ---


def test_verbatim_copies_are_caught_with_the_benchmark_row_and_its_text(bench_files, tmp_path):
    kept, rejected = check([AIME[0], UNRELATED[0], GPQA[1], MATH500[2]], config(bench_files), tmp_path)
    assert kept == [UNRELATED[0]]
    r = rejected[AIME[0]]
    assert (r["table"], r["reason"], r["problem_id"], r["related_id"]) == ("problems", "contaminated", "p0",
                                                                           "aime#0")
    where = f"{bench_files['aime']} line 1"
    assert r["detail"].startswith(f"exact match after normalisation with aime#0 ({where}): A sequence of")
    assert "Find the remainder when $a_{2024}$ is divided by $1000$." in r["detail"]
    assert r["source"] == source(0)
    assert json.loads(r["row"])["answer"] == "1"
    # the Parquet benchmark, located by row; the short one, which has no 8-gram, by exact match
    assert rejected[GPQA[1]]["related_id"] == "gpqa_diamond#1"
    assert f"({bench_files['gpqa_diamond']} row 1)" in rejected[GPQA[1]]["detail"]
    assert rejected[MATH500[2]]["related_id"] == "math_500#2"


def test_light_edits_and_an_embedded_copy_are_caught_by_shared_8grams(bench_files, tmp_path):
    kept, rejected = check([LIGHT_EDIT, LIGHT_EDIT_2, EMBEDDED], config(bench_files), tmp_path)
    assert kept == []
    assert {q: r["related_id"] for q, r in rejected.items()} == {
        LIGHT_EDIT: "aime#1", LIGHT_EDIT_2: "aime#2", EMBEDDED: "math_500#4"}
    for r in rejected.values():
        assert r["detail"].startswith("8-gram overlap: ")
    assert "A bag contains $5$ red marbles" in rejected[EMBEDDED]["detail"]


def test_a_dense_paraphrase_is_caught_only_by_fuzzy_matching(bench_files, tmp_path):
    assert not shared_8grams(PARAPHRASE, GPQA[0])
    kept, rejected = check([PARAPHRASE], config(bench_files), tmp_path)
    r = rejected[PARAPHRASE]
    assert kept == [] and r["related_id"] == "gpqa_diamond#0"
    assert r["detail"].startswith("fuzzy match 0.9")
    assert "same numbers" in r["detail"] and "ideal monatomic gas is expanded reversibly" in r["detail"]
    kept, _ = check([PARAPHRASE], config(bench_files, fuzzy={"enabled": False}), tmp_path)
    assert kept == [PARAPHRASE]
    kept, _ = check([PARAPHRASE], config(bench_files, fuzzy={"threshold": 0.95}), tmp_path)
    assert kept == [PARAPHRASE]


def test_the_detail_quotes_at_most_300_characters_of_the_benchmark_text(bench_files, tmp_path):
    long = " ".join(["Consider the following long setup sentence number one of many."] * 10)
    path = write_jsonl(tmp_path / "long.jsonl", [{"problem": long}])
    cfg = DecontaminateConfig(benchmarks=[{"name": "long", "path": str(path)}])
    _, rejected = check([long], cfg, tmp_path)
    quoted = rejected[long]["detail"].split(": ", 1)[1]
    assert len(quoted) == 300 and quoted.endswith("…")


# --- what passes ---


def test_unrelated_problems_pass_unchanged_and_in_order(bench_files, tmp_path):
    batch = problems([UNRELATED[0], AIME[3], *UNRELATED[1:]])
    result = decontaminate(batch, config(bench_files), context(tmp_path))
    assert result.rows.equals(batch.filter(pa.array([True, False, True, True])))
    assert result.rejected.column("related_id").to_pylist() == ["aime#3"]


def test_same_template_with_other_numbers_passes(bench_files, tmp_path):
    assert not shared_8grams(LOOKALIKE, MATH500[1])
    kept, _ = check([LOOKALIKE], config(bench_files), tmp_path)
    assert kept == [LOOKALIKE]
    # close enough to be a fuzzy match: only the numbers guard lets it through
    _, rejected = check([LOOKALIKE], config(bench_files, fuzzy={"numbers_must_match": False}), tmp_path)
    assert rejected[LOOKALIKE]["related_id"] == "math_500#1"
    assert rejected[LOOKALIKE]["detail"].startswith("fuzzy match ")


def test_a_lookalike_that_keeps_eight_words_in_a_row_is_flagged_whatever_its_numbers(bench_files, tmp_path):
    """Documented behaviour: the numbers guard is for fuzzy matches; a shared 8-gram is a hit."""
    other_numbers = AIME[1].replace("12", "20").replace("35", "21")
    _, rejected = check([other_numbers], config(bench_files), tmp_path)
    assert rejected[other_numbers]["related_id"] == "aime#1"
    assert rejected[other_numbers]["detail"].startswith("8-gram overlap")


def test_benchmark_boilerplate_does_not_flag_a_problem(bench_files, tmp_path):
    kept, _ = check([BOILERPLATE], config(bench_files), tmp_path)
    assert kept == [BOILERPLATE]
    # counted, the boilerplate 8-grams it shares with four AIME problems would reject it
    _, rejected = check([BOILERPLATE], config(bench_files, max_ngram_rows=None), tmp_path)
    assert rejected[BOILERPLATE]["detail"].startswith("8-gram overlap")


def test_min_shared_ngrams(bench_files, tmp_path):
    one_run = "Some unrelated preamble about geometry: " + " ".join(AIME[2].split()[:9]) + " and so on."
    assert len(shared_8grams(one_run, AIME[2])) == 2
    assert check([one_run], config(bench_files), tmp_path)[0] == []
    assert check([one_run], config(bench_files, min_shared_ngrams=3), tmp_path)[0] == [one_run]


def test_short_texts_are_not_fuzzy_matched(bench_files, tmp_path):
    # MATH500[2] has three words: an exact copy (spacing and case aside) is caught, a near one is not
    kept, rejected = check(["EVALUATE $ 7^3 $ .", "Evaluate $7^4$.", "Compute $7^3$."], config(bench_files),
                           tmp_path)
    assert kept == ["Evaluate $7^4$.", "Compute $7^3$."]
    assert rejected["EVALUATE $ 7^3 $ ."]["detail"].startswith("exact match")
    short = "Evaluate $7^3$ exactly."
    lenient = {"threshold": 0.5, "min_tokens": 2, "numbers_must_match": False}
    assert check([short], config(bench_files, fuzzy={**lenient, "min_tokens": 12}), tmp_path)[0] == [short]
    assert check([short], config(bench_files, fuzzy=lenient), tmp_path)[0] == []
    # the paraphrase has 53 words and numbers (2.0 is one): above that, fuzzy matching is not tried
    assert len(words(textnorm.tokens(PARAPHRASE))) == 53
    assert check([PARAPHRASE], config(bench_files, fuzzy={"min_tokens": 54}), tmp_path)[0] == [PARAPHRASE]


def test_a_problem_without_text_passes(bench_files, tmp_path):
    batch = problems(["", UNRELATED[0]])
    result = decontaminate(batch, config(bench_files), context(tmp_path))
    assert result.rows.num_rows == 2 and result.rejected.num_rows == 0


# --- configuration errors ---


def test_a_benchmark_needs_a_dataset_or_a_path():
    with pytest.raises(ValidationError, match="give a Hub 'dataset' id or a local 'path'"):
        DecontaminateConfig.model_validate({"benchmarks": [{"name": "aime_2024", "column": "problem"}]})
    with pytest.raises(ValidationError, match="at least 1 item"):
        DecontaminateConfig.model_validate({"benchmarks": []})
    with pytest.raises(ValidationError, match="extra"):
        DecontaminateConfig.model_validate({"benchmarks": [{"name": "a", "path": "a.jsonl"}], "ngrams": 8})


def test_benchmark_names_must_be_distinct():
    with pytest.raises(ValidationError, match="distinct"):
        DecontaminateConfig.model_validate({"benchmarks": [{"name": "a", "path": "a.jsonl"},
                                                           {"name": "a", "path": "b.jsonl"}]})


def test_a_benchmark_file_without_the_column_is_an_error_naming_file_and_column(bench_files, tmp_path):
    aime = {"name": "aime", "path": str(bench_files["aime"]), "column": "question"}
    cfg = DecontaminateConfig(benchmarks=[aime])
    with pytest.raises(KeyError, match=r"aime\.jsonl line 1: no column 'question'"):
        decontaminate(problems([UNRELATED[0]]), cfg, context(tmp_path))
    cfg = DecontaminateConfig(benchmarks=[{"name": "gpqa", "path": str(bench_files["gpqa_diamond"])}])
    with pytest.raises(KeyError, match=r"gpqa\.parquet: column\(s\) \['problem'\] not found"):
        decontaminate(problems([UNRELATED[0]]), cfg, context(tmp_path))


def test_a_benchmark_without_text_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "blank.jsonl", [{"problem": "  "}])
    cfg = DecontaminateConfig(benchmarks=[{"name": "blank", "path": str(path)}])
    with pytest.raises(ValueError, match=r"benchmark 'blank' \(.*blank\.jsonl\): no text"):
        decontaminate(problems([UNRELATED[0]]), cfg, context(tmp_path))


def test_the_recipe_reports_a_benchmark_with_nowhere_to_read_it():
    text = yaml.safe_dump({"name": "t", "stages": [
        {"name": "ingest", "uses": "ingest", "sources": [{"kind": "files", "paths": ["x.jsonl"]}]},
        {"name": "decontaminate", "uses": "decontaminate", "inputs": ["ingest"],
         "benchmarks": [{"name": "aime_2024", "column": "problem"}]}]})
    with pytest.raises(RecipeError, match="aime_2024"):
        parse_recipe(text, "t.yaml")


# --- through the runner ---


def test_end_to_end_through_the_runner(bench_files, tmp_path):
    questions = [*UNRELATED, AIME[0], LIGHT_EDIT, PARAPHRASE, LOOKALIKE, BOILERPLATE, MATH500[2], EMBEDDED]
    train = write_jsonl(tmp_path / "train.jsonl", [{"question": q, "answer": str(i)}
                                                    for i, q in enumerate(questions)])
    recipe = parse_recipe(f"""\
name: decontam
seed: 0
batch_size: 4
workers: 2
stages:
  - name: ingest
    uses: ingest
    sources:
      - kind: files
        paths: ["{train}"]
  - name: decontaminate
    uses: decontaminate
    inputs: [ingest]
    benchmarks:
      - {{name: aime, path: "{bench_files['aime']}"}}
      - {{name: math_500, path: "{bench_files['math_500']}"}}
      - {{name: gpqa_diamond, path: "{bench_files['gpqa_diamond']}", column: Question}}
""", "decontam.yaml")
    run_dir = tmp_path / "run"
    run(recipe, str(run_dir), Options(progress=False))
    stage = run_dir / "decontaminate"
    manifest = json.loads((stage / "_manifest.json").read_text())
    assert (manifest["rows_in"], manifest["rows_out"], manifest["rows_rejected"]) == (10, 5, 5)
    assert manifest["rejected_by_reason"] == {"contaminated": 5}
    parts = sorted((stage / "rejected").glob("part-*.parquet"))
    rejected = pa.concat_tables([pq.read_table(p) for p in parts])
    by_question = {json.loads(r["row"])["question"]: r for r in rejected.to_pylist()}
    assert {q: r["related_id"] for q, r in by_question.items()} == {
        AIME[0]: "aime#0", LIGHT_EDIT: "aime#1", PARAPHRASE: "gpqa_diamond#0", MATH500[2]: "math_500#2",
        EMBEDDED: "math_500#4"}
    assert {r["stage"] for r in by_question.values()} == {"decontaminate"}
    assert by_question[PARAPHRASE]["source"]["dataset"] == str(train)
    kept = pa.concat_tables([pq.read_table(p) for p in sorted(stage.glob("part-*.parquet"))])
    assert sorted(kept.column("question").to_pylist()) == sorted([*UNRELATED, LOOKALIKE, BOILERPLATE])


def test_a_missing_benchmark_column_stops_the_run(bench_files, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"question": UNRELATED[0], "answer": "1"}])
    aime = {"name": "aime", "path": str(bench_files["aime"]), "column": "question"}
    recipe = parse_recipe(yaml.safe_dump({"name": "t", "workers": 1, "stages": [
        {"name": "ingest", "uses": "ingest", "sources": [{"kind": "files", "paths": [str(train)]}]},
        {"name": "decontaminate", "uses": "decontaminate", "inputs": ["ingest"], "benchmarks": [aime]}]}),
        "t.yaml")
    with pytest.raises(StageFailed, match="no column 'question'"):
        run(recipe, str(tmp_path / "run"), Options(progress=False))


# --- the production recipes ---

HUB_BENCHMARKS = {"aime_2024": "HuggingFaceH4/aime_2024", "aime_2025": "MathArena/aime_2025",
                  "math_500": "HuggingFaceH4/MATH-500", "gpqa_diamond": "Idavidrein/gpqa",
                  "amc_2023": "math-ai/amc23", "livecodebench": "livecodebench/code_generation_lite"}


@pytest.mark.parametrize("name", ["math_long_cot", "code_long_cot"])
def test_production_recipes_name_the_benchmarks_by_hub_id_and_a_local_file_overrides_each(
        name, bench_files, tmp_path):
    from importlib.resources import files

    from pipelines.recipe import load_recipe

    shipped = load_recipe(files("pipelines.recipes") / f"{name}.yaml").instances["decontaminate"].config
    assert {b.name: b.dataset for b in shipped.benchmarks} == HUB_BENCHMARKS
    assert all(b.path is None for b in shipped.benchmarks)
    # the same recipe, air-gapped: every benchmark read from a local file instead of the Hub
    texts = {"aime_2024": AIME[0], "aime_2025": AIME[1], "math_500": MATH500[0], "gpqa_diamond": GPQA[0],
             "amc_2023": MATH500[1], "livecodebench": MATH500[2]}
    local = {b.name: write_jsonl(tmp_path / f"{b.name}.jsonl", [{b.column: texts[b.name]}])
             for b in shipped.benchmarks}
    overridden = shipped.model_copy(update={"benchmarks": [
        b.model_copy(update={"path": str(local[b.name])}) for b in shipped.benchmarks]})
    kept, rejected = check([AIME[1], UNRELATED[0], GPQA[0]], overridden, tmp_path)
    assert kept == [UNRELATED[0]]
    assert {r["related_id"].split("#")[0] for r in rejected.values()} == {"aime_2025", "gpqa_diamond"}
