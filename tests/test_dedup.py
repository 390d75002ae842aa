"""The dedup stages: exact copies (after math-safe normalisation), near duplicates (MinHash candidates
confirmed by their exact word-5-gram Jaccard) and paraphrases (MiniLM cosine) are removed naming the row
that survives; same-template look-alikes with other numbers, short equations and unrelated problems are
not. Keep policies, chains of duplicates, earlier releases as references, rows without text, the process
pool and configuration errors are covered too.

Inputs are small Parquet files written under ``tmp_path``, references local JSONL and Parquet files;
nothing touches the internet. The stage is called directly with a collecting ``out``; one test runs
ingest -> dedup_problems through the real runner. MiniLM is loaded by one module-scoped fixture only.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError
from support.outputs import CollectingOutput

from pipelines.recipe import parse_recipe
from pipelines.runner import Options, run
from schemas.tables import PROBLEMS, REJECTED, RL, TRACES
from stages import textnorm
from stages.contract import Context, Inputs
from stages.dedup import DedupConfig, dedup
from stages.emit import EmitConfig

# --- problems (written for these tests) ---------------------------------------------------------------

# exact copies: the same problem spelled differently (case, spacing, punctuation, LaTeX, separators)
FRACTION = "What is the value of $\\dfrac{3}{4} + \\dfrac{5}{6}$? Express your answer as a common fraction."
FRACTION_COPY = "what is the value of $\\frac{3}{4}+\\frac{5}{6}$ ?  Express your answer as a common fraction"
FRACTION_COPY_2 = ("WHAT IS THE VALUE OF $\\tfrac{3}{4} + \\tfrac{5}{6}$? Express your answer as a common "
                   "fraction!")
FRACTION_OTHER = ("What is the value of $\\frac{3}{4} + \\frac{5}{7}$? Express your answer as a common "
                  "fraction.")
PENCILS = "A store sells 1,000 pencils for $\\$250$. How much does one pencil cost, in cents?"
PENCILS_COPY = "A STORE sells 1000 pencils for $\\$250$;   how much does one pencil cost in cents"
PENCILS_OTHER = "A store sells 1,000 pencils for $\\$205$. How much does one pencil cost, in cents?"
PARENS = "Find all real numbers $x$ such that $\\left(x - 1\\right)^2 = 9$."
PARENS_COPY = "Find all real numbers $x$ such that $(x-1)^2=9$."

# long competition problems (67-74 words), each unlike the others
LONG = [
    # 0 geometry
    "In triangle $ABC$, $AB = 13$, $BC = 14$, and $CA = 15$. Let $H$ be the orthocenter of triangle $ABC$, "
    "and let $M$ be the midpoint of side $BC$. The line through $H$ perpendicular to $AM$ meets lines $AB$ "
    "and $AC$ at points $P$ and $Q$, respectively. The area of triangle $APQ$ can be written as "
    "$\\frac{m}{n}$, where $m$ and $n$ are relatively prime positive integers. Find $m + n$.",
    # 1 probability
    "A bag contains $6$ red balls, $4$ blue balls, and $5$ green balls. Balls are drawn from the bag one at "
    "a time, at random and without replacement, until every ball of at least one color has been drawn. The "
    "probability that the last ball drawn is green can be written as $\\frac{m}{n}$, where $m$ and $n$ are "
    "relatively prime positive integers. Find the remainder when $m + n$ is divided by $1000$.",
    # 2 number theory
    "For each positive integer $n$, let $f(n)$ be the sum of the digits of $n$ when it is written in base "
    "$5$, and let $g(n)$ be the sum of the digits of $f(n)$ when it is written in base $9$. Let $N$ be the "
    "least positive integer $n$ such that the base-$12$ representation of $g(n)$ cannot be expressed using "
    "only the digits $0$ through $9$. Find the remainder when $N$ is divided by $1000$.",
    # 3 sequences
    "A sequence of real numbers $a_1, a_2, a_3, \\ldots$ satisfies $a_1 = 2$, $a_2 = 7$, and "
    "$a_{n+2} = 3a_{n+1} - 2a_n + n$ for every positive integer $n$. Let $S$ be the sum of the first $20$ "
    "terms of the sequence. Determine the number of positive divisors of $S$ that are perfect squares, "
    "and explain why no other divisor of $S$ can be a perfect square.",
]
# light edits: one or two words changed, numbers kept
EDITS = [
    LONG[0].replace("Let $H$ be the", "Let $H$ denote the").replace("meets lines", "intersects lines"),
    LONG[1].replace("Balls are drawn", "Balls are removed"),
    LONG[2].replace("least positive integer", "smallest positive integer"),
    LONG[3].replace("Determine the number", "Find the number"),
]
# the same template with one number changed: a different problem
LOOKALIKES = [
    LONG[0].replace("$BC = 14$", "$BC = 16$"),
    LONG[1].replace("$4$ blue", "$3$ blue"),
    LONG[2].replace("base-$12$", "base-$16$"),
    LONG[3].replace("first $20$", "first $30$"),
]
# short equations: web-text dedup (digits -> 0) would merge them
SHORT = ["Solve for $x$: $2x+3=7$.", "Solve for $x$: $5x+1=9$."]
UNRELATED = "Prove that for every positive integer $n$, the number $n^5 - n$ is divisible by $30$."

# paraphrases (same numbers, reworded) and look-alikes; the comments give the all-MiniLM-L6-v2 cosine
# with the first wording, measured when the test was written (threshold 0.9). Not used: "How many miles
# does a train cover in 3 hours at 60 miles per hour?" scores 0.817 against TRAIN, and its numbers come in
# the other order (3, 60), so the guard would refuse it too.
RECTANGLE = "A rectangle has a length of 8 cm and a width of 5 cm. What is its area?"
RECTANGLE_PARAPHRASE = (  # 0.972
    "What is the area of a rectangle whose length is 8 cm and whose width is 5 cm?")
RECTANGLE_OTHER = "A rectangle has a length of 9 cm and a width of 4 cm. What is its area?"  # 0.832
REMAINDER = "What is the remainder when 2^100 is divided by 7?"
REMAINDER_PARAPHRASE = "Find the remainder of 2^100 upon division by 7."  # 0.958
REMAINDER_OTHER = "What is the remainder when 3^100 is divided by 7?"  # 0.910: only the guard saves it
SHIRT = "If a shirt costs $40 and is on sale for 25% off, what is the sale price?"
SHIRT_PARAPHRASE = "A $40 shirt is on sale at 25% off. What does it cost on sale?"  # 0.966
TRAIN = "A train travels at 60 mph for 3 hours. How far does it go?"
TRAIN_PARAPHRASE = "A train moving at 60 miles per hour for 3 hours travels how far?"  # 0.932
BOOKS = "How many ways can 5 distinct books be arranged on a shelf?"
BOOKS_PARAPHRASE = "In how many different orders can 5 distinct books be placed on a shelf?"  # 0.929
RECTANGLE_PARAPHRASE_COPY = "WHAT IS THE AREA OF A RECTANGLE WHOSE LENGTH IS 8 CM AND WHOSE WIDTH IS 5 CM"

# --- traces --------------------------------------------------------------------------------------------

HEXAGON = (
    "<think>\nThe hexagon is convex, so drawing every diagonal from one vertex splits it into 6 - 2 = 4 "
    "triangles. The angles of each triangle sum to 180 degrees, and together the triangles' angles make up "
    "the interior angles of the hexagon exactly, so the sum is 4 * 180 = 720 degrees. As a check, a regular "
    "hexagon has interior angles of 120 degrees each, and 6 * 120 = 720.\n</think>\n"
    "The interior angles of a convex hexagon sum to $\\boxed{720}$ degrees."
)
PRODUCT = (
    "<think>\nLet the two numbers be x and y with x + y = 20 and x - y = 4. Adding the two equations gives "
    "2x = 24, so x = 12, and then y = 20 - 12 = 8. Their product is 12 * 8 = 96. Checking the result: "
    "12 + 8 = 20 and 12 - 8 = 4, both as required, so the answer is consistent with the conditions.\n"
    "</think>\nThe product of the two numbers is $\\boxed{96}$."
)


# --- helpers -------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    kept: list[str]  # ids in output order
    rejected: dict[str, dict]  # id -> rejected row
    stats: dict[str, Any]  # stats["dedup"]
    out: CollectingOutput


def context(tmp_path: Path, stage_type: str = "dedup_problems", workers: int = 1) -> Context:
    return Context(recipe="dedup-test", run_id="r", recipe_fingerprint="f", code_version="c", seed=0,
                   sample=None, stage="dedup", stage_type=stage_type, fingerprint="fp",
                   tokenizer_spec="chars", stage_dir=str(tmp_path / "stage"), workers=workers)


def source(row: int) -> dict[str, Any]:
    return {"dataset": "train.jsonl", "config": None, "split": "train", "revision": None, "row": row}


def write_problems(path: Path, questions: list[str | None]) -> str:
    """Problems p0, p1, ... in order."""
    rows = [{"problem_id": f"p{i}", "question": q, "answer": "1", "answer_type": "math", "source": source(i)}
            for i, q in enumerate(questions)]
    pq.write_table(pa.Table.from_pylist(rows, schema=PROBLEMS), path)
    return str(path)


def trace(tid: str, completion: str, verified: bool | None = None, score: float | None = None,
          problem_id: str = "p0") -> dict[str, Any]:
    return {"trace_id": tid, "problem_id": problem_id, "variant": "original", "sample_index": 0,
            "completion": completion, "verified": verified, "score": score}


def write_traces(path: Path, rows: list[dict[str, Any]]) -> str:
    pq.write_table(pa.Table.from_pylist(rows, schema=TRACES), path)
    return str(path)


def run_dedup(files: list[str], cfg: dict[str, Any], tmp_path: Path, table: str = "problems",
              workers: int = 1) -> Outcome:
    stage_type = "dedup_problems" if table == "problems" else "dedup_traces"
    id_column = "problem_id" if table == "problems" else "trace_id"
    out = CollectingOutput()
    ctx = context(tmp_path, stage_type, workers)
    dedup(Inputs({table: files}), DedupConfig.model_validate(cfg), ctx, out)
    for t in out.rejected:
        assert t.schema == REJECTED
    rejected = {r[id_column]: r for r in out.rejected_rows()}
    for r in rejected.values():
        assert r["table"] == table
    return Outcome([r[id_column] for r in out.rows()], rejected, out.collected["dedup"], out)


def jaccard(a: str, b: str) -> float:
    """The exact Jaccard the stage confirms with: word-5-gram shingles of the normalised tokens."""
    x = set(textnorm.shingle_hashes(textnorm.tokens(a), 5))
    y = set(textnorm.shingle_hashes(textnorm.tokens(b), 5))
    return len(x & y) / len(x | y)


def similarity(detail: str, label: str, measure: str) -> tuple[float, str]:
    """(similarity, id) from a detail such as "near duplicate (Jaccard 0.897) of p1"."""
    match = re.match(rf"{label} \({measure} (\d\.\d{{3}})\) of (\S+)", detail)
    assert match, detail
    return float(match.group(1)), match.group(2)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --- exact ---------------------------------------------------------------------------------------------


def test_exact_copies_differing_in_case_spacing_punctuation_and_latex_are_removed_naming_the_first(tmp_path):
    questions = [FRACTION, PENCILS, FRACTION_COPY, PARENS, FRACTION_OTHER, PENCILS_COPY, PARENS_COPY,
                 PENCILS_OTHER, FRACTION_COPY_2]
    got = run_dedup([write_problems(tmp_path / "p.parquet", questions)], {}, tmp_path)
    assert got.kept == ["p0", "p1", "p3", "p4", "p7"]
    assert {pid: (r["reason"], r["related_id"]) for pid, r in got.rejected.items()} == {
        "p2": ("exact_duplicate", "p0"), "p5": ("exact_duplicate", "p1"), "p6": ("exact_duplicate", "p3"),
        "p8": ("exact_duplicate", "p0")}
    r = got.rejected["p5"]
    assert r["detail"] == "exact duplicate (after normalisation) of p1"
    assert json.loads(r["row"])["question"] == PENCILS_COPY
    assert r["source"] == source(5)
    assert got.stats["removed"] == {"exact_duplicate": 4}
    assert got.stats["rows"] == 9 and got.stats["reference_rows"] == 0
    assert set(got.stats["seconds"]) == {"features", "exact", "minhash", "decide", "write"}
    # kept rows come out whole and unchanged
    assert [r["question"] for r in got.out.rows()] == [FRACTION, PENCILS, PARENS, FRACTION_OTHER,
                                                       PENCILS_OTHER]


def test_an_implication_and_its_converse_are_different_problems(tmp_path):
    """``\\Rightarrow`` and ``\\Leftarrow`` must not both normalise to "arrow" (``\\left``/``\\right``
    are sizing commands, not prefixes to strip from longer commands)."""
    implies = "Prove or disprove: for real $x$, $x^2 > 4 \\Rightarrow x > 2$."
    converse = "Prove or disprove: for real $x$, $x^2 > 4 \\Leftarrow x > 2$."
    got = run_dedup([write_problems(tmp_path / "p.parquet", [implies, converse])], {}, tmp_path)
    assert got.kept == ["p0", "p1"], got.rejected


def test_a_decimal_is_not_an_exact_duplicate_of_a_list_of_integers(tmp_path):
    """The mean of 2.5, 4 and 6 is not the mean of 2, 5, 4 and 6: the decimal point carries meaning."""
    decimal = "Find the mean of the numbers 2.5, 4, and 6."
    integers = "Find the mean of the numbers 2, 5, 4, and 6."
    got = run_dedup([write_problems(tmp_path / "p.parquet", [decimal, integers])], {}, tmp_path)
    assert got.kept == ["p0", "p1"], got.rejected


# --- near duplicates -------------------------------------------------------------------------------------


def test_lightly_edited_long_problems_are_near_duplicates_with_their_jaccard(tmp_path):
    for long, edit in zip(LONG, EDITS, strict=True):
        assert 60 <= len(long.split()) <= 120
        assert textnorm.normalised(long) != textnorm.normalised(edit)
    got = run_dedup([write_problems(tmp_path / "p.parquet", [*LONG, *EDITS, *SHORT])], {}, tmp_path)
    assert got.kept == ["p0", "p1", "p2", "p3", "p8", "p9"]
    for i, edit in enumerate(EDITS):
        r = got.rejected[f"p{4 + i}"]
        assert (r["reason"], r["related_id"]) == ("near_duplicate", f"p{i}")
        sim, named = similarity(r["detail"], "near duplicate", "Jaccard")
        assert named == f"p{i}" and sim >= 0.8
        assert sim == pytest.approx(jaccard(LONG[i], edit), abs=5e-4)
    assert got.stats["removed"] == {"near_duplicate": 4}
    assert got.stats["minhash"]["confirmed_pairs"] == 4


def test_same_template_lookalikes_with_other_numbers_survive_by_the_numbers_guard(tmp_path):
    questions = [*LONG, *LOOKALIKES, *SHORT]
    for long, lookalike in zip(LONG, LOOKALIKES, strict=True):
        assert jaccard(long, lookalike) >= 0.8  # as close as a light edit: only the numbers differ
    path = write_problems(tmp_path / "p.parquet", questions)
    got = run_dedup([path], {}, tmp_path)
    assert got.kept == [f"p{i}" for i in range(10)] and not got.rejected
    # without the guard each one-number look-alike is a near duplicate; the short equations still pass
    got = run_dedup([path], {"numbers_must_match": False}, tmp_path)
    assert got.kept == ["p0", "p1", "p2", "p3", "p8", "p9"]
    assert {pid: (r["reason"], r["related_id"]) for pid, r in got.rejected.items()} == {
        f"p{4 + i}": ("near_duplicate", f"p{i}") for i in range(4)}
    assert got.stats["numbers_must_match"] is False


def test_the_guard_is_on_for_problems_and_off_for_traces_by_default(tmp_path):
    problems = run_dedup([write_problems(tmp_path / "p.parquet", [LONG[0], LOOKALIKES[0]])], {}, tmp_path)
    assert problems.stats["numbers_must_match"] is True and problems.kept == ["p0", "p1"]
    rows = [trace("t0", LONG[0]), trace("t1", LOOKALIKES[0])]
    traces = run_dedup([write_traces(tmp_path / "t.parquet", rows)], {}, tmp_path, table="traces")
    assert traces.stats["numbers_must_match"] is False and traces.kept == ["t0"]
    assert traces.rejected["t1"]["reason"] == "near_duplicate"


def test_without_exact_an_exact_copy_is_a_near_duplicate_of_jaccard_one(tmp_path):
    got = run_dedup([write_problems(tmp_path / "p.parquet", [LONG[1], LONG[1].upper()])],
                    {"methods": ["minhash"]}, tmp_path)
    assert got.kept == ["p0"]
    assert got.rejected["p1"]["detail"] == "near duplicate (Jaccard 1.000) of p0"


# --- semantic ------------------------------------------------------------------------------------------

SEMANTIC = [RECTANGLE, RECTANGLE_PARAPHRASE, RECTANGLE_OTHER, REMAINDER, REMAINDER_PARAPHRASE,
            REMAINDER_OTHER, SHIRT, SHIRT_PARAPHRASE, TRAIN, TRAIN_PARAPHRASE, BOOKS, BOOKS_PARAPHRASE,
            UNRELATED, RECTANGLE_PARAPHRASE_COPY]


@pytest.fixture(scope="module")
def semantic_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """The semantic stage with and without the numbers guard (the model loads once; the second is cheap)."""
    tmp = tmp_path_factory.mktemp("semantic")
    path = write_problems(tmp / "p.parquet", SEMANTIC)
    methods = {"methods": ["exact", "minhash", "semantic"]}
    return {"guarded": run_dedup([path], methods, tmp),
            "unguarded": run_dedup([path], {**methods, "numbers_must_match": False}, tmp)}


def test_paraphrases_are_semantic_duplicates_of_the_first_wording(semantic_runs):
    got = semantic_runs["guarded"]
    # 0 rectangle, 3 remainder, 6 shirt, 8 train, 10 books; 2 and 5 are look-alikes, 12 is unrelated
    assert got.kept == ["p0", "p2", "p3", "p5", "p6", "p8", "p10", "p12"]
    for paraphrase, original in {"p1": "p0", "p4": "p3", "p7": "p6", "p9": "p8", "p11": "p10"}.items():
        r = got.rejected[paraphrase]
        assert (r["reason"], r["related_id"]) == ("semantic_duplicate", original)
        sim, named = similarity(r["detail"], "semantic duplicate", "cosine")
        assert named == original and 0.9 <= sim <= 1.0
    assert got.stats["removed"] == {"exact_duplicate": 1, "semantic_duplicate": 5}
    assert got.stats["semantic"]["rows_embedded"] == len(SEMANTIC) - 1  # the exact copy is not embedded
    assert "semantic" in got.stats["seconds"]


def test_an_exact_copy_of_a_paraphrase_names_the_final_survivor(semantic_runs):
    r = semantic_runs["guarded"].rejected["p13"]
    assert (r["reason"], r["related_id"]) == ("exact_duplicate", "p0")
    assert r["detail"].startswith("exact duplicate (after normalisation) of p1, which is a semantic "
                                  "duplicate (cosine 0.9")
    assert r["detail"].endswith(" of p0")


def test_a_lookalike_above_the_cosine_threshold_survives_only_by_the_numbers_guard(semantic_runs):
    assert "p5" in semantic_runs["guarded"].kept
    unguarded = semantic_runs["unguarded"]
    assert unguarded.kept == ["p0", "p2", "p3", "p6", "p8", "p10", "p12"]
    r = unguarded.rejected["p5"]
    assert (r["reason"], r["related_id"]) == ("semantic_duplicate", "p3")
    assert similarity(r["detail"], "semantic duplicate", "cosine")[0] >= 0.9


# --- keep policies and chains (traces) ----------------------------------------------------------------

# copies of one trace, equal after normalisation, longest first
HEXAGON_COPIES = [
    trace("t_long", HEXAGON.replace(" ", "  "), verified=False, score=0.1),
    trace("t_top", HEXAGON + "\n\n\n", verified=True, score=0.9),
    trace("t_short", HEXAGON.replace(", ", " "), verified=True, score=0.5),
    trace("t_shortest", HEXAGON.replace(", ", " ").replace(".", ""), verified=False, score=0.7),
    trace("t_other", PRODUCT, verified=True, score=0.3, problem_id="p1"),
]


@pytest.mark.parametrize(("keep", "survivor"), [
    ("first", "t_long"), ("shortest_verified", "t_short"), ("highest_score", "t_top")])
def test_the_keep_policy_chooses_the_surviving_copy(tmp_path, keep, survivor):
    copies = [r["completion"] for r in HEXAGON_COPIES[:4]]
    assert len({textnorm.normalised(c) for c in copies}) == 1
    assert [len(c) for c in copies] == sorted((len(c) for c in copies), reverse=True)
    path = write_traces(tmp_path / "t.parquet", HEXAGON_COPIES)
    got = run_dedup([path], {"keep": keep}, tmp_path, table="traces")
    assert got.kept == [t for t in ["t_long", "t_top", "t_short", "t_shortest", "t_other"]
                        if t in (survivor, "t_other")]  # input order
    assert set(got.rejected) == {"t_long", "t_top", "t_short", "t_shortest"} - {survivor}
    for r in got.rejected.values():
        assert (r["reason"], r["related_id"], r["problem_id"]) == ("exact_duplicate", survivor, "p0")
        assert r["detail"] == f"exact duplicate (after normalisation) of {survivor}"
    assert got.stats["keep"] == keep


def test_highest_score_without_the_score_column_is_an_error_naming_it(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"trace_id": ["t0", "t1"], "problem_id": ["p0", "p0"],
                             "completion": [HEXAGON, HEXAGON], "verified": [True, False]}), path)
    with pytest.raises(KeyError, match="keep: highest_score ranks by 'score'"):
        run_dedup([str(path)], {"keep": "highest_score"}, tmp_path, table="traces")
    with pytest.raises(KeyError, match="ranks by 'reward'"):
        run_dedup([str(path)], {"keep": "highest_score", "score_column": "reward"}, tmp_path, table="traces")


def test_an_exact_copy_of_a_near_duplicate_names_the_better_ranked_survivor(tmp_path):
    a = PRODUCT
    b = PRODUCT.replace("\n", " ").upper()  # an exact copy of a
    k = PRODUCT.replace("Adding the two equations", "Adding both equations")  # a near duplicate of a
    assert textnorm.normalised(a) == textnorm.normalised(b) and jaccard(a, k) >= 0.8
    rows = [trace("tA", a, verified=False), trace("tB", b, verified=False), trace("tK", k, verified=True)]
    # k comes last but ranks first: shortest_verified puts verified traces first
    got = run_dedup([write_traces(tmp_path / "t.parquet", rows)], {"keep": "shortest_verified"}, tmp_path,
                    table="traces")
    assert got.kept == ["tK"]
    ra, rb = got.rejected["tA"], got.rejected["tB"]
    assert (ra["reason"], ra["related_id"]) == ("near_duplicate", "tK")
    assert (rb["reason"], rb["related_id"]) == ("exact_duplicate", "tK")
    sim, _ = similarity(ra["detail"], "near duplicate", "Jaccard")
    assert rb["detail"] == (f"exact duplicate (after normalisation) of tA, which is a near duplicate "
                            f"(Jaccard {sim:.3f}) of tK")


# --- references ----------------------------------------------------------------------------------------


def test_reference_rows_remove_their_duplicates_as_in_reference_and_are_never_written(tmp_path):
    prev = write_jsonl(tmp_path / "prev.jsonl", [
        {"problem": LONG[1]}, {"problem": "  "}, {"problem": PENCILS}, {"problem": LONG[2]}])
    questions = [PENCILS_COPY, EDITS[2], LONG[0], EDITS[0], EDITS[2].replace("  ", " ").lower()]
    cfg = {"reference": [{"name": "prev", "path": str(prev)}]}
    got = run_dedup([write_problems(tmp_path / "p.parquet", questions)], cfg, tmp_path)
    assert got.kept == ["p2"]
    assert [r["question"] for r in got.out.rows()] == [LONG[0]]  # no reference row is written
    assert {pid: (r["reason"], r["related_id"]) for pid, r in got.rejected.items()} == {
        "p0": ("in_reference", "prev#2"), "p1": ("in_reference", "prev#3"), "p3": ("near_duplicate", "p2"),
        "p4": ("in_reference", "prev#3")}
    assert got.rejected["p0"]["detail"] == f"exact duplicate (after normalisation) of prev#2 ({prev} line 3)"
    sim, _ = similarity(got.rejected["p1"]["detail"], "near duplicate", "Jaccard")
    assert sim >= 0.8 and got.rejected["p1"]["detail"].endswith(f"of prev#3 ({prev} line 4)")
    # an exact copy of a row removed for a reference is in the reference too
    assert got.rejected["p4"]["detail"].startswith("exact duplicate (after normalisation) of p1, which is a "
                                                   "near duplicate (Jaccard")
    assert got.stats["reference_rows"] == 3 and got.stats["rows"] == 5
    assert got.stats["removed"] == {"exact_duplicate": 2, "near_duplicate": 2}  # by method


def test_an_emitted_rl_release_is_a_reference_through_its_user_turns(tmp_path):
    """An ``rl`` shard's ``prompt`` holds the question inside the RL template: long questions still match."""
    template = EmitConfig().rl_template
    release_rows = [{"data_source": "train.jsonl", "prompt": [{"role": "user", "content": template.format(
        question=q)}], "ability": "math", "problem_id": f"old{i}"} for i, q in enumerate([LONG[3], LONG[1]])]
    release = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(release_rows, schema=RL), release)
    cfg = {"reference": [{"name": "release", "path": str(release), "column": "prompt"}]}
    got = run_dedup([write_problems(tmp_path / "p.parquet", [LONG[0], LONG[1], EDITS[3]])], cfg, tmp_path)
    assert got.kept == ["p0"]
    assert {pid: (r["reason"], r["related_id"]) for pid, r in got.rejected.items()} == {
        "p1": ("in_reference", "release#1"), "p2": ("in_reference", "release#0")}
    assert got.rejected["p1"]["detail"].endswith(f"of release#1 ({release} row 1)")
    assert got.stats["reference_rows"] == 2


