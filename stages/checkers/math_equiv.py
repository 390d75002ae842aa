"""The ``math`` checker: is a trace's final answer mathematically equivalent to the reference?

Equivalence is math-verify's (``parse`` both sides, ``verify(gold, pred)``, gold first: it is not
symmetric). Four things around it are ours:

- **Preprocessing** (``prepare_answer``): the answers parse extracted are bare strings, often with
  units, degree signs, currency, thousands separators or percent signs that math-verify would read
  as symbols or tuples. We strip those the same way on both sides and wrap the rest in ``$...$``
  (a bare ``(x+1)^2`` does not parse as LaTeX). Rules that decide verdicts:

  - a percent sign is dropped: ``50\\%`` ≡ ``50%`` ≡ ``50``, and ``50%`` vs ``0.5`` fails (a
    percentage is compared by its number, so equivalence stays transitive);
  - a degree sign is dropped and nothing converts units: ``30^\\circ`` ≡ ``30``, ``90^\\circ`` vs
    ``\\frac{\\pi}{2}`` fails;
  - units (``\\text{ cm}``, "5 cm", "5 dollars") and currency (``\\$5``) are dropped;
  - commas are thousands separators only in a lone number whose groups after the first have
    exactly three digits (``1,000`` is 1000, ``1,2`` stays the set {1, 2}, ``1,0000`` stays a pair).

- **A child process**: math-verify's timeouts use SIGALRM, which works only in a main thread, and a
  pathological answer can hang in C code where no signal reaches it. So parse and verify run in one
  persistent spawned child per checker, which times each pair itself (one ``setitimer`` over parse
  and verify, not math-verify's own timeouts: those round to whole seconds and report a timeout as
  "not equivalent", which would turn a checker limit into a wrong ``fail``). A ``check`` call sends
  its unique pairs in one message; the child answers in chunks, so the parent sees progress and
  needs no per-pair round trip. When the child stops answering or dies, the parent kills it, starts a
  new one and redoes the unanswered pairs one at a time, so only the culprit gets ``error``.

- **A memo**: 16 samples of a problem often give the same few answers, so verdicts are kept per
  (prepared gold, prepared prediction). Keys are the exact strings sent to math-verify, so equal
  keys always mean equal verdicts.

- **Faster parsing** (``fast_parse``, in the child only): most of math-verify's time is
  latex2sympy's ANTLR parser in full-context (LL) mode and ``sympy.Number(text)`` per number. The
  child parses in SLL mode first (ANTLR guarantees the same tree or a syntax error, and only then
  LL runs) and builds plain integers and decimals directly. Same parses and verdicts (the answer
  table and the bench's 25,500 items agree with plain math-verify), about twice the throughput.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import multiprocessing
import re
import signal
import threading
import time
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

from pydantic import Field

from stages.checkers.base import Check, CheckItem
from stages.contract import StageConfig

MATH_VERIFY_VERSION = importlib.metadata.version("math-verify")


class MathConfig(StageConfig):
    timeout_s: float = Field(5.0, gt=0, description="seconds one answer pair may take (parse + verify)")
    float_rounding: int = Field(6, ge=0, description="decimal places floats are rounded to (math-verify)")
    numeric_precision: int = Field(15, ge=1, description="significant digits of numeric checks (math-verify)")
    strict: bool = Field(True, description="math-verify strict mode: variable names matter (x^2 is not y^2)")
    fast_parse: bool = Field(True, description="parse LaTeX with ANTLR's SLL mode first (LL only after a "
                                               "syntax error) and build plain numbers directly: the same "
                                               "parses, about twice as fast")


# ---------------------------------------------------------------------------------------------------------
# Preprocessing (parent side; cheap regexes)

_UNICODE = {
    "\u2212": "-", "\u2013": "-", "\u00d7": "\\times ", "\u00b7": "\\cdot ", "\u22c5": "\\cdot ",
    "\u00f7": "\\div ", "\u03c0": "\\pi ", "\u221e": "\\infty ", "\u221a": "\\sqrt", "\u2264": "\\le ",
    "\u2265": "\\ge ", "\u2260": "\\ne ", "\u00b2": "^2", "\u00b3": "^3", "\u00bd": "\\frac{1}{2}",
    "\u00bc": "\\frac{1}{4}", "\u00be": "\\frac{3}{4}", "\u00a0": " ", "\u2009": " ", "\u202f": " ",
}
_UNICODE_RE = re.compile("|".join(map(re.escape, _UNICODE)))
_BOX = re.compile(r"\\(?:boxed|fbox)\b")
_OUTER = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")
_DFRAC = re.compile(r"\\[dt]frac\b")
_LEFT_RIGHT = re.compile(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|big|Big)(?![A-Za-z])\s*\.?")
_SPACING = re.compile(r"(?<!\\)\\[,;:!> ]|\\q?quad\b|~")
_DEGREES = re.compile(
    r"\^\s*\{?\s*\\circ\s*\}?|(?<=[\d}])\s*\\circ\b|\\degree\b|°|\s*(?<!\\)\b(?:degrees?|deg)\b\.?", re.I)
_PERCENT = re.compile(r"\\%|%|\s*\\text\s*\{\s*percent\s*\}|\s*\bpercent\b", re.I)
_CURRENCY = re.compile(r"^(?:\\\$|\\text\s*\{\s*\\\$\s*\}|US\$|USD\s*|€|£|¥|\$)\s*")
# A unit in LaTeX text after a number or closing bracket: "5\text{ cm}", "3\mbox{ m}^2", "7\,\mathrm{kg}"
_TEXT_UNIT = re.compile(
    r"(?<=[\d})\]])\s*\\(?:text|mbox|mathrm|textrm|textnormal|rm)\s*\{\s*[A-Za-z][A-Za-z .]*\}"
    r"(?:\s*\^\s*\{?\s*\d\s*\}?)?\s*$"
)
# Unit words after a number and a space: "5 cm", "12 apples", "3 sq. ft", "10 m/s", "4 square units".
# Without the space only known units ("5cm"): "2ab" is a product, not 2 of something.
_WORD_UNIT = re.compile(
    r"(?<=[\d})])\s+(?P<unit>(?:(?:[A-Za-z]{2,}\.?|[A-Za-z]+/[A-Za-z]+)(?:\^\d)?\s*)+)$")
_GLUED_UNIT = re.compile(r"(?<=\d)(?:cm|mm|km|kg|mg|ml|mL|ft|sq\.? ?ft|mph|kph|sec|min|hrs?)(?:\^\d)?$")
_MATH_WORDS = {"pi", "sqrt", "and", "or", "infty", "inf", "infinity", "cdot", "times", "frac", "to", "sin",
               "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp", "max", "min", "gcd", "lcm", "mod",
               "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "det"}
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:(?:,|\{,\}|\\,|\s)\d{3})+(?:\.\d+)?")
_SEPARATOR = re.compile(r",|\{,\}|\\,|\s")
_SCIENTIFIC = re.compile(r"([+-]?\d+(?:\.\d+)?)[eE]([+-]?\d+)")
_MATH_SPAN = re.compile(r"(?<!\\)\$(.+?)(?<!\\)\$")
_REPEATING = re.compile(r"([+-]?)(\d*)\.(\d*)\\(?:overline|bar)\s*\{(\d+)\}")
_PROSE_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}")
_TEXT_BLOCK = re.compile(r"\\(?:text|mbox|mathrm|textrm|textbf|operatorname|begin|end)\s*\{[^{}]*\}")


def prepare_answer(answer: str | None) -> str | None:
    """The string handed to math-verify for one answer, or None when there is no answer.

    Both sides go through the same steps, so a rule that strips something strips it from gold and
    prediction alike. A LaTeX answer comes back wrapped in ``$...$``; an answer that reads as prose
    ("It is 5 because...") is left for math-verify's own extraction, which finds the last number.
    """
    if answer is None:
        return None
    text = _UNICODE_RE.sub(lambda m: _UNICODE[m.group(0)], answer).strip()
    if _BOX.search(text):
        from stages.parse import extract_final_answer  # lazy: only answers with a box pay the import

        text = (extract_final_answer(text, "math", None) or text).strip()
    text = _strip_delimiters(text)
    pass_through = False
    if _UNESCAPED_DOLLAR.search(text):
        text, pass_through = _math_part(text)
    text = " ".join(text.split()).rstrip(" .;,")
    if not text:
        return None
    text = _DFRAC.sub(r"\\frac", text)
    text = _LEFT_RIGHT.sub("", text)
    text = _SPACING.sub(" ", text)
    text = _DEGREES.sub("", text)
    text = _PERCENT.sub("", text)
    if not pass_through:
        text = _CURRENCY.sub("", text.strip())
        text = _strip_units(text.strip())
    text = " ".join(text.split())
    if _THOUSANDS.fullmatch(text):
        text = _SEPARATOR.sub("", text)
    elif match := _SCIENTIFIC.fullmatch(text):
        text = f"{match.group(1)}\\times 10^{{{match.group(2)}}}"
    elif match := _REPEATING.fullmatch(text):
        text = _repeating_to_fraction(match)
    if not text:
        return None
    if pass_through or _is_prose(text):
        return text
    return f"${text}$"


def _strip_delimiters(text: str) -> str:
    previous = None
    while text != previous:
        previous = text
        for left, right in _OUTER:
            inner = text[len(left):len(text) - len(right)]
            if (len(text) >= len(left) + len(right) and text.startswith(left) and text.endswith(right)
                    and not (left == "$" and _UNESCAPED_DOLLAR.search(inner))):
                text = inner.strip()
                break
    return text


def _math_part(text: str) -> tuple[str, bool]:
    """(text, pass_through) for an answer that mixes text and ``$...$``.

    One math span among units or filler ("$5$ cm", "x = $3$") is unwrapped and prepared like any
    answer. Several spans or real prose are passed through for math-verify's own extraction, which
    knows "$1$ and $2$" and "the answer is $5$"; a stray dollar (currency) is dropped.
    """
    spans = _MATH_SPAN.findall(text)
    if not spans:
        return _UNESCAPED_DOLLAR.sub("", text).strip(), False
    if len(spans) > 1 or _is_prose(_MATH_SPAN.sub(" ", text)):
        return text, True
    return _UNESCAPED_DOLLAR.sub("", text).strip(), False


def _repeating_to_fraction(match: re.Match[str]) -> str:
    """``0.1\\overline{6}`` as the exact fraction 1/6: math-verify reads the overline as a symbol."""
    sign, whole, fixed, period = match.groups()
    value = Fraction(int(whole or "0")) + Fraction(int(fixed or "0"), 10 ** len(fixed))
    value += Fraction(int(period), 10 ** len(fixed) * (10 ** len(period) - 1))
    value = -value if sign == "-" else value
    if value.denominator == 1:
        return str(value.numerator)
    return f"\\frac{{{value.numerator}}}{{{value.denominator}}}"


def _strip_units(text: str) -> str:
    text = _GLUED_UNIT.sub("", _TEXT_UNIT.sub("", text))
    match = _WORD_UNIT.search(text)
    words = re.split(r"[\s/^]+", match["unit"]) if match else []
    if match and not any(w.strip(".").lower() in _MATH_WORDS for w in words if w):
        text = text[:match.start()]
    return text.strip()


def _is_prose(text: str) -> bool:
    words = _PROSE_WORD.findall(_TEXT_BLOCK.sub(" ", text))
    return sum(w.lower() not in _MATH_WORDS for w in words) >= 2


# ---------------------------------------------------------------------------------------------------------
# The child process: runs math-verify in its main thread

_PLAIN_DECIMAL = re.compile(r"[0-9]*\.[0-9]+|[0-9]+\.[0-9]*")
_FLUSH_S = 0.2  # the child sends what it has at least this often, so the parent sees progress


class _PairTimeout(BaseException):
    """Raised by the child's alarm; a BaseException so neither math-verify nor sympy swallows it."""


