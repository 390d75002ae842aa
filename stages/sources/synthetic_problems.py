"""Built-in generator of verifiable math problems with worked reference solutions.

The laptop dry-run recipe and the tests need problems whose answers are known
exactly, without downloading a data set. Every answer is computed with exact
arithmetic (Fraction, three-argument pow, math.gcd/lcm) and the worked solution
is printed from the same numbers, so question, solution and answer cannot drift
apart. Answers are LaTeX strings a symbolic checker (math-verify) parses.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from fractions import Fraction

FAMILIES: tuple[str, ...] = (
    "arithmetic", "fractions", "linear", "modular", "sequences", "percent", "gcd_lcm",
)
LEVELS: tuple[str, ...] = ("easy", "medium", "hard")

Num = int | Fraction
Expr = int | Fraction | tuple[str, "Expr", "Expr"]
# A builder returns (question, exact answer, solution steps without the closing sentence).
Built = tuple[str, Fraction, list[str]]

_OPS = {"+": "+", "-": "-", "*": "\\times", "/": "\\div"}
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}


def _tex(value: Num) -> str:
    """Canonical LaTeX: integers bare, fractions reduced, the sign outside the \\frac."""
    v = Fraction(value)
    if v.denominator == 1:
        return str(v.numerator)
    return f"{'-' if v < 0 else ''}\\frac{{{abs(v.numerator)}}}{{{v.denominator}}}"


def _p(value: Num) -> str:
    """Parenthesise negatives so '3 - (-4)' never prints as '3 - -4'."""
    return f"({_tex(value)})" if value < 0 else _tex(value)


def _ordinal(k: int) -> str:
    return f"{k}{'th' if 10 <= k % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(k % 10, 'th')}"


def _nonzero(rng: random.Random, lo: int, hi: int) -> int:
    return rng.choice([v for v in range(lo, hi + 1) if v])


def _fraction(rng: random.Random, den_hi: int) -> Fraction:
    """A positive non-integer fraction (possibly improper) with denominator <= den_hi."""
    b = rng.randint(2, den_hi)
    return Fraction(rng.choice([a for a in range(1, 2 * b) if a % b]), b)


# --- expression trees: one structure drives the question, the steps and the answer ---


def _apply(op: str, x: Num, y: Num) -> Fraction:
    x, y = Fraction(x), Fraction(y)
    return {"+": x + y, "-": x - y, "*": x * y}[op] if op != "/" else x / y


def _render(e: Expr, top: bool = True) -> str:
    """Left-to-right reading plus precedence decides where brackets go; a right operand of equal
    precedence is bracketed too, so the printed grouping is exactly the order the steps follow."""
    if not isinstance(e, tuple):
        return _tex(e) if top else _p(e)
    op, left, right = e
    ls, rs = _render(left, False), _render(right, False)
    if isinstance(left, tuple) and _PREC[left[0]] < _PREC[op]:
        ls = f"({ls})"
    if isinstance(right, tuple) and _PREC[right[0]] <= _PREC[op]:
        rs = f"({rs})"
    return f"{ls} {_OPS[op]} {rs}"


def _reduce(e: tuple[str, Expr, Expr]) -> tuple[Expr, tuple[str, Fraction, Fraction, Fraction]]:
    """Evaluate the leftmost innermost operation; any such order respects the tree's meaning."""
    op, left, right = e
    if isinstance(left, tuple):
        new, step = _reduce(left)
        return (op, new, right), step
    if isinstance(right, tuple):
        new, step = _reduce(right)
        return (op, left, new), step
    value = _apply(op, left, right)
    return value, (op, Fraction(left), Fraction(right), value)