# --- through the runner --------------------------------------------------------------------------------


def test_end_to_end_through_the_runner(tmp_path):
    questions = [FRACTION, LONG[0], FRACTION_COPY, PENCILS, EDITS[0], LOOKALIKES[0], PENCILS_COPY, *SHORT,
                 PARENS, PARENS_COPY, LONG[1], EDITS[2], UNRELATED, FRACTION_COPY_2]
    removed = {FRACTION_COPY: ("exact_duplicate", FRACTION), PENCILS_COPY: ("exact_duplicate", PENCILS),
               PARENS_COPY: ("exact_duplicate", PARENS), FRACTION_COPY_2: ("exact_duplicate", FRACTION),
               EDITS[0]: ("near_duplicate", LONG[0]), EDITS[2]: ("in_reference", "prev#1")}
    train = write_jsonl(tmp_path / "train.jsonl", [{"question": q, "answer": str(i)}
                                                    for i, q in enumerate(questions)])
    prev = write_jsonl(tmp_path / "prev.jsonl", [{"problem": LONG[3]}, {"problem": LONG[2]}])
    recipe = parse_recipe(f"""\
name: dedup
seed: 0
workers: 1
stages:
  - name: ingest
    uses: ingest
    sources:
      - kind: files
        paths: ["{train}"]
  - name: dedup
    uses: dedup_problems
    inputs: [ingest]
    batch_size: 3
    reference:
      - {{name: prev, path: "{prev}"}}
""", "dedup.yaml")
    run_dir = tmp_path / "run"
    run(recipe, str(run_dir), Options(progress=False))
    ingested = json.loads((run_dir / "ingest" / "_manifest.json").read_text())
    assert ingested["rows_out"] == len(questions)  # ingest's own duplicate check let every spelling through
    stage = run_dir / "dedup"
    manifest = json.loads((stage / "_manifest.json").read_text())
    assert (manifest["rows_in"], manifest["rows_out"], manifest["rows_rejected"]) == (15, 9, 6)
    assert manifest["rows_in"] == manifest["rows_out"] + manifest["rows_rejected"]
    assert manifest["rejected_by_reason"] == {"exact_duplicate": 4, "near_duplicate": 1, "in_reference": 1}
    stats = manifest["stats"]["dedup"]
    assert (stats["rows"], stats["reference_rows"]) == (15, 2)
    assert set(stats["seconds"]) == {"features", "exact", "minhash", "decide", "write"}
    kept = pa.concat_tables([pq.read_table(p) for p in sorted(stage.glob("part-*.parquet"))])
    assert kept.column("question").to_pylist() == [q for q in questions if q not in removed]  # input order
    question_of = dict(zip(kept.column("problem_id").to_pylist(), kept.column("question").to_pylist(),
                           strict=True))
    question_of["prev#1"] = "prev#1"
    parts = sorted((stage / "rejected").glob("part-*.parquet"))
    rejected = pa.concat_tables([pq.read_table(p) for p in parts])
    by_question = {json.loads(r["row"])["question"]: r for r in rejected.to_pylist()}
    assert {q: (r["reason"], question_of[r["related_id"]]) for q, r in by_question.items()} == removed
    assert {(r["stage"], r["stage_type"], r["table"]) for r in by_question.values()} == {
        ("dedup", "dedup_problems", "problems")}
    assert by_question[PENCILS_COPY]["source"]["dataset"] == str(train)


