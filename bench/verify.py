"""Benchmark: checks/s of the ``math`` checker against calling math-verify directly.

Both sides run in 2 spawned processes on the same seeded answer pairs and do the same work per
pair (``prepare_answer`` on both sides, then ``parse`` + ``verify``), timed from pool start to the
last result, so process start-up and imports count on both sides:

- raw: a ``multiprocessing`` spawn Pool of 2 maps the two halves of the pairs to a function that
  calls ``math_verify.parse`` and ``verify`` on every pair, in-process;
- stage: 2 processes each run a fresh ``MathChecker`` (cold memo, its own child process) over the
  same halves, in ``check`` calls of ``--batch`` items with one problem's traces adjacent, as the
  verify stage sends them. (A ProcessPoolExecutor, not a Pool: Pool workers are daemonic and may
  not start the checker's child.)

Two workloads: ``unique`` (one prediction per problem: the memo cannot help, the ratio is the cost
of the checker's IPC and bookkeeping; target >= 0.9) and ``repeated`` (16 samples per problem with
2-4 distinct answers, as sampled traces are: the memo should pay; target >= 3).

    python bench/verify.py                  # JSON on stdout (about 3 minutes on 2 cores)
    python bench/verify.py --problems 500 --repeated-problems 100 --repeats 1

Runs alternate (raw, stage, raw, stage...) and the best of each side is kept, because these
machines are shared. The stage side is ``stages.verify.verify`` itself on Arrow batches of traces
(with the format checker, which every verify call runs), as the local runner calls it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import time
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction
from typing import Any

PROCESSES = 2


# ---------------------------------------------------------------------------------------------------------
# data: (gold, [equivalent forms], [wrong forms]) per problem, mixed answer types


def _integer(rng: random.Random) -> tuple[str, list[str], list[str]]:
    n = rng.choice([rng.randint(-500, 500), rng.randint(1000, 999_999)])
    same = [f"{n}.0", f"\\boxed{{{n}}}", f"x = {n}", f"{n}\\text{{ units}}"]
    if abs(n) >= 1000:
        same.append(f"{n:,}")
    return str(n), same, [str(n + 1), str(-n - 1), str(n * 10 + 1)]


def _fraction(rng: random.Random) -> tuple[str, list[str], list[str]]:
    q = rng.choice([2, 3, 4, 5, 6, 7, 8, 9, 12])
    p = rng.choice([k for k in range(1, 3 * q) if Fraction(k, q).denominator == q])
    same = [f"{p}/{q}", f"\\dfrac{{{p}}}{{{q}}}", f"\\frac{{{2 * p}}}{{{2 * q}}}"]
    if q in (2, 4, 5, 8):
        same.append(str(float(Fraction(p, q))))
    wrong = [f"\\frac{{{q}}}{{{p + q}}}", f"\\frac{{{p + 1}}}{{{q}}}", f"{round(p / q, 2)}1"]
    return f"\\frac{{{p}}}{{{q}}}", same, wrong


def _decimal(rng: random.Random) -> tuple[str, list[str], list[str]]:
    value = Fraction(rng.randint(1, 999), rng.choice([4, 8, 20, 25, 100]))
    text = f"{float(value):g}"
    return text, [f"\\frac{{{value.numerator}}}{{{value.denominator}}}", f"{text}0", f"${text}$"], \
        [f"{float(value) + 0.1:g}", f"{float(value) * 10:g}"]


def _expression(rng: random.Random) -> tuple[str, list[str], list[str]]:
    r, s = rng.randint(1, 9), rng.randint(-9, 9)
    b, c = r + s, r * s
    expanded = f"x^2{b:+d}x{c:+d}" if b else f"x^2{c:+d}"
    same = [f"(x+{r})(x{s:+d})", f"(x{s:+d})(x+{r})", f"{c}{b:+d}x+x^2" if b else f"{c}+x^2"]
    return expanded, same, [f"(x-{r})(x{s:+d})", f"x^2{b + 1:+d}x{c:+d}"]


def _pair(rng: random.Random) -> tuple[str, list[str], list[str]]:
    a, b = rng.randint(-9, 9), rng.randint(10, 20)
    return f"({a},{b})", [f"\\left({a}, {b}\\right)", f"({a}, {b})"], [f"({b},{a})", f"({a},{-b})"]


def _interval(rng: random.Random) -> tuple[str, list[str], list[str]]:
    a, b = rng.randint(-9, 0), rng.randint(1, 9)
    return f"[{a},{b})", [f"[{a}, {b})", f"\\left[{a},{b}\\right)"], [f"[{a},{b}]", f"({a},{b})"]


def _radical(rng: random.Random) -> tuple[str, list[str], list[str]]:
    k, m = rng.randint(2, 6), rng.choice([2, 3, 5, 6, 7])
    return f"{k}\\sqrt{{{m}}}", [f"\\sqrt{{{k * k * m}}}", f"{k} \\sqrt{m}"], [f"{m}\\sqrt{{{k}}}",
                                                                             f"\\sqrt{{{k * m}}}"]


def _set(rng: random.Random) -> tuple[str, list[str], list[str]]:
    values = rng.sample(range(-9, 20), 3)
    shuffled = values[:]
    rng.shuffle(shuffled)
    text = ",".join(map(str, values))
    return f"\\{{{text}\\}}", [f"\\{{{', '.join(map(str, shuffled))}\\}}"], \
        [f"\\{{{','.join(map(str, values[:2]))}\\}}"]


# Roughly the mix of a MATH-style set: mostly integers, then fractions and radicals; tuples, intervals
# and sets are few (and the slowest for math-verify's LaTeX parser).
KINDS = {_integer: 45, _fraction: 15, _decimal: 10, _radical: 10, _expression: 8, _pair: 4, _interval: 4,
         _set: 4}


def make_problems(n: int, seed: int) -> list[tuple[str, list[str], list[str]]]:
    """``n`` problems with distinct gold answers, so no two problems share a verdict by accident."""
    rng = random.Random(seed)
    kinds, weights = list(KINDS), list(KINDS.values())
    problems, golds = [], set()
    while len(problems) < n:
        problem = rng.choices(kinds, weights)[0](rng)
        if problem[0] not in golds:
            golds.add(problem[0])
            problems.append(problem)
    return problems


def unique_items(problems: list[tuple[str, list[str], list[str]]], seed: int) -> list[tuple[str, str]]:
    """One prediction per problem: 60% an equivalent form, 40% a wrong one."""
    rng = random.Random(seed + 1)
    return [(gold, rng.choice(same if rng.random() < 0.6 else wrong)) for gold, same, wrong in problems]


def repeated_items(problems: list[tuple[str, list[str], list[str]]], seed: int,
                   samples: int = 16) -> list[tuple[str, str]]:
    """``samples`` traces per problem drawing from 2-4 distinct answer strings, a majority usually
    right, as sampled traces of one problem are; one problem's traces are adjacent."""
    rng = random.Random(seed + 2)
    items = []
    for gold, same, wrong in problems:
        k = rng.randint(2, 4)
        pool = rng.sample(same, min(len(same), max(1, k - 1)))
        pool += rng.sample(wrong, min(len(wrong), k - len(pool)))
        weights = [3 if answer in same else 1 for answer in pool]
        items += [(gold, answer) for answer in rng.choices(pool, weights, k=samples)]
    return items


