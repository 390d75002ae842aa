"""The decontaminate stage: drop problems that are copies or light paraphrases of benchmark problems.

Training on a benchmark's problems inflates the score it reports, so every problem is checked
against the benchmark sets the recipe names (production recipes: AIME 2024 and 2025, MATH-500,
GPQA-Diamond, AMC 2023, LiveCodeBench as Hub ids; any of them can be local files instead, which is
what tests and air-gapped runs use). Texts are compared after ``textnorm``'s math-safe
normalisation, so numbers and symbols count and case, spacing and punctuation do not:

- whole-text equality of the normalised tokens, with every benchmark row: the one test for
  benchmark problems shorter than n words, which have no n-gram;
- word n-gram overlap (8 by default): eight words in a row are nearly always specific to one
  problem, so one shared 8-gram flags the row (``min_shared_ngrams``), also when the benchmark
  problem sits inside a longer prompt or was edited elsewhere, and whatever the numbers say.
  "Words" are the word and number tokens: symbol tokens are left out of the n-grams, because
  ``$\frac{3}{7}$`` alone is 11 of them and an 8-gram of symbols would match every problem that
  writes that fraction. Nor is a benchmark's own boilerplate counted: AIME problems by the dozen
  end "where m and n are relatively prime positive integers. Find m+n.", which would reject every
  training problem ending so; an n-gram found in more than ``max_ngram_rows`` distinct benchmark
  problems is left out;
- fuzzy matching, for light paraphrases that break every 8-gram (a word changed every few words):
  rapidfuzz's normalised similarity of the normalised texts (symbols included), scored only for the
  few benchmark rows that share the most word 3-grams with the problem (an inverted index, never
  all pairs). A fuzzy match counts only when both texts hold the same numbers in the same order:
  the same template with other numbers is another problem with another answer. Texts under
  ``min_tokens`` words are not fuzzy matched at all: short texts are close by chance ("sum" vs
  "product" of the divisors of 36).

Out of core: the input streams through in batches and is never held. Only the benchmark index is
(hundreds to a few thousand rows), built once per worker process per config. Both indexes are
sorted arrays of 64-bit n-gram hashes searched once per batch with numpy, so a million rows cost
little more than tokenising and hashing them.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator
from rapidfuzz import fuzz

from schemas.validate import rejected_table
from stages import textnorm
from stages.contract import Context, Result, StageConfig
from stages.sources.texts import TextSet, read_texts

DETAIL_CHARS = 300  # of the matched benchmark text quoted in a rejected row's detail


class FuzzyConfig(StageConfig):
    enabled: bool = Field(True, description="also catch light paraphrases that share no n-gram")
    threshold: float = Field(
        0.88, gt=0, le=1, description="rapidfuzz normalised similarity (Indel ratio, 0..1) of the "
        "normalised texts from which a problem counts as a paraphrase of a benchmark problem")
    candidate_ngram: int = Field(3, gt=0, description="word n-grams of the index that finds candidates")
    max_candidates: int = Field(
        10, gt=0, description="benchmark rows scored per problem: those sharing the most candidate n-grams")
    max_postings: int = Field(
        200, gt=0, description="a candidate n-gram found in more benchmark rows than this is boilerplate "
        "('find the number of') that points at no problem in particular: it is not counted")
    min_tokens: int = Field(
        12, gt=0, description="texts with fewer words and numbers (symbols not counted) are not fuzzy "
        "matched: short texts are similar by chance. Exact and n-gram matches still count")
    numbers_must_match: bool = Field(
        True, description="a fuzzy match counts only when both texts have the same numbers in the same "
        "order (n-gram and exact hits count regardless)")


class DecontaminateConfig(StageConfig):
    column: str = Field("question", description="the problems column checked against the benchmarks")
    benchmarks: list[TextSet] = Field(
        min_length=1, description="benchmark sets: Hub ids with a column, or local files (a 'path' wins)")
    ngram: int = Field(8, gt=0, description="n-gram length of the overlap test, in words and numbers "
                       "after normalisation (symbols are not counted)")
    min_shared_ngrams: int = Field(
        1, gt=0, description="shared n-grams with one benchmark row that flag a problem (capped at the "
        "number that row has)")
    max_ngram_rows: int | None = Field(
        3, gt=0, description="an n-gram found in more distinct benchmark problems than this is the "
        "benchmark's boilerplate ('m and n are relatively prime positive integers find m + n'), not one "
        "problem's text: it is not counted. None counts every n-gram. Exact copies are caught regardless")
    fuzzy: FuzzyConfig = Field(default_factory=FuzzyConfig)

    @field_validator("benchmarks")
    @classmethod
    def _distinct_names(cls, benchmarks: list[TextSet]) -> list[TextSet]:
        names = [b.name for b in benchmarks]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"benchmark names must be distinct (they name the matched rows): {twice}")
        return benchmarks


def decontaminate(batch: pa.Table, config: DecontaminateConfig, ctx: Context) -> Result:
    if config.column not in batch.column_names:
        raise KeyError(f"decontaminate: the input has no column '{config.column}'; "
                       f"columns: {', '.join(batch.column_names)}")
    index = load_index(config)
    toks = [textnorm.tokens(t) if isinstance(t, str) else [] for t in batch.column(config.column).to_pylist()]
    found = match(toks, index, config)
    if not found:
        return Result(batch)
    flagged = sorted(found)
    rejected = []
    for i, row in zip(flagged, batch.take(flagged).to_pylist(), strict=True):
        bench, how = found[i]
        rejected.append({
            "table": "problems", "reason": "contaminated", "problem_id": row.get("problem_id"),
            "related_id": bench.row_id, "source": row.get("source"), "row": row,
            "detail": f"{how} with {bench.row_id} ({bench.location}): {clip(bench.text)}",
        })
    keep = np.ones(batch.num_rows, dtype=bool)
    keep[flagged] = False
    return Result(batch.filter(pa.array(keep)), rejected_table(rejected))


# --- the benchmark index ------------------------------------------------------------------------


@dataclass(frozen=True)
class Bench:
    """One benchmark row as the index keeps it."""

    row_id: str  # "math_500#17"
    location: str  # "data/math500.jsonl line 18"
    text: str
    normalised: str
    numbers: tuple[str, ...]
    n_grams: int  # distinct word n-grams (0 for a text shorter than n words or seen before)


@dataclass(frozen=True)
class Postings:
    """An inverted index as two parallel arrays sorted by hash: (n-gram hash, benchmark row)."""

    keys: np.ndarray  # uint64
    rows: np.ndarray  # int64

    @classmethod
    def build(cls, hashes: Sequence[Sequence[int]]) -> Postings:
        """From each benchmark row's distinct hashes (``hashes[row]``)."""
        keys = np.array(list(itertools.chain.from_iterable(hashes)), dtype=np.uint64)
        rows = np.repeat(np.arange(len(hashes), dtype=np.int64), [len(hs) for hs in hashes])
        order = np.argsort(keys, kind="stable")
        return cls(keys[order], rows[order])

    def shared(self, hashes: Sequence[Sequence[int]], n_rows: int,
               max_postings: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query, benchmark row, shared hashes) for every pair sharing one, ordered by query, then
        most shared first. ``hashes[q]`` are query q's distinct hashes; a hash in more than
        ``max_postings`` rows is not counted."""
        query = np.repeat(np.arange(len(hashes), dtype=np.int64), [len(hs) for hs in hashes])
        wanted = np.array(list(itertools.chain.from_iterable(hashes)), dtype=np.uint64)
        lo = np.searchsorted(self.keys, wanted, "left")
        width = np.searchsorted(self.keys, wanted, "right") - lo
        hit = (width > 0) if max_postings is None else (width > 0) & (width <= max_postings)
        lo, width, query = lo[hit], width[hit], query[hit]
        # every posting of every hit: position lo + k for k < width, one run per hit
        starts = np.repeat(lo - (np.cumsum(width) - width), width)
        rows = self.rows[starts + np.arange(int(width.sum()))]
        pairs, counts = np.unique(np.repeat(query, width) * n_rows + rows, return_counts=True)
        queries, rows = np.divmod(pairs, n_rows)  # sorted by query, then row
        most = int(counts.max(initial=0))
        order = np.argsort(queries * (most + 1) + (most - counts), kind="stable")  # then most shared first
        return queries[order], rows[order], counts[order]


@dataclass(frozen=True)
class Index:
    benches: list[Bench]
    exact: dict[str, int]  # textnorm.text_key of the normalised text -> first benchmark row with it
    grams: Postings  # n-gram hash -> benchmark rows (distinct texts, at least n tokens long)
    candidates: Postings | None  # candidate n-gram hash -> benchmark rows long enough to fuzzy match


def load_index(config: DecontaminateConfig) -> Index:
    """The index of ``config``'s benchmarks, built once per process (the runner's workers are spawned)."""
    return _cached_index(config.model_dump_json())


@functools.lru_cache(maxsize=4)
def _cached_index(config_json: str) -> Index:
    return build_index(DecontaminateConfig.model_validate_json(config_json))


def build_index(config: DecontaminateConfig) -> Index:
    """Read every benchmark (its texts stay in memory: they are small) and index its n-grams.

    A benchmark that yields no text is an error: one read wrongly would silently let everything by.
    """
    benches: list[Bench] = []
    exact: dict[str, int] = {}
    grams: list[list[int]] = []
    candidates: list[list[int]] = []
    for text_set in config.benchmarks:
        before = len(benches)
        for row_id, location, text in read_texts(text_set):
            toks = textnorm.tokens(text)
            if not toks:
                continue
            key = textnorm.text_key(toks)
            # a text seen before (the same problem in two sets) is caught by ``exact`` as its first
            # row; indexing it again would make its n-grams look like boilerplate
            first = key not in exact
            exact.setdefault(key, len(benches))
            text_words = words(toks)
            hashes = _ngrams(text_words, config.ngram) if first else []
            benches.append(Bench(row_id, location, text, " ".join(toks), textnorm.numbers(toks), len(hashes)))
            grams.append(hashes)
            fuzzy = first and config.fuzzy.enabled and len(text_words) >= config.fuzzy.min_tokens
            candidates.append(_ngrams(text_words, config.fuzzy.candidate_ngram) if fuzzy else [])
        if len(benches) == before:
            raise ValueError(f"benchmark '{text_set.name}' ({text_set.where()}): no text in column "
                             f"'{text_set.column}'")
    return Index(benches, exact, Postings.build(grams),
                 Postings.build(candidates) if config.fuzzy.enabled else None)


def words(toks: Sequence[str]) -> list[str]:
    """The word and number tokens: every symbol is a one-character token of its own in ``textnorm``."""
    return [t for t in toks if len(t) > 1 or t.isalnum()]


def _ngrams(text_words: Sequence[str], n: int) -> list[int]:
    """Hashes of the distinct n-grams; none for fewer than n words (unlike ``textnorm.shingle_hashes``,
    which then hashes the whole text: here whole texts are ``Index.exact``'s)."""
    return textnorm.shingle_hashes(text_words, n) if len(text_words) >= n else []


# --- matching -----------------------------------------------------------------------------------


def match(toks: Sequence[list[str]], index: Index,
          config: DecontaminateConfig) -> dict[int, tuple[Bench, str]]:
    """The problems (by position) found in a benchmark: the benchmark row and how it matched."""
    n_rows = len(index.benches)
    found: dict[int, tuple[Bench, str]] = {}
    for i, t in enumerate(toks):
        b = index.exact.get(textnorm.text_key(t)) if t else None
        if b is not None:
            found[i] = (index.benches[b], "exact match after normalisation")
    text_words = [words(t) for t in toks]
    hashes = [[] if i in found else _ngrams(w, config.ngram) for i, w in enumerate(text_words)]
    shared_by = index.grams.shared(hashes, n_rows, config.max_ngram_rows)
    for q, b, shared in zip(*(a.tolist() for a in shared_by), strict=True):
        bench = index.benches[b]
        if q in found or shared < min(config.min_shared_ngrams, bench.n_grams):
            continue  # pairs come most shared first: the first that qualifies is the best
        found[q] = (bench, f"{config.ngram}-gram overlap: {shared} shared {config.ngram}-grams")
    fz = config.fuzzy
    if index.candidates is None:
        return found
    todo = [i for i, t in enumerate(toks) if i not in found]
    cand = [_ngrams(text_words[i], fz.candidate_ngram) if len(text_words[i]) >= fz.min_tokens else []
            for i in todo]
    queries, rows, _ = index.candidates.shared(cand, n_rows, fz.max_postings)
    # the first max_candidates of each query's run (most shared first); the rest are never scored
    top = np.arange(len(queries)) - np.searchsorted(queries, queries, "left") < fz.max_candidates
    best: dict[int, tuple[float, Bench]] = {}
    seen: dict[int, tuple[str, tuple[str, ...]]] = {}  # a query's normalised text and numbers
    for q, b in zip(queries[top].tolist(), rows[top].tolist(), strict=True):
        i = todo[q]
        bench = index.benches[b]
        if i not in seen:
            seen[i] = (" ".join(toks[i]), textnorm.numbers(toks[i]))
        text, nums = seen[i]
        if fz.numbers_must_match and nums != bench.numbers:
            continue
        score = fuzz.ratio(text, bench.normalised, score_cutoff=fz.threshold * 100) / 100
        if score >= fz.threshold and score > best.get(i, (0.0, None))[0]:
            best[i] = (score, bench)
    for i, (score, bench) in best.items():
        found[i] = (bench, f"fuzzy match {score:.2f} (threshold {fz.threshold:g}, same numbers)"
                    if fz.numbers_must_match else f"fuzzy match {score:.2f} (threshold {fz.threshold:g})")
    return found


def clip(text: str, limit: int = DETAIL_CHARS) -> str:
    """The text on one line, cut to ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