# --- the process pool ----------------------------------------------------------------------------------


def test_workers_give_the_same_result_as_one_process(tmp_path):
    questions = [FRACTION, *LONG, PENCILS, None, *EDITS, FRACTION_COPY, *LOOKALIKES, PENCILS_COPY, *SHORT,
                 PARENS, "", PARENS_COPY, UNRELATED, FRACTION_COPY_2, LONG[1].upper(), EDITS[3].lower()]
    prev = write_jsonl(tmp_path / "prev.jsonl", [{"problem": LONG[2]}, {"problem": FRACTION_OTHER}])
    path = write_problems(tmp_path / "p.parquet", questions)
    cfg = {"batch_size": 7, "reference": [{"name": "prev", "path": str(prev)}]}
    one = run_dedup([path], cfg, tmp_path / "one", workers=1)
    two = run_dedup([path], cfg, tmp_path / "two", workers=2)
    assert len(questions) > 3 * 7 and len(one.rejected) >= 8  # several batches, every kind of duplicate
    reasons = {r["reason"] for r in one.rejected.values()}
    assert reasons == {"exact_duplicate", "near_duplicate", "in_reference"}
    assert two.kept == one.kept
    assert pa.concat_tables(two.out.tables).equals(pa.concat_tables(one.out.tables))
    assert pa.concat_tables(two.out.rejected).equals(pa.concat_tables(one.out.rejected))
    assert {**two.stats, "seconds": None} == {**one.stats, "seconds": None}