# ---------------------------------------------------------------------------------------------------------
# the two sides (module level: spawned workers import them)


def _raw_chunk(pairs: list[tuple[str, str]]) -> list[bool]:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    from stages.checkers.math_equiv import prepare_answer

    extraction = [LatexExtractionConfig(), ExprExtractionConfig()]
    out = []
    for gold, pred in pairs:
        g, p = prepare_answer(gold), prepare_answer(pred)
        out.append(bool(g and p and verify(parse(g, extraction), parse(p, extraction))))
    return out


def _stage_part(pairs: list[tuple[str, str]], batch: int,
                fast_parse: bool) -> tuple[list[bool], dict[str, int]]:
    """The verify stage's own batch function on Arrow batches of traces, as the runner calls it."""
    from types import SimpleNamespace

    import pyarrow as pa

    from schemas.tables import PROBLEMS, TRACES
    from stages.checkers import close_all, get_checker
    from stages.checkers.math_equiv import MathConfig
    from stages.verify import VerifyConfig, verify

    config = VerifyConfig(math=MathConfig(fast_parse=fast_parse))
    ctx = SimpleNamespace(stage="verify", request_cache=None, seed=0)
    golds = {g: f"p{i}" for i, g in enumerate(dict.fromkeys(g for g, _ in pairs))}
    try:
        out: list[bool] = []
        for start in range(0, len(pairs), batch):
            chunk = pairs[start:start + batch]
            traces = pa.Table.from_pylist(
                [{"trace_id": f"t{start + k}", "problem_id": golds[g], "final_answer": p, "flags": [],
                  "reasoning": "r", "answer": p, "finish_reason": "stop"} for k, (g, p) in enumerate(chunk)],
                schema=TRACES)
            problems = pa.Table.from_pylist(
                [{"problem_id": golds[g], "question": "q", "answer": g, "answer_type": "math"}
                 for g in dict.fromkeys(g for g, _ in chunk)], schema=PROBLEMS)
            rows = verify(traces, config, ctx, problems).rows
            out += [v == "pass" for v in rows["verdict"].to_pylist()]
        return out, dict(get_checker("math", config.math).stats)
    finally:
        close_all()


