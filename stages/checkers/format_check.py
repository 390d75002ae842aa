"""The ``format`` checker: is a trace well-formed enough to train on, whatever its answer says?

A right answer at the end of a cut-off or looping trace still teaches the student to ramble, so
verify asks this checker alongside the answer checker. It reads the parsed trace row
(``CheckItem.trace``: ``reasoning``, ``answer``, ``final_answer``, ``finish_reason``, ``flags``), never
the problem, and applies these rules in this order (the reason names the first that fails,
``details["failed"]`` lists all):

- ``empty_completion``: the teacher returned nothing (parse's flag);
- ``truncated``: ``finish_reason == "length"`` or parse's ``truncated`` flag: the text was cut off;
- ``missing_reasoning``: ``require_reasoning`` is set and the reasoning is empty (a trace without
  think tags still has reasoning when parse found text before its answer statement);
- ``unclosed_reasoning``: the reasoning block never closed (parse's flag);
- ``missing_final_answer``: no final answer was extracted (or parse's ``empty_answer`` flag);
- ``repetition``: runaway repetition, in either of two shapes:

  - *n-grams*: word n-grams (``ngram`` whitespace-separated words) that occur at least
    ``min_repeats`` times together cover more than ``max_repeat_ratio`` of the words of reasoning
    and answer. Twenty words in the same order are rarely repeated by chance, so natural text that
    reuses a short phrase ("let me check", "so the answer is") passes. An n-gram without a letter
    (rows of a zero matrix) does not count;
  - *a tail loop*: the reasoning or the answer ends in the same block of 1 to 8 lines or sentences
    repeated at least ``min_repeats`` times in a row (a last, cut-off copy is allowed), spanning at
    least ``ngram`` words, with letters in it. A loop is how a stuck model ends; the letter rule
    keeps rows of numbers (matrices, tables, program output) out of it.

``score`` is 1 on a pass and 0 otherwise.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field

from stages.checkers.base import Check, CheckItem
from stages.contract import StageConfig

_MAX_PERIOD = 8
_UNIT_SPLIT = re.compile(r"(?<=[.!?])\s+|\s*\n\s*")


class FormatConfig(StageConfig):
    require_reasoning: bool = Field(True, description="a trace must carry reasoning to pass")
    max_repeat_ratio: float = Field(0.3, gt=0, le=1, description="share of the words that repeated "
                                                                 "n-grams may cover")
    ngram: int = Field(20, ge=2, description="words per n-gram (whitespace-separated tokens)")
    min_repeats: int = Field(4, ge=2, description="occurrences that make an n-gram, or a tail block, a "
                                                  "repetition")


class FormatChecker:
    name = "format"
    version = "1"

    def __init__(self, config: FormatConfig | None = None) -> None:
        self.config = config or FormatConfig()

    def check(self, items: Sequence[CheckItem]) -> list[Check]:
        out = []
        for item in items:
            try:
                out.append(self._one(item.trace))
            except Exception as e:  # never raise: a bug here must not stop a run
                out.append(Check("error", 0.0, f"checker error: {type(e).__name__}: {e}"[:200]))
        return out

    def close(self) -> None:
        pass

    def _one(self, trace: Mapping[str, Any] | None) -> Check:
        if trace is None:
            return Check("error", 0.0, "no trace")
        flags = set(trace.get("flags") or ())
        reasoning = trace.get("reasoning") or ""
        answer = trace.get("answer") or ""
        if not reasoning.strip() and not answer.strip():
            answer = trace.get("completion") or ""
        failed: list[str] = []
        if "empty_completion" in flags:
            failed.append("empty_completion")
        if trace.get("finish_reason") == "length" or "truncated" in flags:
            failed.append("truncated")
        if self.config.require_reasoning and not reasoning.strip():
            failed.append("missing_reasoning")
        if "unclosed_reasoning" in flags:
            failed.append("unclosed_reasoning")
        if not (trace.get("final_answer") or "").strip() or "empty_answer" in flags:
            failed.append("missing_final_answer")
        repetition = self.repetition(reasoning, answer)
        if repetition:
            failed.append("repetition")
        if not failed:
            return Check("pass", 1.0)
        details: dict[str, Any] = {"failed": failed}
        if repetition:
            details["repetition"] = repetition
        reason = f"repetition: {repetition}" if failed[0] == "repetition" else failed[0]
        return Check("fail", 0.0, reason, details)

    def repetition(self, *texts: str) -> str | None:
        """What runaway repetition the texts show (for people), or None."""
        c = self.config
        words = [w for t in texts for w in t.split()]
        covered = _ngram_coverage(words, c.ngram, c.min_repeats)
        if covered > c.max_repeat_ratio:
            return (f"{c.ngram}-word sequences seen {c.min_repeats}+ times cover {covered:.0%} of the text "
                    f"(limit {c.max_repeat_ratio:.0%})")
        for text in texts:
            loop = _tail_loop(text, c.min_repeats, c.ngram)
            if loop:
                return loop
        return None


def _ngram_coverage(words: list[str], n: int, min_repeats: int) -> float:
    """Share of the words inside some n-gram, with a letter in it, that occurs ``min_repeats``+ times."""
    if len(words) < n * min_repeats:
        return 0.0
    keys = [hash(tuple(words[i:i + n])) for i in range(len(words) - n + 1)]
    counts = Counter(keys)
    next_letter = [len(words)] * (len(words) + 1)  # where the first word with a letter at or after i is
    for i in range(len(words) - 1, -1, -1):
        next_letter[i] = i if any(ch.isalpha() for ch in words[i]) else next_letter[i + 1]
    covered, reach = 0, 0  # reach: the first word not yet counted
    for i, key in enumerate(keys):
        if counts[key] >= min_repeats and next_letter[i] < i + n:
            covered += i + n - max(i, reach)
            reach = i + n
    return covered / len(words)


def _tail_loop(text: str, min_repeats: int, min_words: int) -> str | None:
    """A block of lines or sentences that the text ends by repeating, described, or None."""
    units = [" ".join(u.split()) for u in _UNIT_SPLIT.split(text.strip())]
    units = [u for u in units if u]
    for period in range(1, _MAX_PERIOD + 1):
        for cut in (0, 1):  # 1: the last unit is a cut-off copy of the one the loop would repeat next
            seq = units[:len(units) - cut]
            if len(seq) < period * min_repeats:
                continue
            if cut and not seq[-period].startswith(units[-1]):
                continue
            block = seq[-period:]
            repeats = 1
            while ((repeats + 1) * period <= len(seq)
                   and seq[-(repeats + 1) * period:-repeats * period] == block):
                repeats += 1
            words = sum(len(u.split()) for u in block) * repeats
            if repeats >= min_repeats and words >= min_words and any(ch.isalpha() for u in block for ch in u):
                shown = " / ".join(block)
                shown = shown if len(shown) <= 80 else shown[:77] + "..."
                return f"ends in a loop: {shown!r} repeated {repeats} times"
    return None