def _detail(op: str, x: Fraction, y: Fraction) -> str:
    """The intermediate form a reader needs to check a fraction step by hand."""
    if x <= 0 or y <= 0 or (x.denominator == 1 and y.denominator == 1):
        return ""
    if op in "+-" and x.denominator != y.denominator:
        lcd = math.lcm(x.denominator, y.denominator)
        xn, yn = x.numerator * (lcd // x.denominator), y.numerator * (lcd // y.denominator)
        return f" = \\frac{{{xn}}}{{{lcd}}} {op} \\frac{{{yn}}}{{{lcd}}}"
    if op == "*":
        return f" = \\frac{{{x.numerator * y.numerator}}}{{{x.denominator * y.denominator}}}"
    return f" = {_tex(x)} \\times {_tex(1 / y)}" if op == "/" else ""


def _evaluate(e: Expr) -> tuple[Fraction, list[str]]:
    lines = []
    while isinstance(e, tuple):
        e, (op, x, y, v) = _reduce(e)
        line = f"{_p(x)} {_OPS[op]} {_p(y)}{_detail(op, x, y)} = {_tex(v)}"
        lines.append(line + (f", so the expression becomes {_render(e)}." if isinstance(e, tuple) else "."))
    return Fraction(e), lines


def _rand_tree(rng: random.Random, ops: int, lo: int, hi: int) -> Expr:
    """Random +/-/x tree; products take a small factor so numbers stay human-sized."""
    if ops == 0:
        return rng.randint(lo, hi)
    op = rng.choice("+-*")
    if op == "*":
        sub, small = _rand_tree(rng, ops - 1, lo, hi), rng.randint(2, 12)
        return (op, sub, small) if rng.random() < 0.5 else (op, small, sub)
    k = rng.randint(0, ops - 1)
    return (op, _rand_tree(rng, k, lo, hi), _rand_tree(rng, ops - 1 - k, lo, hi))


# --- one builder per family ---


def _arithmetic(rng: random.Random, level: str) -> Built:
    if level == "easy":
        tree = _rand_tree(rng, rng.randint(1, 2), 2, 20)
    elif level == "medium":
        tree = _rand_tree(rng, 3, 10, 99)
    else:  # nested parentheses, 3-digit numbers and a final division
        three_digit = (rng.choice("+-"), rng.randint(100, 999), rng.randint(100, 999))
        inner: Expr = ("*", three_digit, rng.randint(2, 12))
        other = _rand_tree(rng, 1, 100, 999)
        pair = (inner, other) if rng.random() < 0.5 else (other, inner)
        tree = ("/", (rng.choice("+-"), *pair), rng.randint(2, 25))
    value, steps = _evaluate(tree)
    return f"Compute {_render(tree)}.", value, steps


def _fraction_tree(rng: random.Random, level: str) -> Expr:
    if level == "easy":
        return (rng.choice("+-"), _fraction(rng, 9), _fraction(rng, 9))
    if level == "medium":
        f1, f2, f3 = (_fraction(rng, 12) for _ in range(3))
        op1, op2 = rng.choice("+-*/"), rng.choice("+-*/")
        return (op2, (op1, f1, f2), f3) if rng.random() < 0.5 else (op2, f1, (op1, f2, f3))
    f = [_fraction(rng, 15) for _ in range(4)]
    return ("/", (rng.choice("+-"), f[0], f[1]), (rng.choice("+-"), f[2], f[3]))


def _fractions(rng: random.Random, level: str) -> Built:
    while True:  # a divisor like (\frac{1}{2} - \frac{1}{2}) can be zero: draw again
        tree = _fraction_tree(rng, level)
        try:
            value, steps = _evaluate(tree)
        except ZeroDivisionError:
            continue
        return f"Compute {_render(tree)}, giving the result in lowest terms.", value, steps


def _lin(a: Num, b: Num) -> str:
    """Render a*x + b the way a person writes it (x, -x, 3x - 4, \\frac{2}{3}x + 1)."""
    if a == 0:
        return _tex(b)
    text = "x" if a == 1 else "-x" if a == -1 else f"{_tex(a)}x"
    return text + (f" {'+' if b > 0 else '-'} {_tex(abs(b))}" if b else "")


def _solve_steps(a: Fraction, b: Fraction, c: Fraction, d: Fraction) -> tuple[Fraction, list[str]]:
    """Solve ax + b = cx + d (a != c) by the usual collect / isolate / divide moves."""
    lines, k = [], a - c
    if c:
        lines.append(f"Move the x terms to the left side: {_lin(k, b)} = {_tex(d)}.")
    if b:
        verb = f"Subtract {_tex(b)} from" if b > 0 else f"Add {_tex(-b)} to"
        lines.append(f"{verb} both sides: {_lin(k, 0)} = {_tex(d - b)}.")
    x = (d - b) / k
    if k != 1:
        lines.append(f"Divide both sides by {_tex(k)}: x = {_tex(x)}.")
    return x, lines


def _linear(rng: random.Random, level: str) -> Built:
    F, pre = Fraction, []
    if level == "easy":
        a, x, b = rng.randint(2, 9), rng.randint(-10, 12), _nonzero(rng, -20, 20)
        lhs, rhs, coeffs = _lin(a, b), _tex(a * x + b), (F(a), F(b), F(0), F(a * x + b))
    elif level == "medium":
        a, c = rng.sample([v for v in range(-9, 13) if v], 2)
        x, b = rng.randint(-15, 15), _nonzero(rng, -30, 30)
        d = (a - c) * x + b
        lhs, rhs, coeffs = _lin(a, b), _lin(c, d), (F(a), F(b), F(c), F(d))
    elif rng.random() < 0.5:  # fractional coefficients on both sides
        p, s = _fraction(rng, 9), _fraction(rng, 9)
        while s == p:  # equal slopes would leave no unique solution
            s = _fraction(rng, 9)
        r, u = _nonzero(rng, -20, 20), rng.randint(-20, 20)
        lhs, rhs, lcd = _lin(p, r), _lin(s, u), math.lcm(p.denominator, s.denominator)
        coeffs = (p * lcd, F(r * lcd), s * lcd, F(u * lcd))
        pre = [f"Multiply both sides by {lcd}: {_lin(*coeffs[:2])} = {_lin(*coeffs[2:])}."]
    else:  # parentheses on both sides: a(x + b) - c = d(x - e) + f
        a, d = rng.sample([v for v in range(-9, 10) if v not in (-1, 0, 1)], 2)
        b, e, c, f = (_nonzero(rng, -12, 12) for _ in range(4))
        lhs = f"{a}({_lin(1, b)}) {'-' if c > 0 else '+'} {abs(c)}"
        rhs = f"{d}({_lin(1, -e)}) {'+' if f > 0 else '-'} {abs(f)}"
        coeffs = (F(a), F(a * b - c), F(d), F(f - d * e))
        pre = [f"Expand and simplify both sides: {_lin(*coeffs[:2])} = {_lin(*coeffs[2:])}."]
    x, steps = _solve_steps(*coeffs)
    return f"Solve for x: {lhs} = {rhs}.", x, pre + steps


def _modular(rng: random.Random, level: str) -> Built:
    if level == "easy":
        a, m = rng.randint(20, 300), rng.randint(3, 15)
        expr, steps = str(a), []
    elif level == "medium" and rng.random() < 0.5:
        x, y, z, m = rng.randint(10, 99), rng.randint(10, 99), rng.randint(1, 99), rng.randint(3, 30)
        a, expr = x * y + z, f"{x} \\times {y} + {z}"
        steps = [f"{expr} = {x * y} + {z} = {a}."]
    elif level == "medium":
        x, k, m = rng.randint(2, 30), rng.randint(3, 6), rng.randint(5, 40)
        a, expr = x**k, f"{x}^{{{k}}}"
        steps = [f"{expr} = {a}."]
    else:  # a^b mod m by repeated squaring: b is too large to expand by hand
        base, b, m = rng.randint(2, 99), rng.randint(20, 300), rng.randint(7, 97)
        while base % m in (0, 1):
            base = rng.randint(2, 99)
        r, ans = base % m, pow(base, b, m)
        bits = [1 << j for j in reversed(range(b.bit_length())) if b >> j & 1]
        squares = ", ".join(f"{r}^{{{1 << j}}} \\equiv {pow(r, 1 << j, m)}" for j in range(b.bit_length()))
        dot = " \\cdot "
        powers, residues = dot.join(f"{r}^{{{p}}}" for p in bits), dot.join(str(pow(r, p, m)) for p in bits)
        reduced = f"Reduce the base: {base} \\equiv {r} \\pmod{{{m}}}."
        return f"What is the remainder when {base}^{{{b}}} is divided by {m}?", Fraction(ans), [
            reduced if base >= m else f"The base {base} is already below {m}.",
            f"Write the exponent in binary: {b} = {' + '.join(map(str, bits))}.",
            f"Square repeatedly modulo {m}: {squares}.",
            f"Multiply the needed powers: {powers} \\equiv {residues} \\equiv {ans} \\pmod{{{m}}}.",
        ]
    steps.append(f"{a} = {m} \\times {a // m} + {a % m}, and 0 \\le {a % m} < {m}.")
    return f"What is the remainder when {expr} is divided by {m}?", Fraction(a % m), steps


def _terms(first: int, step: int, count: int, geometric: bool = False) -> str:
    return ", ".join(str(first * step**j if geometric else first + j * step) for j in range(count))


def _nth(a1: int, d: int, k: int) -> str:
    return f"a_{{{k}}} = a_1 + ({k} - 1)d = {a1} + {k - 1} \\times {_p(d)} = {a1 + (k - 1) * d}."


def _sequences(rng: random.Random, level: str) -> Built:
    if level == "easy":
        a1, d, k = rng.randint(1, 30), rng.randint(2, 12), rng.randint(8, 30)
        question = f"The arithmetic sequence {_terms(a1, d, 4)}, ... keeps the same difference. " \
                   f"What is its {_ordinal(k)} term?"
        return question, Fraction(a1 + (k - 1) * d), [f"The common difference is {a1 + d} - {a1} = {d}.",
                                                        _nth(a1, d, k)]
    a1, d, k = rng.randint(-20, 40), _nonzero(rng, -12, 12), rng.randint(20, 80)
    if level == "medium":
        p = rng.randint(2, 5)
        q = rng.randint(p + 2, p + 8)
        u, v = a1 + (p - 1) * d, a1 + (q - 1) * d
        return (f"In an arithmetic sequence, a_{{{p}}} = {u} and a_{{{q}}} = {v}. What is a_{{{k}}}?",
                Fraction(a1 + (k - 1) * d), [
                    f"d = \\frac{{{v} - {_p(u)}}}{{{q} - {p}}} = \\frac{{{v - u}}}{{{q - p}}} = {d}.",
                    f"a_1 = a_{{{p}}} - ({p} - 1)d = {u} - {p - 1} \\times {_p(d)} = {a1}.", _nth(a1, d, k)])
    if rng.random() < 0.5:  # the sum of an arithmetic series
        k //= 2
        ak = a1 + (k - 1) * d
        return (f"What is the sum of the first {k} terms of the arithmetic sequence {_terms(a1, d, 3)}, ...?",
                Fraction(k * (a1 + ak), 2), [
                    f"The common difference is {a1 + d} - {_p(a1)} = {d}.", _nth(a1, d, k),
                    f"S = \\frac{{{k}(a_1 + a_{{{k}}})}}{{2}} = \\frac{{{k} \\times {_p(a1 + ak)}}}{{2}} "
                    f"= {k * (a1 + ak) // 2}."])
    g, r, k = _nonzero(rng, -9, 9), rng.choice([2, 3, 4, 5, -2, -3]), rng.randint(5, 10)
    ans = g * r ** (k - 1)
    return (f"The geometric sequence {_terms(g, r, 3, geometric=True)}, ... has a constant ratio. "
            f"What is its {_ordinal(k)} term?", Fraction(ans), [
                f"The common ratio is {g * r} \\div {_p(g)} = {r}.",
                f"a_{{{k}}} = a_1 r^{{{k - 1}}} = {g} \\times {_p(r)}^{{{k - 1}}} = {g} \\times "
                f"{_p(r ** (k - 1))} = {ans}."])


def _percent_of(pct: int, value: Num) -> str:
    result = Fraction(value) * Fraction(pct, 100)
    return f"{pct}\\% of {_tex(value)} = \\frac{{{pct}}}{{100}} \\times {_tex(value)} = {_tex(result)}."


def _percent(rng: random.Random, level: str) -> Built:
    """Bases are multiples of 20 (400 for two percents) so results stay whole numbers."""
    p, q, base = 5 * rng.randint(1, 19), 5 * rng.randint(1, 19), 20 * rng.randint(1, 40)
    up, up2, flip = rng.random() < 0.5, rng.random() < 0.5, rng.random() < 0.5
    verb = {True: "increased", False: "decreased"}
    f1, f2 = 1 + Fraction(p if up else -p, 100), 1 + Fraction(q if up2 else -q, 100)
    if level == "easy":
        return f"What is {p}\\% of {base}?", base * Fraction(p, 100), [_percent_of(p, base)]
    if level == "medium" and flip:
        part = base * p // 100
        return f"{part} is {p}\\% of what number?", Fraction(base), [
            f"If {p}\\% of N is {part}, then N = {part} \\div \\frac{{{p}}}{{100}}.",
            f"N = {part} \\times \\frac{{100}}{{{p}}} = \\frac{{{part * 100}}}{{{p}}} = {base}."]
    if level == "medium":
        return f"A price of {base} is {verb[up]} by {p}\\%. What is the new price?", base * f1, [
            f"The price is multiplied by 1 {'+' if up else '-'} \\frac{{{p}}}{{100}} = {_tex(f1)}.",
            f"{base} \\times {_tex(f1)} = {_tex(base * f1)}."]
    base *= 20
    if flip:  # a percent of a percent
        mid = base * Fraction(q, 100)
        steps = [_percent_of(q, base), _percent_of(p, mid)]
        return f"What is {p}\\% of {q}\\% of {base}?", mid * p / 100, steps
    return (f"A price of {base} is {verb[up]} by {p}\\% and then {verb[up2]} by {q}\\%. "
            "What is the final price?", base * f1 * f2, [
                f"The first change multiplies by {_tex(f1)}: {base} \\times {_tex(f1)} = {_tex(base * f1)}.",
                f"The second multiplies by {_tex(f2)}: "
                f"{_tex(base * f1)} \\times {_tex(f2)} = {_tex(base * f1 * f2)}."])


def _factor(n: int) -> dict[int, int]:
    """Trial division; the numbers here stay below a few hundred."""
    out: dict[int, int] = {}
    for p in range(2, n + 1):
        while n % p == 0:
            out[p], n = out.get(p, 0) + 1, n // p
    return out


def _factor_tex(f: dict[int, int]) -> str:
    return " \\times ".join(str(p) if e == 1 else f"{p}^{{{e}}}" for p, e in sorted(f.items()))


def _gcd_lcm(rng: random.Random, level: str) -> Built:
    """Numbers share a factor g on purpose, so the gcd is never a dull 1."""
    if level == "easy":
        kind, g, mults = "gcd", rng.randint(2, 15), rng.sample(range(1, 13), 2)
    elif level == "medium" and rng.random() < 0.5:
        kind, g, mults = "gcd", rng.randint(6, 40), rng.sample(range(2, 26), 2)
    elif level == "medium":
        kind, g, mults = "lcm", rng.randint(2, 12), rng.sample(range(2, 21), 2)
    else:
        kind, g, mults = rng.choice(["gcd", "lcm"]), rng.randint(2, 20), rng.sample(range(1, 16), 3)
    nums = [g * m for m in mults]
    facts = [_factor(v) for v in nums]
    pick = min if kind == "gcd" else max
    result = {p: pick(f.get(p, 0) for f in facts) for p in sorted(set().union(*facts))}
    ans = math.gcd(*nums) if kind == "gcd" else math.lcm(*nums)
    name = "greatest common divisor" if kind == "gcd" else "least common multiple"
    listed = " and ".join(map(str, nums)) if len(nums) == 2 else f"{nums[0]}, {nums[1]}, and {nums[2]}"
    which = "lowest power of each prime common to all" if kind == "gcd" else "highest power of each prime"
    steps = [f"Factor: {v} = {_factor_tex(f)}." for v, f in zip(nums, facts, strict=True)]
    steps.append(f"Take the {which}: {_factor_tex({p: e for p, e in result.items() if e})} = {ans}.")
    return f"What is the {name} of {listed}?", Fraction(ans), steps


_BUILDERS: dict[str, Callable[[random.Random, str], Built]] = {
    "arithmetic": _arithmetic, "fractions": _fractions, "linear": _linear, "modular": _modular,
    "sequences": _sequences, "percent": _percent, "gcd_lcm": _gcd_lcm,
}


def _checked(kind: str, given: Sequence[str], allowed: tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(given, str):  # a bare string would silently iterate over its characters
        raise ValueError(f"{kind} names must be given as a sequence, not the string {given!r}")
    values = tuple(given)
    if not values:
        raise ValueError(f"at least one {kind} is required; choose from {allowed}")
    for v in values:
        if v not in allowed:
            raise ValueError(f"unknown {kind} {v!r}; expected one of {allowed}")
    return values


def generate(
    n: int, seed: int = 0, families: Sequence[str] = FAMILIES, levels: Sequence[str] = LEVELS
) -> Iterator[dict[str, object]]:
    """Yield n problems. Problem i depends only on (seed, i, families, levels).

    Arguments are checked here, not on the first next(), so a bad recipe fails where it is built.
    A per-index string seed (random.Random hashes it with sha512) keeps problem i stable when n
    changes and whatever PYTHONHASHSEED is.
    """
    fams, levs = _checked("family", families, FAMILIES), _checked("level", levels, LEVELS)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return _problems(n, seed, fams, levs)


def _problems(n: int, seed: int, fams: tuple[str, ...], levs: tuple[str, ...]) -> Iterator[dict[str, object]]:
    for i in range(n):
        rng = random.Random(f"{seed}:{i}")
        family, level = rng.choice(fams), rng.choice(levs)
        question, value, steps = _BUILDERS[family](rng, level)
        answer = _tex(value)
        yield {
            "index": i, "family": family, "level": level, "question": question, "answer": answer,
            "answer_type": "math", "solution": "\n".join([*steps, f"So the answer is {answer}."]),
        }