def _halves(pairs: list[tuple[str, str]], per_problem: int) -> list[list[tuple[str, str]]]:
    """The same two halves for both sides (a problem's traces in one), so neither side wins or loses
    by how slow answers happen to fall between the processes."""
    half = (len(pairs) + 1) // 2
    if half % per_problem:
        half += per_problem - half % per_problem
    return [pairs[:half], pairs[half:]]


def run_raw(pairs: list[tuple[str, str]], per_problem: int) -> tuple[float, list[bool]]:
    chunks = _halves(pairs, per_problem)
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(PROCESSES) as pool:
        results = pool.map(_raw_chunk, chunks, chunksize=1)
    return time.perf_counter() - start, [v for part in results for v in part]


def run_stage(pairs: list[tuple[str, str]], per_problem: int, batch: int,
              fast_parse: bool) -> tuple[float, list[bool], dict[str, int]]:
    parts = _halves(pairs, per_problem)
    start = time.perf_counter()
    with ProcessPoolExecutor(PROCESSES, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(_stage_part, parts, [batch] * len(parts), [fast_parse] * len(parts)))
    seconds = time.perf_counter() - start
    stats: dict[str, int] = {}
    for _, part_stats in results:
        for key, value in part_stats.items():
            stats[key] = stats.get(key, 0) + value
    return seconds, [v for part, _ in results for v in part], stats


def bench(pairs: list[tuple[str, str]], per_problem: int, batch: int, repeats: int,
          fast_parse: bool) -> dict[str, Any]:
    raw_s = stage_s = float("inf")
    raw = stage = []
    stats: dict[str, int] = {}
    for _ in range(repeats):
        seconds, raw = run_raw(pairs, per_problem)
        raw_s = min(raw_s, seconds)
        seconds, stage, stats = run_stage(pairs, per_problem, batch, fast_parse)
        stage_s = min(stage_s, seconds)
    agree = sum(a == b for a, b in zip(raw, stage, strict=True)) / len(pairs)
    return {
        "pairs": len(pairs),
        "unique_pairs": len(set(pairs)),
        "processes": PROCESSES,
        "fast_parse": fast_parse,
        "raw_checks_per_s": round(len(pairs) / raw_s, 1),
        "stage_checks_per_s": round(len(pairs) / stage_s, 1),
        "ratio": round(raw_s / stage_s, 3),
        "raw_s": round(raw_s, 2),
        "stage_s": round(stage_s, 2),
        "verdict_agreement": round(agree, 4),
        "pass_rate": round(sum(stage) / len(stage), 3),
        "child_pairs_verified": stats.get("pairs_verified"),
        "memo_hits": stats.get("memo_hits"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=1500, help="problems of the unique workload")
    parser.add_argument("--repeated-problems", type=int, default=None,
                        help="problems of the repeated workload (the first N; default: all). Each side "
                             "starts its processes once, as a run does, so small N overweights start-up")
    parser.add_argument("--samples", type=int, default=16, help="traces per problem (repeated workload)")
    parser.add_argument("--batch", type=int, default=1000, help="items per check() call")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each side; best kept")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workloads", default="unique,repeated")
    parser.add_argument("--no-fast-parse", action="store_true",
                        help="the checker parses as plain math-verify does: what IPC and the memo alone give")
    args = parser.parse_args()
    repeated_problems = args.repeated_problems or args.problems
    problems = make_problems(max(args.problems, repeated_problems), args.seed)
    workloads = {"unique": (lambda: unique_items(problems, args.seed), 1),
                 "repeated": (lambda: repeated_items(problems[:repeated_problems], args.seed, args.samples),
                              args.samples)}
    result = {}
    for name in args.workloads.split(","):
        make, per_problem = workloads[name]
        result[name] = bench(make(), per_problem, args.batch, args.repeats, not args.no_fast_parse)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
