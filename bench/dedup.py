"""Benchmark: the ``dedup_traces`` near-duplicate stage against datatrove's MinHash pipeline (defaults).

Both sides run in the same run, on the same seeded synthetic traces (about 2,000 characters
of math-reasoning-like prose: pseudo-words from a vocabulary of several thousand, numbers, ``x^2``,
``\\frac{3}{7}``, ``2x+5=17``...). Among them are planted pairs, a base trace and an edited copy
(words and expressions replaced by others of the same kind, inserted or deleted at random places;
10% are copies that differ only in case, whitespace and punctuation), whose exact Jaccard similarity
is spread from 0.5 to 1.0. The Jaccard is computed on the distinct word 5-gram shingles of the
math-safe normalisation (``stages.textnorm.tokens`` then ``shingles(tokens, 5)``), and the truth is
"duplicate" iff it is >= 0.8. Unrelated traces share almost no 5-gram.

- ours: the runner runs a recipe (``ingest_traces`` of a JSONL file, then ``dedup_traces`` on the
  ``completion`` column with ``methods: [minhash]``, ``keep: first``); the time is the dedup stage's
  own ``seconds`` from its manifest (ingest is not counted; ``stage_seconds`` is the wall time of the
  whole run, ingest included). A removed row predicts its planted pair a duplicate when its
  ``related_id`` names the twin.
- datatrove_default: datatrove's standard 4-step MinHash pipeline with ``MinhashConfig()`` (its own
  normalisation, digits to 0 and punctuation stripped, and its default ``en`` spaCy word tokenizer)
  on ``LocalPipelineExecutor`` (``--workers`` tasks for signatures and filter, 14 bucket tasks on
  ``--workers`` processes, 1 cluster task); JSONL reader, exclusion writer and a JSONL writer of the
  kept documents as in datatrove's example. The time is the wall clock of all four steps. A removed
  document predicts its planted pair a duplicate (its twin is the only plausible partner).

A removal that no planted pair explains (a singleton removed, or a partner that is not the twin) is a
false positive too. precision = TP / (TP + FP), recall = TP / true duplicate pairs.

    python bench/dedup.py                                  # 20,000 traces, 5,000 pairs; JSON on stdout
    python bench/dedup.py --docs 2000 --pairs 500          # a quick run (under a minute)
    python bench/dedup.py --sides datatrove_default        # one side only

Targets (ours, at Jaccard >= 0.8): throughput >= 10x datatrove's default, recall >= 0.95, precision
>= 0.99. ``by_jaccard`` gives, per band of the exact Jaccard, the planted pairs and how many each side
flagged: the recall per band above 0.8, the false-positive rate per band below it. Logs go to stderr.
The full run takes about 6 minutes on 2 cores, nearly all of it datatrove's spaCy tokenisation. Each
side runs once; the load averages before and after are printed because other work on a shared
machine moves the ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from stages.textnorm import shingles, tokens

THRESHOLD = 0.8
NGRAM = 5
DATASET = "bench-dedup"
SIDES = ("ours", "datatrove_default")

RECIPE = """\
name: bench-dedup
tokenizer: {tokenizer}
workers: {workers}
stages:
  - name: traces
    uses: ingest_traces
    sources: [{{kind: files, name: {dataset}, paths: [{path}]}}]
  - name: dedup
    uses: dedup_traces
    inputs: [traces]
    column: completion
    methods: [minhash]
    keep: first
