"""The cheap checkers: ``choice`` (same option), ``exact`` (same string), ``numeric`` (same number).

They run in the caller's process: each item costs microseconds, so a child process or a memo would
cost more than it saves. Like every checker they never raise: a reference they cannot read is an
``error`` (the problem is broken, not the trace), a prediction they cannot read is a ``fail``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from fractions import Fraction

from pydantic import Field

from stages.checkers.base import Check, CheckItem
from stages.contract import StageConfig

_PASS = Check("pass", 1.0)
_NO_GOLD = Check("error", 0.0, "no gold answer")
_NO_ANSWER = Check("fail", 0.0, "no answer")

_WRAPPER = re.compile(r"^\\(?:text|textbf|textrm|mathrm|mathbf|mbox|boxed)\s*\{(.*)\}$", re.DOTALL)
_QUOTES = "\"'`\u201c\u201d\u2018\u2019"


def _unwrap(text: str) -> str:
    """Drop what surrounds an answer without being part of it: math delimiters, a ``\\text{}`` (or
    bold, or box) around the whole answer, markdown bold, quotes, a final period. Repeats until
    nothing changes, since models nest these ("$\\text{Paris}$.")."""
    previous = None
    text = text.strip()
    while text != previous:
        previous = text
        text = text.rstrip(".").strip()
        for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"), ("**", "**")):
            if len(text) >= len(left) + len(right) and text.startswith(left) and text.endswith(right):
                text = text[len(left):len(text) - len(right)].strip()
        if (match := _WRAPPER.match(text)) and _balanced(match.group(1)):  # not "\\text{a} + \\text{b}"
            text = match.group(1).strip()
        if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
            text = text[1:-1].strip()
    return text


def _balanced(text: str) -> bool:
    depth = 0
    for i, char in enumerate(text):
        if char in "{}" and (i == 0 or text[i - 1] != "\\"):
            depth += 1 if char == "{" else -1
            if depth < 0:
                return False
    return depth == 0


# ---------------------------------------------------------------------------------------------------------
# choice


class ChoiceConfig(StageConfig):
    """No knobs: a letter is a letter. A model (not a checker) is needed to read free prose."""


_OPTION_WORD = re.compile(r"^(?:option|choice|answer)\s*:?\s*", re.IGNORECASE)
_LONE_LETTER = re.compile(r"^[(\[]?([A-Za-z])[)\]]?\s*[.:]?$")
_LETTER_THEN_TEXT = re.compile(r"^[(\[]?([A-Za-z])(?:[)\]]|\s*[.:])\s*\S")  # "B) 12", "(c) dog", "D. none"


def choice_letter(answer: str | None, choices: Sequence[str] | None) -> str | None:
    """The capital letter an answer names (A = first option), or None.

    A lone letter in any dress ("(b)", "B.", ``\\text{B}``, "Option B", "B) 12") counts; so does the
    exact text of exactly one option, ignoring case and spacing. A letter past the last option
    names nothing, so "E" on a four-option question is a fail, not a pass by accident.
    """
    if answer is None:
        return None
    text = _OPTION_WORD.sub("", _unwrap(unicodedata.normalize("NFKC", answer)))
    text = _unwrap(text)
    if match := _LONE_LETTER.match(text) or _LETTER_THEN_TEXT.match(text):
        letter = match.group(1).upper()
        if choices is None or ord(letter) - ord("A") < len(choices):
            return letter
    if choices:
        key = _option_key(text)
        named = [i for i, option in enumerate(choices) if _option_key(option) == key]
        if len(named) == 1:
            return chr(ord("A") + named[0])
    return None


def _option_key(text: str) -> str:
    return " ".join(_unwrap(unicodedata.normalize("NFKC", text)).casefold().split())


class ChoiceChecker:
    """Multiple choice: pass iff prediction and gold name the same option (gold: letter or text)."""

    name = "choice"
    version = "1"

    def __init__(self, config: ChoiceConfig | None = None) -> None:
        self.config = config or ChoiceConfig()

    def check(self, items: Sequence[CheckItem]) -> list[Check]:
        return [_guarded(self._one, item) for item in items]

    def _one(self, item: CheckItem) -> Check:
        if item.gold is None or not item.gold.strip():
            return _NO_GOLD
        gold = choice_letter(item.gold, item.choices)
        if gold is None:
            return Check("error", 0.0, "gold answer names no option")
        if item.prediction is None or not item.prediction.strip():
            return _NO_ANSWER
        pred = choice_letter(item.prediction, item.choices)
        if pred is None:
            return Check("fail", 0.0, "prediction names no option")
        if pred == gold:
            return _PASS
        return Check("fail", 0.0, f"chose {pred}, answer is {gold}", {"chosen": pred, "gold": gold})

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------------------
# exact


class ExactConfig(StageConfig):
    case_sensitive: bool = Field(False, description="compare case too (default: casefolded)")


def exact_key(answer: str, case_sensitive: bool = False) -> str:
    """The form two answers must share: NFKC (full-width and ligatures fold), unwrapped, one space
    between words, casefolded unless asked not to."""
    text = " ".join(_unwrap(unicodedata.normalize("NFKC", answer)).split())
    return text if case_sensitive else text.casefold()


class ExactChecker:
    """Normalised string equality, for short text answers (names, words, yes/no)."""

    name = "exact"
    version = "1"

    def __init__(self, config: ExactConfig | None = None) -> None:
        self.config = config or ExactConfig()

    def check(self, items: Sequence[CheckItem]) -> list[Check]:
        return [_guarded(self._one, item) for item in items]

    def _one(self, item: CheckItem) -> Check:
        if item.gold is None:
            return _NO_GOLD
        gold = exact_key(item.gold, self.config.case_sensitive)
        if not gold:
            return Check("error", 0.0, "gold answer is empty")
        pred = exact_key(item.prediction or "", self.config.case_sensitive)
        if not pred:
            return _NO_ANSWER
        return _PASS if pred == gold else Check("fail", 0.0, "not equal")

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------------------
# numeric


class NumericConfig(StageConfig):
    rel_tol: float = Field(1e-6, ge=0, description="relative tolerance (math.isclose)")
    abs_tol: float = Field(1e-9, ge=0, description="absolute tolerance, for answers near zero")


_UNICODE_MINUS = str.maketrans({"\u2212": "-", "\u2013": "-", "\u00a0": " ", "\u2009": " ", "\u202f": " "})
_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_DECIMAL = re.compile(rf"{_NUMBER}(?:[eE][+-]?\d+)?")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:(?:,|\{,\}|\\,)\d{3})+(?:\.\d+)?")
_TIMES_TEN = re.compile(rf"({_NUMBER})\s*(?:\\times|\\cdot|\*|x)\s*10\s*\^\s*\{{?\s*([+-]?\d+)\s*\}}?")
_SLASH = re.compile(rf"({_NUMBER})\s*/\s*({_NUMBER})")
_FRAC_PART = r"(?:\{\s*([+-]?\d+(?:\.\d+)?)\s*\}|(\d))"  # \frac{12}{5} or \frac34
_FRAC = re.compile(rf"([+-]?)\\[dt]?frac\s*{_FRAC_PART}\s*{_FRAC_PART}")
_UNIT_TAIL = re.compile(
    r"(?<=[\d}.])\s*(?:(?:\\(?:text|mbox|mathrm)\s*\{[^{}]*\}|[A-Za-z]{2,}\.?)(?:\s*\^\s*\d)?\s*)+$")


_NOT_UNITS = {"pi", "sqrt", "frac", "hundred", "thousand", "million", "billion", "trillion", "e", "i", "ln",
              "log", "sin", "cos", "tan", "infty", "times", "cdot"}


def parse_number(answer: str | None) -> Fraction | float | None:
    """The number an answer states, exactly where possible, or None.

    Reads integers, decimals, scientific notation (``1e3``, ``1.5\\times 10^{3}``), fractions
    (``3/4``, ``\\frac{3}{4}``), thousands separators (groups of exactly three digits), a leading
    currency sign, a trailing unit, and ``x = 5``. A percent sign is dropped, as in the math
    checker: "50%" states 50. Anything else (expressions, two numbers) is not a number.
    """
    if answer is None:
        return None
    text = _unwrap(unicodedata.normalize("NFKC", answer).translate(_UNICODE_MINUS))
    if "=" in text:
        text = text.rsplit("=", 1)[1].strip()
    text = re.sub(r"\\%|%|\s*\bpercent\b", "", text).strip()
    text = re.sub(r"^(?:\\\$|\$|US\$|€|£|¥)\s*", "", text)
    text = re.sub(r"^([+-])\s*(?:\\\$|\$)\s*", r"\1", text)  # -$5
    for _ in range(3):  # "5\text{ cm}^2", "12 sq ft"; but "3pi" and "10 million" are other numbers
        tail = _UNIT_TAIL.search(text)
        if tail is None or _NOT_UNITS & set(re.findall(r"[a-z]+", tail.group(0).lower())):
            break
        text = text[:tail.start()].strip()
    text = _unwrap(text)
    if _THOUSANDS.fullmatch(text):
        text = re.sub(r",|\{,\}|\\,", "", text)
    try:
        if _DECIMAL.fullmatch(text):
            mantissa, _, exponent = text.lower().partition("e")
            return _scaled(mantissa, exponent or "0")
        if match := _TIMES_TEN.fullmatch(text):
            return _scaled(match.group(1), match.group(2))
        if match := _SLASH.fullmatch(text):
            return Fraction(match.group(1)) / Fraction(match.group(2))
        if match := _FRAC.fullmatch(text):
            sign, top, top_digit, bottom, bottom_digit = match.groups()
            value = Fraction(top or top_digit) / Fraction(bottom or bottom_digit)
            return -value if sign == "-" else value
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return None


def _scaled(mantissa: str, exponent: str) -> Fraction | float:
    """mantissa × 10^exponent, exact unless the exponent is absurd (then a float: inf or 0.0), so
    "1e999999999" cannot make us build a billion-digit integer."""
    power = int(exponent)
    if abs(power) > 400:
        return float(f"{mantissa}e{power}")
    return Fraction(mantissa) * Fraction(10) ** power


class NumericChecker:
    """One number against another, within tolerances (exact fractions compare exactly first)."""

    name = "numeric"
    version = "1"

    def __init__(self, config: NumericConfig | None = None) -> None:
        self.config = config or NumericConfig()

    def check(self, items: Sequence[CheckItem]) -> list[Check]:
        return [_guarded(self._one, item) for item in items]

    def _one(self, item: CheckItem) -> Check:
        if item.gold is None or not item.gold.strip():
            return _NO_GOLD
        gold = parse_number(item.gold)
        if gold is None:
            return Check("error", 0.0, "gold answer is not a number")
        if item.prediction is None or not item.prediction.strip():
            return _NO_ANSWER
        pred = parse_number(item.prediction)
        if pred is None:
            return Check("fail", 0.0, "prediction is not a number")
        # exact arithmetic: math.isclose's rule without float overflow on huge or tiny numbers
        tolerance = max(Fraction(self.config.rel_tol) * max(abs(pred), abs(gold)),
                        Fraction(self.config.abs_tol))
        if abs(pred - gold) <= tolerance:
            return _PASS
        return Check("fail", 0.0, "not equal within tolerance",
                     {"prediction": str(pred)[:60], "gold": str(gold)[:60]})

    def close(self) -> None:
        pass


def _guarded(one, item: CheckItem) -> Check:
    """One item's check, with any bug turned into an ``error`` so a batch always gets its verdicts."""
    try:
        return one(item)
    except Exception as e:
        return Check("error", 0.0, f"checker error: {type(e).__name__}: {e}"[:200])