# --- rows without text and configuration errors --------------------------------------------------------


def test_rows_without_text_are_kept_and_never_matched(tmp_path):
    questions = [None, "", "   ", None, "?!", "", PENCILS, PENCILS_COPY]
    got = run_dedup([write_problems(tmp_path / "p.parquet", questions)], {}, tmp_path)
    assert got.kept == ["p0", "p1", "p2", "p3", "p4", "p5", "p6"]
    assert list(got.rejected) == ["p7"]
    assert got.stats["rows_without_text"] == 6


def test_a_missing_column_is_an_error_naming_the_file_and_the_column(tmp_path):
    problems = write_problems(tmp_path / "p.parquet", [PENCILS])
    with pytest.raises(KeyError, match=re.escape(f"{problems}: no column 'prompt' to deduplicate")):
        run_dedup([problems], {"column": "prompt"}, tmp_path)
    traces = tmp_path / "t.parquet"
    pq.write_table(pa.table({"trace_id": ["t0"], "problem_id": ["p0"], "text": [HEXAGON]}), traces)
    with pytest.raises(KeyError, match=re.escape(f"{traces}: no column 'completion' to deduplicate")):
        run_dedup([str(traces)], {}, tmp_path, table="traces")


def test_a_reference_without_its_column_is_an_error_naming_the_file(tmp_path):
    prev = write_jsonl(tmp_path / "prev.jsonl", [{"question": PENCILS}])
    problems = write_problems(tmp_path / "p.parquet", [PENCILS])
    with pytest.raises(KeyError, match=re.escape(f"{prev} line 1: no column 'problem' (text set 'prev')")):
        run_dedup([problems], {"reference": [{"name": "prev", "path": str(prev)}]}, tmp_path)


def test_a_method_listed_twice_or_unknown_is_refused():
    with pytest.raises(ValidationError, match="methods lists a method twice"):
        DedupConfig.model_validate({"methods": ["exact", "minhash", "exact"]})
    with pytest.raises(ValidationError):
        DedupConfig.model_validate({"methods": ["fuzzy"]})
    with pytest.raises(ValidationError):
        DedupConfig.model_validate({"methods": []})
