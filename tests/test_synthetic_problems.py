"""The built-in problem generator: determinism, shape, and answers re-derived independently.

The checkers here never call the module's helpers: each one parses the numbers back out of the
question text and recomputes the answer its own way (eval over Fractions, brute force, pow), so a
bug in a builder shows up as a disagreement rather than being repeated by the test.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from collections import Counter
from fractions import Fraction
from pathlib import Path

import pytest

from stages.sources.synthetic_problems import FAMILIES, LEVELS, generate

KEYS = {"index", "family", "level", "question", "answer", "answer_type", "solution"}
PER_FAMILY = 300


def parse_answer(text: str) -> Fraction:
    """Parse the canonical answer forms: '-7', '\\frac{3}{4}', '-\\frac{3}{4}'."""
    if m := re.fullmatch(r"-?\d+", text):
        return Fraction(int(text))
    m = re.fullmatch(r"(-?)\\frac\{(\d+)\}\{(\d+)\}", text)
    assert m, f"not a canonical answer: {text!r}"
    value = Fraction(int(m[2]), int(m[3]))
    return -value if m[1] else value


def to_python(latex: str) -> str:
    """LaTeX arithmetic -> a Python expression over Fractions (implicit products made explicit)."""
    s = re.sub(r"\\frac\{(\d+)\}\{(\d+)\}", r"(\1/\2)", latex)
    s = s.replace("\\times", "*").replace("\\div", "/")
    s = re.sub(r"\d+", lambda m: f"F({m.group()})", s)
    return re.sub(r"\)\s*(?=[x(])", ")*", s)


def evaluate(latex: str, x: Fraction | None = None) -> Fraction:
    return eval(to_python(latex), {"F": Fraction, "x": x, "__builtins__": {}})


def brute_gcd(nums: list[int]) -> int:
    return max(d for d in range(1, min(nums) + 1) if all(v % d == 0 for v in nums))


def check_arithmetic(q: str) -> Fraction:
    m = re.fullmatch(r"Compute ([\d\s()+\-\\timesdiv]+)\.", q)
    assert m, q
    return evaluate(m[1])


def check_fractions(q: str) -> Fraction:
    m = re.fullmatch(r"Compute (.+), giving the result in lowest terms\.", q)
    assert m, q
    return evaluate(m[1])


def check_linear(q: str, answer: Fraction, level: str) -> Fraction:
    m = re.fullmatch(r"Solve for x: (.+) = (.+)\.", q)
    assert m, q

    def f(v: Fraction) -> Fraction:
        return evaluate(m[1], v) - evaluate(m[2], v)

    assert f(Fraction(0)) != f(Fraction(1)), f"degenerate equation: {q}"  # nonzero slope: unique root
    if level != "hard":  # integer roots in a small range: find them by brute force
        roots = [v for v in range(-60, 61) if f(Fraction(v)) == 0]
        assert len(roots) == 1, q
        return Fraction(roots[0])
    assert f(answer) == 0, q
    return answer


def check_modular(q: str) -> Fraction:
    m = re.fullmatch(r"What is the remainder when (.+) is divided by (\d+)\?", q)
    assert m, q
    modulus = int(m[2])
    assert modulus >= 2
    if power := re.fullmatch(r"(\d+)\^\{(\d+)\}", m[1]):
        return Fraction(pow(int(power[1]), int(power[2]), modulus))
    value = evaluate(m[1])
    assert value.denominator == 1
    return Fraction(int(value) % modulus)


def check_gcd_lcm(q: str) -> Fraction:
    m = re.fullmatch(r"What is the (greatest common divisor|least common multiple) of ([\d, and]+)\?", q)
    assert m, q
    nums = [int(v) for v in re.findall(r"\d+", m[2])]
    assert len(nums) >= 2
    if m[1] == "greatest common divisor":
        return Fraction(brute_gcd(nums))
    lcm = nums[0]
    for v in nums[1:]:
        lcm = lcm * v // brute_gcd([lcm, v])
    return Fraction(lcm)


def ints(text: str) -> list[int]:
    return [int(v) for v in re.findall(r"-?\d+", text)]


def check_sequences(q: str) -> Fraction:
    if m := re.fullmatch(r"The arithmetic sequence (.+), \.\.\. keeps the same difference\. "
                         r"What is its (\d+)(?:st|nd|rd|th) term\?", q):
        terms, k = ints(m[1]), int(m[2])
        step = terms[1] - terms[0]
        assert all(b - a == step for a, b in itertools.pairwise(terms)), q
        value = terms[0]
        for _ in range(k - 1):
            value += step
        return Fraction(value)
    if m := re.fullmatch(r"In an arithmetic sequence, a_\{(\d+)\} = (-?\d+) and a_\{(\d+)\} = (-?\d+)\. "
                         r"What is a_\{(\d+)\}\?", q):
        p, u, r, v, k = map(int, m.groups())
        d = Fraction(v - u, r - p)
        return u + (k - p) * d
    if m := re.fullmatch(r"What is the sum of the first (\d+) terms of the arithmetic sequence "
                         r"(.+), \.\.\.\?", q):
        k, terms = int(m[1]), ints(m[2])
        step = terms[1] - terms[0]
        return Fraction(sum(terms[0] + j * step for j in range(k)))
    if m := re.fullmatch(r"The geometric sequence (.+), \.\.\. has a constant ratio\. "
                         r"What is its (\d+)(?:st|nd|rd|th) term\?", q):
        terms, k = ints(m[1]), int(m[2])
        ratio = Fraction(terms[1], terms[0])
        assert Fraction(terms[2], terms[1]) == ratio, q
        value = Fraction(terms[0])
        for _ in range(k - 1):
            value *= ratio
        return value
    raise AssertionError(f"unrecognised sequences question: {q}")


def check_percent(q: str) -> Fraction:
    pct = Fraction(1, 100)
    sign = {"increased": 1, "decreased": -1}
    if m := re.fullmatch(r"What is (\d+)\\% of (\d+)\?", q):
        return int(m[1]) * pct * int(m[2])
    if m := re.fullmatch(r"(\d+) is (\d+)\\% of what number\?", q):
        return int(m[1]) / (int(m[2]) * pct)
    if m := re.fullmatch(r"A price of (\d+) is (\w+) by (\d+)\\%\. What is the new price\?", q):
        return int(m[1]) * (1 + sign[m[2]] * int(m[3]) * pct)
    if m := re.fullmatch(r"What is (\d+)\\% of (\d+)\\% of (\d+)\?", q):
        return int(m[1]) * pct * (int(m[2]) * pct * int(m[3]))
    if m := re.fullmatch(r"A price of (\d+) is (\w+) by (\d+)\\% and then (\w+) by (\d+)\\%\. "
                         r"What is the final price\?", q):
        first = int(m[1]) * (1 + sign[m[2]] * int(m[3]) * pct)
        return first * (1 + sign[m[4]] * int(m[5]) * pct)
    raise AssertionError(f"unrecognised percent question: {q}")


def recheck(problem: dict[str, object]) -> Fraction:
    q, family = str(problem["question"]), problem["family"]
    if family == "linear":
        return check_linear(q, parse_answer(str(problem["answer"])), str(problem["level"]))
    checker = {
        "arithmetic": check_arithmetic, "fractions": check_fractions, "modular": check_modular,
        "gcd_lcm": check_gcd_lcm, "sequences": check_sequences, "percent": check_percent,
    }[family]
    return checker(q)


# --- determinism ---


def test_same_arguments_give_identical_problems() -> None:
    assert list(generate(40, seed=3)) == list(generate(40, seed=3))


def test_problem_i_does_not_depend_on_n() -> None:
    assert list(generate(10, seed=5)) == list(generate(50, seed=5))[:10]


def test_different_seed_gives_different_questions() -> None:
    a = [p["question"] for p in generate(50, seed=0)]
    b = [p["question"] for p in generate(50, seed=1)]
    assert sum(x != y for x, y in zip(a, b, strict=True)) >= 45


def test_independent_of_hash_seed() -> None:
    code = "from stages.sources.synthetic_problems import generate as g\n"
    code += "print([p['question'] for p in g(30)])"
    env_base = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    outs = {
        subprocess.run([sys.executable, "-c", code], env={**env_base, "PYTHONHASHSEED": h},
                       capture_output=True, text=True, check=True).stdout
        for h in ("0", "123")
    }
    assert len(outs) == 1
    assert next(iter(outs)).strip() == str([p["question"] for p in generate(30)])


# --- shape ---


def test_keys_types_and_answer_format() -> None:
    problems = list(generate(400, seed=11))
    assert [p["index"] for p in problems] == list(range(400))
    for p in problems:
        assert set(p) == KEYS
        assert type(p["index"]) is int
        assert p["family"] in FAMILIES and p["level"] in LEVELS
        assert p["answer_type"] == "math"
        for key in ("question", "answer", "solution"):
            assert isinstance(p[key], str) and p[key], (key, p)
        answer = str(p["answer"])
        assert "$" not in answer and "boxed" not in answer
        assert "boxed" not in str(p["solution"])
        value = parse_answer(answer)  # also asserts the canonical form
        canonical = str(value.numerator) if value.denominator == 1 else (
            f"{'-' if value < 0 else ''}\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}")
        assert answer == canonical, p


def test_solution_has_2_to_8_lines_ending_with_the_answer() -> None:
    for p in generate(500, seed=2):
        lines = str(p["solution"]).split("\n")
        assert 2 <= len(lines) <= 8, p
        assert lines[-1] == f"So the answer is {p['answer']}.", p
        assert all(line.strip() for line in lines), p


def test_zero_problems() -> None:
    assert list(generate(0)) == []


# --- correctness, re-derived independently for every family ---


@pytest.mark.parametrize("family", FAMILIES)
def test_answers_recomputed_from_the_question(family: str) -> None:
    problems = list(generate(PER_FAMILY, seed=7, families=[family]))
    assert {p["level"] for p in problems} == set(LEVELS)
    for p in problems:
        assert recheck(p) == parse_answer(str(p["answer"])), p


def test_expression_solution_steps_hold() -> None:
    """Each 'A op B = ... = C' chain must hold, and each rewritten expression must keep the value."""
    checked = 0
    for p in generate(300, seed=4, families=["arithmetic", "fractions"]):
        answer = parse_answer(str(p["answer"]))
        for line in str(p["solution"]).split("\n")[:-1]:
            chain, _, rewritten = line.rstrip(".").partition(", so the expression becomes ")
            values = {evaluate(part) for part in chain.split(" = ")}
            assert len(values) == 1, line
            if rewritten:
                assert evaluate(rewritten) == answer, line
            checked += 1
    assert checked > 300


def test_difficulty_levels_are_structurally_different() -> None:
    problems = list(generate(1500, seed=9))

    def pick(family: str, level: str) -> list[str]:
        return [str(p["question"]) for p in problems if (p["family"], p["level"]) == (family, level)]

    for q in pick("arithmetic", "hard"):  # 3-digit numbers inside nested parentheses
        assert re.search(r"\d{3}", q) and re.search(r"\([^)]*\(", q), q
    assert all(len(re.findall(r"\d+", q)) <= 3 for q in pick("arithmetic", "easy"))
    assert all(int(re.search(r"\^\{(\d+)\}", q)[1]) >= 20 for q in pick("modular", "hard"))
    assert all(len(re.findall(r"\d+", q)) == 3 for q in pick("gcd_lcm", "hard"))
    assert all(len(re.findall(r"\d+", q)) == 2 for q in pick("gcd_lcm", "easy"))
    hard_linear = pick("linear", "hard")
    assert hard_linear and all("\\frac" in q or "(" in q for q in hard_linear)


# --- variety and selection ---


def test_questions_are_mostly_distinct() -> None:
    questions = [p["question"] for p in generate(2000, seed=0)]
    assert len(set(questions)) >= 0.95 * len(questions)


def test_every_family_and_level_appears() -> None:
    problems = list(generate(500, seed=0))
    assert set(Counter(p["family"] for p in problems)) == set(FAMILIES)
    assert set(Counter(p["level"] for p in problems)) == set(LEVELS)


def test_restricting_families_and_levels() -> None:
    modular = list(generate(60, seed=1, families=["modular"]))
    assert {p["family"] for p in modular} == {"modular"}
    hard = list(generate(60, seed=1, families=["gcd_lcm", "linear"], levels=["hard"]))
    assert {p["level"] for p in hard} == {"hard"}
    assert {p["family"] for p in hard} == {"gcd_lcm", "linear"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 3, "families": ["geometry"]}, "geometry"),
        ({"n": 3, "levels": ["extreme"]}, "extreme"),
        ({"n": -1}, "-1"),
        ({"n": 3, "families": []}, "family"),
        ({"n": 3, "levels": []}, "level"),
        ({"n": 3, "families": "modular"}, "modular"),
    ],
)
def test_bad_arguments_raise_at_call_time(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        generate(**kwargs)  # type: ignore[arg-type]