"""


# ---------------------------------------------------------------------------------------------------------
# data: units are [kind, core, tail]; kind w(ord) | n(umber) | m(ath); tail is punctuation and breaks

VARIABLES = "xyzabcnkmt"
STARTERS = ("so", "then", "therefore", "wait", "now", "hence", "thus", "next", "first", "finally", "but")


def make_vocabulary(rng: random.Random, size: int) -> list[str]:
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"]
    syllables += [s + e for s in syllables[:40] for e in "nrs"]
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))))
    vocabulary = sorted(words)
    rng.shuffle(vocabulary)
    return vocabulary


def number(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.7:
        return str(rng.randint(0, 999))
    if r < 0.9:
        return f"{rng.randint(0, 99)}.{rng.randint(1, 99)}"
    return str(rng.randint(1000, 99_999))


def expression(rng: random.Random) -> str:
    v, a, b = rng.choice(VARIABLES), rng.randint(1, 99), rng.randint(2, 99)
    forms = (f"{v}^{rng.randint(2, 9)}", f"\\frac{{{a}}}{{{b}}}", f"{a}{v}+{b}={rng.randint(0, 999)}",
             f"\\sqrt{{{a}}}", f"({v}-{a})", f"${v}={a}$", f"{v}_{rng.randint(1, 9)}", f"{a}\\cdot {b}")
    return rng.choice(forms)


class Vocabulary:
    def __init__(self, rng: random.Random, size: int):
        self.words = make_vocabulary(rng, size)
        # a mild Zipf-like skew, as prose has: common words are common, 5-grams of them still rare
        self.cumulative = []
        total = 0.0
        for rank in range(len(self.words)):
            total += 1.0 / (rank + 20)
            self.cumulative.append(total)

    def core(self, rng: random.Random, kind: str) -> str:
        if kind == "n":
            return number(rng)
        if kind == "m":
            return expression(rng)
        return rng.choices(self.words, cum_weights=self.cumulative)[0]

    def unit(self, rng: random.Random) -> list[str]:
        r = rng.random()
        kind = "w" if r < 0.78 else "n" if r < 0.86 else "m"
        return [kind, self.core(rng, kind), ""]


def make_trace(rng: random.Random, vocab: Vocabulary, chars: int) -> list[list[str]]:
    units: list[list[str]] = []
    length = 0
    while length < chars:
        sentence = [["w", rng.choice(STARTERS), ","]] if rng.random() < 0.3 else []
        sentence += [vocab.unit(rng) for _ in range(rng.randint(6, 18))]
        for unit in sentence[:-1]:
            if not unit[2] and rng.random() < 0.08:
                unit[2] = ","
        if sentence[0][0] == "w":
            sentence[0][1] = sentence[0][1].capitalize()
        sentence[-1][2] = rng.choice((".", ".", ".", "?", ":")) + ("\n\n" if rng.random() < 0.25 else "")
        units += sentence
        length += sum(len(u[1]) + len(u[2]) + 1 for u in sentence)
    return units


def render(units: list[list[str]]) -> str:
    return " ".join(u[1] + u[2] for u in units).replace("\n ", "\n").strip()


def shingle_set(text: str) -> set[str]:
    return set(shingles(tokens(text), NGRAM))


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


Edit = tuple[float, float, str, dict[str, str]]  # (op, where, kind inserted, a new core of each kind)


def new_edit(rng: random.Random, vocab: Vocabulary) -> Edit:
    r = rng.random()
    kind = "w" if r < 0.78 else "n" if r < 0.86 else "m"
    return rng.random(), rng.random(), kind, {k: vocab.core(rng, k) for k in "wnm"}


def apply_edits(units: list[list[str]], edits: list[Edit]) -> list[list[str]]:
    """Replace (60%: by a new core of the same kind), insert (20%) or delete (20%) at random places."""
    out = [list(u) for u in units]
    for op, where, kind, cores in edits:
        pos = int(where * len(out))
        if op < 0.6:
            out[pos] = [out[pos][0], cores[out[pos][0]], out[pos][2]]
        elif op < 0.8 or len(out) < 50:
            out.insert(pos, [kind, cores[kind], ""])
        else:
            del out[pos]
    return out


def edited_copy(rng: random.Random, vocab: Vocabulary, units: list[list[str]],
                base: set[str], target: float) -> tuple[str, float]:
    """A copy whose exact Jaccard with the base is near ``target``: the first k of one random edit
    sequence, k found by re-fitting J = (S - a k) / (S + a k) (a scattered edit costs about ``a`` of
    the S shingles) to what the last k gave."""
    edits: list[Edit] = []
    size, per_edit = len(base), 6.0
    k = max(1, round(size * (1 - target) / (per_edit * (1 + target))))
    best: tuple[float, str] | None = None
    tried: set[int] = set()
    while k not in tried and len(tried) < 6:
        tried.add(k)
        edits += [new_edit(rng, vocab) for _ in range(k - len(edits))]
        text = render(apply_edits(units, edits[:k]))
        j = jaccard(base, shingle_set(text))
        if best is None or abs(j - target) < abs(best[0] - target):
            best = (j, text)
        if abs(j - target) < 0.005 or j >= 1.0:
            break
        per_edit = max(0.5, size * (1 - j) / (k * (1 + j)))
        k = min(len(units), max(1, round(size * (1 - target) / (per_edit * (1 + target)))))
    assert best is not None
    return best[1], best[0]


def surface_copy(rng: random.Random, units: list[list[str]]) -> str:
    """The same text after normalisation: case, whitespace and prose punctuation changed only."""
    parts = []
    for kind, core, tail in units:
        if kind == "w" and rng.random() < 0.15:
            core = rng.choice((core.upper(), core.capitalize(), core.lower()))
        if tail.startswith((".", ",")) and rng.random() < 0.2:
            tail = rng.choice((";", "!", ",", ".")) + tail[1:]
        parts.append(core + tail + rng.choice((" ", " ", " ", "  ", "\n")))
    return "".join(parts).strip()


def make_data(docs: int, pairs: int, seed: int, chars: int,
              vocabulary: int) -> tuple[list[str], list[tuple[int, int, float]]]:
    """Shuffled texts and the planted pairs as (index, index, exact Jaccard)."""
    if docs < 2 * pairs:
        raise SystemExit(f"--docs {docs} cannot hold --pairs {pairs} (2 docs each)")
    rng = random.Random(seed)
    vocab = Vocabulary(rng, vocabulary)
    texts: list[tuple[str, int]] = []  # (text, pair number or -1)
    jaccards = []
    for p in range(pairs):
        units = make_trace(rng, vocab, rng.randint(chars - 200, chars + 200))
        text = render(units)
        base = shingle_set(text)
        if rng.random() < 0.1:
            copy = surface_copy(rng, units)
            j = jaccard(base, shingle_set(copy))
        else:
            copy, j = edited_copy(rng, vocab, units, base, rng.uniform(0.5, 1.0))
        texts += [(text, p), (copy, p)]
        jaccards.append(j)
        if (p + 1) % 1000 == 0:
            print(f"data: {p + 1}/{pairs} pairs", file=sys.stderr)
    for _ in range(docs - 2 * pairs):
        texts.append((render(make_trace(rng, vocab, rng.randint(chars - 200, chars + 200))), -1))
    rng.shuffle(texts)
    members: dict[int, list[int]] = {}
    for i, (_, p) in enumerate(texts):
        if p >= 0:
            members.setdefault(p, []).append(i)
    planted = [(members[p][0], members[p][1], jaccards[p]) for p in range(pairs)]
    return [t for t, _ in texts], planted


# ---------------------------------------------------------------------------------------------------------
# scoring


def band(j: float) -> str:
    if j >= 1.0:
        return "1.0"
    lo = int(j * 20) / 20
    return f"{lo:.2f}-{lo + 0.05:.2f}"


def score(pairs: list[tuple[int, int, float]], removals: list[tuple[int, int | None]]) -> dict[str, Any]:
    """``removals``: (removed doc, the doc it duplicates or None when unknown)."""
    twin: dict[int, tuple[int, int]] = {}
    for p, (a, b, _) in enumerate(pairs):
        twin[a], twin[b] = (b, p), (a, p)
    flagged: set[int] = set()
    unexplained: set[int] = set()
    for doc, partner in removals:
        t = twin.get(doc)
        if t is not None and (partner is None or partner == t[0]):
            flagged.add(t[1])
        else:
            unexplained.add(doc)
    true_pairs = {p for p, (_, _, j) in enumerate(pairs) if j >= THRESHOLD}
    tp = len(flagged & true_pairs)
    fp = len(flagged - true_pairs) + len(unexplained)
    bands: dict[str, dict[str, int]] = {}
    for p, (_, _, j) in sorted(enumerate(pairs), key=lambda x: x[1][2]):
        row = bands.setdefault(band(j), {"pairs": 0, "flagged": 0})
        row["pairs"] += 1
        row["flagged"] += p in flagged
    return {
        "precision": round(tp / (tp + fp), 4) if tp + fp else None,
        "recall": round(tp / len(true_pairs), 4) if true_pairs else None,
        "true_positives": tp,
        "false_positive_pairs": len(flagged - true_pairs),
        "unexplained_removals": len(unexplained),
        "removed": len(removals),
        "by_jaccard": bands,
    }


# ---------------------------------------------------------------------------------------------------------
# the two sides


def run_datatrove(texts: list[str], work: Path, workers: int) -> tuple[float, list[tuple[int, None]], dict]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    inputs = work / "input"
    inputs.mkdir(parents=True)
    per_file = (len(texts) + workers - 1) // workers
    for f in range(workers):  # one file per task: JsonlReader shards by file
        with open(inputs / f"part-{f:02d}.jsonl", "w", encoding="utf-8") as out:
            for i in range(f * per_file, min(len(texts), (f + 1) * per_file)):
                out.write(json.dumps({"id": str(i), "text": texts[i]}) + "\n")
    logs = work / "logs"
    steps: dict[str, float] = {}
    start = time.perf_counter()
    config = MinhashConfig()
    pipelines = {
        "signatures": lambda: LocalPipelineExecutor(
            [JsonlReader(str(inputs)), MinhashDedupSignature(output_folder=str(work / "signatures"),
                                                             config=config)],
            tasks=workers, workers=workers, logging_dir=str(logs / "signatures")),
        "buckets": lambda: LocalPipelineExecutor(
            [MinhashDedupBuckets(input_folder=str(work / "signatures"), output_folder=str(work / "buckets"),
                                 config=config)],
            tasks=config.num_buckets, workers=workers, logging_dir=str(logs / "buckets")),
        "cluster": lambda: LocalPipelineExecutor(
            [MinhashDedupCluster(input_folder=str(work / "buckets"), output_folder=str(work / "remove_ids"),
                                 config=config)],
            tasks=1, logging_dir=str(logs / "cluster")),
        "filter": lambda: LocalPipelineExecutor(
            [JsonlReader(str(inputs)),
             MinhashDedupFilter(input_folder=str(work / "remove_ids"),
                                exclusion_writer=JsonlWriter(str(work / "removed"), compression=None)),
             JsonlWriter(str(work / "deduped"))],
            tasks=workers, workers=workers, logging_dir=str(logs / "filter")),
    }
    for name, make in pipelines.items():
        t0 = time.perf_counter()
        make().run()
        steps[name] = round(time.perf_counter() - t0, 3)
        print(f"datatrove: {name} {steps[name]:.1f} s", file=sys.stderr)
    seconds = time.perf_counter() - start
    removed = []
    for path in sorted((work / "removed").glob("*.jsonl")):
        with open(path, encoding="utf-8") as f:
            removed += [(int(json.loads(line)["id"]), None) for line in f if line.strip()]
    return seconds, removed, {"step_seconds": steps, "config": str(config)}


def whitespace_tokenizer(path: Path) -> str:
    """The cheapest tokenizer spec the runner takes: a word-level ``tokenizer.json`` (ingest counts
    tokens of the reasoning and answer fields only, which these rows do not have)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(path))
    return str(path)