def _child_main(conn: Any, settings: dict[str, Any], fault: Callable[[str, str], None] | None) -> None:
    """Answer ``list[(gold, pred)]`` requests with ``[(verdict, reason)]`` chunks until told to stop.

    Parsed answers are cached by string: one problem's gold is usually checked against many
    predictions in a batch, and a parse is about half the cost of a pair.
    """
    import logging

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent, which then stops us
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its "timeout disabled" warning: ours is on
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    if settings.get("fast_parse"):
        _two_stage_parsing()

    extraction = [LatexExtractionConfig(), ExprExtractionConfig()]
    timeout_s = float(settings["timeout_s"])
    armed = [False]

    def on_alarm(signum: int, frame: Any) -> None:
        if armed[0]:
            raise _PairTimeout

    signal.signal(signal.SIGALRM, on_alarm)
    parsed: dict[str, list[Any]] = {}

    def parse_cached(text: str) -> list[Any]:
        if text not in parsed:
            if len(parsed) > 50_000:
                parsed.clear()
            parsed[text] = parse(text, extraction, parsing_timeout=None)  # type: ignore[arg-type]
        return parsed[text]

    def one(gold: str, pred: str) -> tuple[str, str | None]:
        armed[0] = True
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            if fault is not None:
                fault(gold, pred)
            gold_parsed = parse_cached(gold)
            pred_parsed = parse_cached(pred) if gold_parsed else []
            if gold_parsed and pred_parsed and verify(
                    gold_parsed, pred_parsed, float_rounding=settings["float_rounding"],
                    numeric_precision=settings["numeric_precision"], strict=settings["strict"],
                    timeout_seconds=None):
                result = ("pass", None)
            elif not _has_math(gold_parsed):  # a broken reference must not read as "every trace is wrong"
                result = ("error", "gold answer not parsable")
            elif not _has_math(pred_parsed):
                result = ("fail", "no parsable answer in prediction")
            else:
                result = ("fail", "not equivalent")
            armed[0] = False
        except _PairTimeout:
            result = ("error", f"timeout after {timeout_s:g}s")
        except Exception as e:  # math-verify catches its own; anything left is ours to report, not raise
            result = ("error", f"checker error: {type(e).__name__}")
        finally:
            armed[0] = False
            signal.setitimer(signal.ITIMER_REAL, 0)
        return result

    # parse and verify once before "ready": ANTLR and sympy set up lazily, and that cost must not
    # count against the first real pair's timer (on a loaded machine it would read as a timeout)
    with contextlib.suppress(Exception):
        verify(parse_cached("$1/2$"), parse_cached("$0.5$"), timeout_seconds=None)
    conn.send("ready")
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if request is None:
            return
        chunk: list[tuple[str, str | None]] = []
        last = time.monotonic()
        for gold, pred in request:
            try:
                chunk.append(one(gold, pred))
            except _PairTimeout:  # the alarm fired between pairs: the pair before had finished in time
                chunk.append(("error", f"timeout after {timeout_s:g}s"))
            if time.monotonic() - last >= _FLUSH_S:
                conn.send(chunk)
                chunk, last = [], time.monotonic()
        conn.send(chunk)


