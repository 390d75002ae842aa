"""Math-safe text normalisation, shared by dedup and decontaminate so both see text the same way.

Web-text dedup (datatrove's default) lowercases, strips punctuation and maps every digit to 0:
for maths that merges "2x+3=7" with "5x+1=9", two different problems. Here numbers and math
symbols are tokens of their own, so they count: NFKC, lowercase, every number, word, operator or
bracket a token, prose punctuation and quotes dropped (they change on a light edit, not the
problem), and whitespace gone.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

import xxhash

# A token is a number (a decimal point stays inside: "2.5" is not the list 2, 5), a run of letters,
# or one symbol; "2x" is two tokens, like "2 x". Found by one regex in C: ~0.3 ms per 2,000 chars.
_TOKEN = re.compile(r"\d+(?:\.\d+)?|[^\W\d_]+|[^\w\s]|_")
# Dropped: sentence punctuation and quotes; they change on a light edit, the problem does not.
_DROP = frozenset(".,;:!?\"'`“”‘’«»…–—")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_SIZING = re.compile(r"\\(?:left|right)(?![a-z])")
_SPELLINGS = (("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("−", "-"))


def tokens(text: str | None) -> list[str]:
    """The normalised word, number and symbol tokens of a text ("2x+3=7" -> 2 x + 3 = 7).

    Besides case, spacing and punctuation, spellings that mean the same are made one: thousands
    separators ("1,000" is 1000), ``\\dfrac``/``\\tfrac`` (``\\frac``), the Unicode minus, and
    ``\\left``/``\\right`` sizing (dropped; ``\\Rightarrow`` stays itself).
    """
    if not text:
        return []
    text = unicodedata.normalize("NFKC", text).lower()
    for spelling, meaning in _SPELLINGS:
        if spelling in text:
            text = text.replace(spelling, meaning)
    if "\\left" in text or "\\right" in text:
        text = _SIZING.sub(" ", text)
    if "," in text:
        text = _THOUSANDS.sub("", text)
    return [t for t in _TOKEN.findall(text) if t not in _DROP]


def normalised(text: str | None) -> str:
    return " ".join(tokens(text))


def numbers(toks: Sequence[str]) -> tuple[str, ...]:
    """The numbers of a text in order, digits kept: "2x+3=7" -> ("2", "3", "7").

    Every number is a token of its own (see ``tokens``). Order matters: 2x+3=7 and 3x+2=7 differ.
    """
    return tuple(t for t in toks if t[0].isdigit())


def shingles(toks: Sequence[str], n: int) -> list[str]:
    """Word n-grams; a text shorter than n is one shingle, so it still has a signature."""
    if len(toks) <= n:
        return [" ".join(toks)] if toks else []
    return list(map(" ".join, zip(*(toks[i:] for i in range(n)), strict=False)))


def shingle_hashes(toks: Sequence[str], n: int) -> list[int]:
    """64-bit hashes of the distinct word n-grams, sorted: the set a Jaccard similarity is taken over."""
    return sorted({xxhash.xxh3_64_intdigest(s) for s in shingles(toks, n)})


def text_key(toks: Sequence[str]) -> str:
    """A 128-bit hash of the normalised text: equal keys, equal texts after normalisation."""
    return xxhash.xxh3_128_hexdigest(" ".join(toks))


def numbers_key(toks: Sequence[str]) -> str:
    return xxhash.xxh3_64_hexdigest("\x1f".join(numbers(toks)))