def run_ours(texts: list[str], work: Path, workers: int) -> tuple[float, list[tuple[int, int | None]], dict]:
    import pyarrow.parquet as pq

    from pipelines.recipe import parse_recipe
    from pipelines.runner import Options, run
    from schemas.ids import problem_id

    work.mkdir(parents=True)
    source = work / "traces.jsonl"
    with open(source, "w", encoding="utf-8") as out:
        for i, text in enumerate(texts):
            out.write(json.dumps({"question": f"doc {i}", "completion": text}) + "\n")
    recipe = parse_recipe(RECIPE.format(tokenizer=json.dumps(whitespace_tokenizer(work / "tokenizer.json")),
                                        workers=workers, dataset=DATASET, path=json.dumps(str(source))),
                          "bench/dedup.py")
    run_dir = work / "run"
    start = time.perf_counter()
    reports = run(recipe, str(run_dir), Options(progress=False))
    wall = time.perf_counter() - start
    manifests = {r.stage: r.manifest or {} for r in reports}
    by_problem = {problem_id(f"doc {i}", DATASET): i for i in range(len(texts))}
    ids: dict[str, int] = dict(by_problem)
    for part in sorted((run_dir / "traces").glob("part-*.parquet")):
        table = pq.read_table(part, columns=["trace_id", "problem_id"])
        for tid, pid in zip(table["trace_id"].to_pylist(), table["problem_id"].to_pylist(), strict=True):
            ids[tid] = by_problem[pid]
    removed = []
    reasons: Counter[str] = Counter()
    for part in sorted((run_dir / "dedup" / "rejected").glob("part-*.parquet")):
        table = pq.read_table(part, columns=["trace_id", "related_id", "reason"])
        for tid, related, reason in zip(*(table[c].to_pylist() for c in ("trace_id", "related_id", "reason")),
                                        strict=True):
            reasons[reason] += 1
            removed.append((ids[tid], ids.get(related) if related else None))
    dedup = manifests.get("dedup", {})
    return dedup["seconds"], removed, {
        "stage_seconds": round(wall, 3),
        "ingest_seconds": manifests.get("traces", {}).get("seconds"),
        "rejected_by_reason": dict(reasons),
        "stage_stats": (dedup.get("stats") or {}).get("dedup"),
    }