def _two_stage_parsing() -> bool:
    """Make latex2sympy parse in ANTLR's SLL mode first and in LL mode only after a syntax error.

    Most of math-verify's time is ANTLR's full-context (LL) prediction, which the Python runtime
    does not cache. ANTLR guarantees that an SLL parse either yields the tree LL would or reports a
    syntax error (latex2sympy's listener raises on any), so retrying those in LL, as latex2sympy
    does by default, gives the same trees at about half the cost (checked on the answer table and
    the bench: identical parses). Only the child process is patched; returns False, changing
    nothing, when latex2sympy's internals are not what this expects.
    """
    try:
        from antlr4.atn.PredictionMode import PredictionMode
        from latex2sympy2_extended.latex2sympy2 import _Latex2Sympy
    except ImportError:
        return False
    original = getattr(_Latex2Sympy, "create_parser", None)
    if original is None or getattr(original, "two_stage", False):
        return original is not None

    def create_parser(self: Any, latex_str: str) -> Any:
        parser = original(self, latex_str)
        parser._interp.predictionMode = PredictionMode.SLL
        sll_math = parser.math

        def math() -> Any:
            try:
                return sll_math()
            except Exception:  # a syntax error in SLL: LL decides, on a fresh parser
                return original(self, latex_str).math()

        parser.math = math
        return parser

    create_parser.two_stage = True  # type: ignore[attr-defined]
    _Latex2Sympy.create_parser = create_parser

    # Every number token goes through sympy.Number(text): sympify, a tokenizer and an exec of
    # "from sympy import *" per number (about 0.5 ms). For plain integers and decimals that builds
    # exactly Integer(text) or Float(text) (the types and precisions were compared), so build those.
    original_number = getattr(_Latex2Sympy, "parse_number", None)
    if original_number is not None:
        from sympy import Float, Integer

        def parse_number(self: Any, text: str) -> Any:
            plain = text.replace(",", "")
            if plain.isascii() and plain.isdigit():
                return Integer(plain)
            if _PLAIN_DECIMAL.fullmatch(plain):
                return Float(plain)
            return original_number(self, text)

        _Latex2Sympy.parse_number = parse_number
    return True