# ---------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=20_000, help="traces in all (pairs count two each)")
    parser.add_argument("--pairs", type=int, default=5_000, help="planted pairs (the rest are singletons)")
    parser.add_argument("--chars", type=int, default=2_000, help="about this many characters per trace")
    parser.add_argument("--vocabulary", type=int, default=6_000, help="distinct pseudo-words")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--workers", type=int, default=2,
                        help="processes on both sides (the recipe's workers; datatrove's tasks and workers)")
    parser.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated: {', '.join(SIDES)}")
    parser.add_argument("--work-dir", help="keep inputs, run folder and datatrove's outputs here "
                                           "(default: a temporary folder, removed after)")
    args = parser.parse_args()
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if unknown := set(sides) - set(SIDES):
        raise SystemExit(f"unknown --sides {sorted(unknown)}; known: {', '.join(SIDES)}")

    t0 = time.perf_counter()
    texts, pairs = make_data(args.docs, args.pairs, args.seed, args.chars, args.vocabulary)
    print(f"data: {len(texts)} traces, {len(pairs)} pairs in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr)
    true_pairs = sum(j >= THRESHOLD for _, _, j in pairs)
    result: dict[str, Any] = {
        "docs": len(texts), "pairs": len(pairs), "singletons": len(texts) - 2 * len(pairs),
        "true_duplicate_pairs": true_pairs, "threshold": THRESHOLD, "workers": args.workers,
        "mean_chars": round(sum(map(len, texts)) / len(texts)),
        "cpus": os.cpu_count(), "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    runners = {"ours": run_ours, "datatrove_default": run_datatrove}
    with contextlib.ExitStack() as stack:
        work = Path(args.work_dir) if args.work_dir else Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-dedup-")))
        for side in sides:
            print(f"{side}: running on {len(texts)} traces", file=sys.stderr)
            with contextlib.redirect_stdout(sys.stderr):  # stdout is the JSON only
                seconds, removals, extra = runners[side](texts, work / side, args.workers)
            result[side] = {"docs_per_s": round(len(texts) / seconds, 1), "seconds": round(seconds, 3),
                            **score(pairs, removals), **extra}
            print(f"{side}: {seconds:.1f} s, precision {result[side]['precision']}, "
                  f"recall {result[side]['recall']}", file=sys.stderr)
    # other work on the machine slows either side; a ratio taken under load says so here
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    if "ours" in result and "datatrove_default" in result:
        ours, theirs = result["ours"], result["datatrove_default"]
        result["throughput_ratio"] = round(ours["docs_per_s"] / theirs["docs_per_s"], 2)
        result["targets"] = {
            "throughput_ratio_ge_10": result["throughput_ratio"] >= 10,
            "recall_ge_0.95": (ours["recall"] or 0) >= 0.95,
            "precision_ge_0.99": (ours["precision"] or 0) >= 0.99,
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