def _has_math(parsed: list[Any]) -> bool:
    """Whether math-verify read anything as math: with nothing but its raw-text fallback, the only
    comparison left is string identity, which passes the same text and fails everything else."""
    return any(not isinstance(p, str) for p in parsed)


# ---------------------------------------------------------------------------------------------------------
# The checker (parent side)

_MEMO_LIMIT = 500_000  # verdicts kept per checker; the oldest half goes when full
_PREPARED_LIMIT = 200_000
_STARTUP_S = 120.0  # a cold child imports sympy and math-verify: seconds, more on a loaded machine


class MathChecker:
    """Answer equivalence through math-verify in a persistent child process, with a memo.

    ``stats`` counts what happened (``items``, ``memo_hits``, ``pairs_verified``: pairs the child
    saw, ``requests``, ``timeouts``, ``crashes``, ``starts``), for the stage's manifest and for tests.
    ``_child_fault`` is a test hook: a picklable function the child calls before each pair, to
    inject slowness, hangs or crashes.

    The child is started with ``spawn``, which imports the parent's ``__main__`` module again:
    a script that uses this checker needs the usual ``if __name__ == "__main__":`` guard. A
    daemonic process (a ``multiprocessing.Pool`` worker) may not start children; there every item
    comes back ``error`` ("checker could not start: ..."): use a ProcessPoolExecutor, as the runner
    does.
    """

    name = "math"
    version = f"math-verify-{MATH_VERIFY_VERSION}+1"
    slack_s = 2.0  # how much longer than timeout_s the parent waits before it calls the child stuck

    def __init__(self, config: MathConfig | None = None, *,
                 _child_fault: Callable[[str, str], None] | None = None) -> None:
        self.config = config or MathConfig()
        self._fault = _child_fault
        self._memo: dict[tuple[str, str], Check] = {}
        self._prepared: dict[str, str | None] = {}
        self._process: Any = None
        self._conn: Any = None
        self._last_failure: str | None = None  # why the last request came back short: "timeout", "crash"...
        self._lock = threading.Lock()  # one request at a time on the pipe (Beam calls from threads)
        self.stats: dict[str, int] = dict.fromkeys(
            ("items", "memo_hits", "pairs_verified", "requests", "timeouts", "crashes", "starts"), 0)

    # -- the protocol ------------------------------------------------------------------------------

    def check(self, items: Sequence[CheckItem]) -> list[Check]:
        try:
            with self._lock:
                return self._check(items)
        except Exception as e:  # never raise: a bug here must not stop a run
            reason = f"checker error: {type(e).__name__}: {e}"[:200]
            return [Check("error", 0.0, reason) for _ in items]

    def close(self) -> None:
        """Stop the child: ask it to leave, then kill it if it does not."""
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.send(None)
            if self._process is not None:
                self._process.join(2)
            self._kill()

    @property
    def child_pid(self) -> int | None:
        """The running child's pid (None before the first check and after close), for ops and tests."""
        return self._process.pid if self._process is not None else None

    # -- the work ----------------------------------------------------------------------------------

    def _check(self, items: Sequence[CheckItem]) -> list[Check]:
        self.stats["items"] += len(items)
        results: list[Check | None] = [None] * len(items)
        todo: dict[tuple[str, str], list[int]] = {}
        for i, item in enumerate(items):
            try:
                gold, pred = self._prepare(item.gold), self._prepare(item.prediction)
            except Exception as e:  # not a string, or a preprocessing bug: this item only
                results[i] = Check("error", 0.0, f"checker error: {type(e).__name__}")
                continue
            if gold is None:
                reason = "gold answer not parsable" if item.gold else "no gold answer"
                results[i] = Check("error", 0.0, reason)
            elif pred is None:
                results[i] = Check("fail", 0.0, "no answer")
            elif (gold, pred) in self._memo:
                results[i] = self._memo[(gold, pred)]
                self.stats["memo_hits"] += 1
            elif (gold, pred) in todo:
                todo[(gold, pred)].append(i)
                self.stats["memo_hits"] += 1
            else:
                todo[(gold, pred)] = [i]
        pairs = list(todo)
        for pair, check in zip(pairs, self._verify(pairs), strict=True):
            if _deterministic(check):
                self._remember(pair, check)
            for i in todo[pair]:
                results[i] = check
        return [r if r is not None else Check("error", 0.0, "checker error: no verdict") for r in results]

    def _prepare(self, answer: str | None) -> str | None:
        if answer is None:
            return None
        if answer not in self._prepared:
            if len(self._prepared) >= _PREPARED_LIMIT:
                self._prepared.clear()
            self._prepared[answer] = prepare_answer(answer)
        return self._prepared[answer]

    def _remember(self, pair: tuple[str, str], check: Check) -> None:
        if len(self._memo) >= _MEMO_LIMIT:
            for key in list(self._memo)[: _MEMO_LIMIT // 2]:
                del self._memo[key]
        self._memo[pair] = check

    def _verify(self, pairs: list[tuple[str, str]]) -> list[Check]:
        """All pairs in one request; what a stuck or dead child left undone, one pair at a time."""
        if not pairs:
            return []
        answers = self._request(pairs)
        checks = [_to_check(a) for a in answers]
        if len(pairs) - len(checks) == 1:  # everything else answered: the last one is the culprit
            return [*checks, self._failure_check()]
        for pair in pairs[len(checks):]:
            if self._last_failure and self._last_failure.startswith("checker could not start"):
                checks.append(self._failure_check())  # no pair's fault, and retrying will not help
                continue
            one = self._request([pair])
            checks.append(_to_check(one[0]) if one else self._failure_check())
        return checks

    def _failure_check(self) -> Check:
        if self._last_failure == "timeout":
            return Check("error", 0.0, f"timeout after {self.config.timeout_s:g}s")
        if self._last_failure and self._last_failure.startswith("checker could not start"):
            return Check("error", 0.0, self._last_failure)
        return Check("error", 0.0, "checker crashed")

    def _request(self, pairs: list[tuple[str, str]]) -> list[tuple[str, str | None]]:
        """Send pairs to the child and collect answers until done, stuck or dead (then: what came)."""
        self._last_failure = None
        try:
            self._ensure_child()
        except Exception as e:  # e.g. in a daemonic process, which may not have children
            self._failed("crash")
            self._last_failure = f"checker could not start: {type(e).__name__}: {e}"[:200]
            return []
        try:
            self._conn.send(pairs)
        except Exception:
            self._failed("crash")
            return []
        self.stats["requests"] += 1
        self.stats["pairs_verified"] += len(pairs)
        wait = self.config.timeout_s + _FLUSH_S + max(self.slack_s, self.config.timeout_s)
        answers: list[tuple[str, str | None]] = []
        try:
            while len(answers) < len(pairs):
                try:
                    if not self._conn.poll(wait):
                        self._failed("timeout")
                        return answers
                    answers.extend(self._conn.recv())
                except (EOFError, OSError):
                    self._failed("crash")
                    return answers
        except BaseException:  # Ctrl-C mid-request: the child's late answers must never answer the next one
            self._kill()
            raise
        return answers

    def _failed(self, what: str) -> None:
        self._last_failure = what
        self.stats["timeouts" if what == "timeout" else "crashes"] += 1
        self._kill()

    def _ensure_child(self) -> None:
        if self._process is not None and self._process.is_alive():
            return
        self._kill()
        context = multiprocessing.get_context("spawn")
        parent_end, child_end = context.Pipe(duplex=True)
        settings = self.config.model_dump()
        process = context.Process(target=_child_main, args=(child_end, settings, self._fault),
                                  name="math-verify", daemon=True)
        process.start()
        child_end.close()  # only the child holds it now, so its death reads as EOF here
        self._process, self._conn = process, parent_end
        self.stats["starts"] += 1
        if not parent_end.poll(_STARTUP_S) or parent_end.recv() != "ready":
            raise RuntimeError("math-verify child did not start")

    def _kill(self) -> None:
        if self._process is not None:
            if self._process.is_alive():
                self._process.kill()
            self._process.join(5)
        if self._conn is not None:
            self._conn.close()
        self._process = self._conn = None


def _deterministic(check: Check) -> bool:
    """Whether the same pair would get the same verdict again, so it may be memoised: a crash or a
    start failure may be the machine's fault, a timeout (a pathological answer) is the pair's."""
    return check.verdict != "error" or (check.reason or "").startswith(("timeout", "gold answer"))


def _to_check(answer: tuple[str, str | None]) -> Check:
    verdict, reason = answer
    return Check(verdict, 1.0 if verdict == "pass" else 0.0, reason)  # type: ignore[arg-type]
