"""Parse: split each trace into reasoning and answer, and extract the final answer a checker compares.

Teachers disagree on layout: some servers hand the reasoning back separately (``reasoning_content``),
most models wrap it in ``<think>`` tags (sometimes with the open tag in the prompt), and plain models
just write a solution that ends in a boxed answer or an "Answer:" line. Parsing never drops a trace by
default: what looks wrong becomes a flag, and the verify stage's format checker judges flags later, so
a recipe can tighten rules without regenerating. ``reject`` turns chosen flags into rejections here.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from schemas.validate import rejected_table
from stages.contract import Context, Result, StageConfig

Flag = Literal["truncated", "empty_answer", "unclosed_reasoning", "empty_completion"]


class ParseConfig(StageConfig):
    think_open: str = Field("<think>", description="the tag that opens the reasoning block")
    think_close: str = Field("</think>", description="the tag that closes the reasoning block")
    reject: list[Flag] = Field(
        default_factory=list,
        description="flags that reject a trace here instead of keeping it flagged for verify to judge",
    )


# A boxed answer (any occurrence, for splitting) and an answer statement at the start of a line:
# "Answer:", "Final answer:", "**Answer:**", "**Final Answer**:", "## Final answer:",
# "The final answer is ...".
_BOXED = re.compile(r"\\(?:boxed|fbox)\b")
_ANSWER_LINE = re.compile(
    r"^[ \t>#*_-]*(?:(?:final[ \t]+)?answer[ \t*_]*:|the[ \t]+final[ \t]+answer[ \t]+is\b[ \t*_]*:?)"
    r"(?P<rest>[^\n]*)$",
    re.IGNORECASE | re.MULTILINE,
)
# "So, the final answer is 24" inside a line: weaker than a line that starts with the statement
_ANSWER_IS_INLINE = re.compile(r"\bthe\s+(?:final\s+)?answer\s+is\b\s*:?(?P<rest>[^\n]*)", re.IGNORECASE)
_FINAL_ANSWER_IS = re.compile(r"^the\s+final\s+answer\s+is\b\s*:?", re.IGNORECASE)
# Minerva-style prompts end answers with "... $5$. I hope it is correct."
_HOPE = re.compile(r"\.?\s*I hope it is correct\.?\s*$", re.IGNORECASE)
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_CODE_FENCE = re.compile(r"```[^\n`]*\n(.*?)```", re.DOTALL)
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_OPTION_PREFIX = re.compile(r"^(?:option|choice)\s+", re.IGNORECASE)
_LETTER_IN_PARENS = re.compile(r"^\(([A-Za-z])\)")
_LETTER_LEADING = re.compile(r"^([A-Z])(?:[.:),]|\s*$)")
_LETTER_ONLY = re.compile(r"^\(?([A-Z])\)?\.?$")
_ANSWER_IS = re.compile(
    r"\b(?:answer|option|choice)\s+(?:is|would\s+be|should\s+be)\s*:?\s*(?P<rest>[^\n]*)", re.IGNORECASE
)


def split_reasoning(
    completion: str, reasoning: str | None, think_open: str, think_close: str
) -> tuple[str, str, list[str]]:
    """Return (reasoning, answer, flags) for one completion.

    A server-separated ``reasoning`` is trusted over tags: the server's parser saw the special tokens.
    An empty one says nothing (the completion may still carry tags). When the completion repeats the
    reasoning before the answer (reference traces, re-parsed traces), that repeat is not the answer.
    """
    completion = completion or ""
    if reasoning is not None and reasoning.strip():
        answer = _strip_tags(completion, think_open, think_close).strip()
        given = reasoning.strip()
        if answer.startswith(given):
            answer = answer[len(given):].strip()
        return given, answer, []
    if not completion.strip():
        return "", "", ["empty_completion"]

    opened, closed = completion.find(think_open), completion.find(think_close)
    if opened >= 0 and (closed < 0 or closed > opened):
        preamble = completion[:opened].strip()
        inside_start = opened + len(think_open)
        closed = completion.find(think_close, inside_start)
        if closed < 0:
            return _join(preamble, completion[inside_start:].strip()), "", ["unclosed_reasoning"]
        inside = completion[inside_start:closed].strip()
        answer = _strip_tags(completion[closed + len(think_close):], think_open, think_close).strip()
        return _join(preamble, inside), answer, []
    if closed >= 0:  # the open tag was in the prompt: the completion starts inside the block
        before = _strip_tags(completion[:closed], think_open, think_close).strip()
        answer = _strip_tags(completion[closed + len(think_close):], think_open, think_close).strip()
        return before, answer, []

    start = _final_statement_start(completion)
    if start is None:
        return completion.strip(), "", ["no_reasoning_tags"]
    return completion[:start].strip(), completion[start:].strip(), ["no_reasoning_tags"]


def _strip_tags(text: str, think_open: str, think_close: str) -> str:
    return text.replace(think_open, "").replace(think_close, "")


def _join(*parts: str) -> str:
    return "\n\n".join(p for p in parts if p)


def _final_statement_start(text: str) -> int | None:
    """Where the paragraph holding the last answer statement starts (its line, in a one-block text).

    Splitting at a paragraph keeps the sentence that states the answer whole in the answer part.
    """
    positions = [m.start() for m in _BOXED.finditer(text)][-1:]
    positions += [m.start() for m in _ANSWER_LINE.finditer(text)][-1:]
    positions += [m.start() for m in _ANSWER_IS_INLINE.finditer(text) if _clean(m.group("rest"))][-1:]
    if not positions:
        return None
    position = max(positions)
    breaks = [m.end() for m in _PARAGRAPH_BREAK.finditer(text)]
    if breaks:
        return max((b for b in breaks if b <= position), default=0)
    return text.rfind("\n", 0, position) + 1


def extract_final_answer(text: str, answer_type: str | None, choices: list[str] | None) -> str | None:
    """The answer a checker compares, or None when the text states none.

    The statement that comes last wins, boxed or "Answer:" line alike: models revise, and an answer
    line holding a box yields the box. A choice answer is always one capital letter (A = choices[0]),
    so checkers compare letters whatever form the model wrote it in.
    """
    if not text or not text.strip():
        return None
    if answer_type == "code":
        return _last_code_block(text)
    if answer_type == "choice":
        return _choice_letter(text, choices)
    return _stated_answer(text)


def _stated_answer(text: str) -> str | None:
    candidates: list[tuple[int, str | None]] = []
    boxes = list(_BOXED.finditer(text))
    if boxes:
        candidates.append((boxes[-1].start(), _boxed_content(text, boxes[-1].end())))
    lines = list(_ANSWER_LINE.finditer(text))
    if lines:
        line = lines[-1]
        rest = line.group("rest")
        if not _clean(rest):  # "**Answer:**" alone on its line: the answer is on the next one
            following = [x for x in text[line.end():].splitlines() if x.strip()]
            rest = following[0] if following else ""
        candidates.append((line.start(), _clean(rest) or None))
    inline = [m for m in _ANSWER_IS_INLINE.finditer(text) if _clean(m.group("rest"))]
    if inline and not _BOXED.search(inline[-1].group("rest")):
        candidates.append((inline[-1].start(), _clean(inline[-1].group("rest"))))
    if not candidates:
        return None
    return max(candidates, key=lambda c: c[0])[1]


def _boxed_content(text: str, after: int) -> str | None:
    """Content of the box whose command ends at ``after``; None when it is empty or never closed.

    A truncated last box is not an answer, and an earlier box was likely an intermediate result.
    """
    i = after
    while i < len(text) and text[i] in " \t":
        i += 1
    if i >= len(text):
        return None
    if text[i] != "{":
        if i == after:
            return None
        token = re.match(r"[^\s$]+", text[i:])
        return (token.group(0).rstrip(".,") or None) if token else None
    depth, j = 0, i
    while j < len(text):
        char = text[j]
        if char == "\\":
            j += 2  # an escaped character, \{ and \} included, never opens or closes the box
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j].strip() or None
        j += 1
    return None


def _clean(rest: str) -> str:
    """An answer line's text without the decoration around the answer itself."""
    text = _HOPE.sub("", rest.strip())
    text = _FINAL_ANSWER_IS.sub("", text.strip())
    previous = None
    while text != previous:
        previous = text
        text = text.strip().rstrip(".").strip().removeprefix("**").removesuffix("**")
        for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
            if len(text) >= len(left) + len(right) and text.startswith(left) and text.endswith(right):
                text = text[len(left):-len(right)]
                break
    return text


def _choice_letter(text: str, choices: list[str] | None) -> str | None:
    stated = _stated_answer(text)
    if stated is not None and (letter := _letter(stated, choices, strict=False)):
        return letter
    phrases = list(_ANSWER_IS.finditer(text))
    if phrases and (letter := _letter(phrases[-1].group("rest"), choices, strict=False)):
        return letter
    lines = [x for x in text.splitlines() if x.strip()]
    if lines:
        return _letter(lines[-1], choices, strict=True)
    return None


def _letter(candidate: str, choices: list[str] | None, *, strict: bool) -> str | None:
    """A letter in range, or the letter of the one option whose text the candidate names.

    ``strict`` is for a bare final line: only a lone letter counts there, since "A. 12" at the end
    may be the model listing options again.
    """
    text = _TEXT_WRAPPER.sub(r"\1", _clean(candidate))
    text = _OPTION_PREFIX.sub("", _clean(text))
    if strict:
        match = _LETTER_ONLY.match(text)
    else:
        match = _LETTER_IN_PARENS.match(text) or _LETTER_LEADING.match(text)
    if match:
        letter = match.group(1).upper()
        limit = len(choices) if choices else 26
        return letter if ord(letter) - ord("A") < limit else None
    if choices:
        named = [i for i, option in enumerate(choices) if _norm(option) == _norm(text)]
        if len(named) == 1:
            return chr(ord("A") + named[0])
    return None


def _norm(text: str) -> str:
    return " ".join(_clean(text).casefold().split())


def _last_code_block(text: str) -> str | None:
    blocks = _CODE_FENCE.findall(text)
    if not blocks:
        return None
    code = blocks[-1].lstrip("\n").rstrip()
    return code or None


def _detail(flag: str, row: dict[str, Any], config: ParseConfig) -> str:
    if flag == "truncated":
        tokens = row.get("completion_tokens")
        return "finish_reason=length" + ("" if tokens is None else f" after {tokens} completion tokens")
    if flag == "empty_answer":
        return "no final answer found in the answer text"
    if flag == "unclosed_reasoning":
        return f"{config.think_open} was opened but never closed"
    return "the completion is empty"


def read_completion(completion: str, reasoning: str | None, answer_type: str | None,
                    choices: list[str] | None, finish_reason: str | None, think_open: str = "<think>",
                    think_close: str = "</think>", fallback: str | None = None,
                    ) -> tuple[str, str, str | None, list[str]]:
    """(reasoning, answer, final answer, flags) of one completion: what parse does to every trace,
    and what rewrite does to every rewrite. ``fallback`` is a final answer the row already had."""
    reasoning, answer, flags = split_reasoning(completion, reasoning, think_open, think_close)
    final = extract_final_answer(answer, answer_type, choices)
    if final is None and "no_reasoning_tags" in flags:
        final = extract_final_answer(completion, answer_type, choices)
    if final is None and isinstance(fallback, str) and fallback.strip():
        final = fallback.strip()
    if finish_reason == "length":
        flags.append("truncated")
    if final is None:
        flags.append("empty_answer")
    return reasoning, answer, final, flags


def parse(batch: pa.Table, config: ParseConfig, ctx: Context, problems: pa.Table) -> Result:
    """Parse every trace of a batch; ``problems`` gives each trace's answer type and choices.

    Extraction reads the answer part first. Only a trace without tags falls back to the whole
    completion: there the split is a guess, while after ``</think>`` (or a server's split) the
    reasoning holds drafts and a trace that never answered must not borrow one. An extracted answer
    replaces the row's ``final_answer``; one already there (ingested traces) is kept when none is found.
    A completion that is empty while the row carries an answer (ingested pre-split traces) is parsed
    from that answer and the row's reasoning.
    """
    lookup = _problem_lookup(problems)
    rows = batch.to_pylist()
    for row in rows:
        completion = row.get("completion") or ""
        if not completion.strip() and (row.get("answer") or "").strip():
            completion = row["answer"]
        answer_type, choices = lookup.get(row.get("problem_id"), (None, None))
        reasoning, answer, final, flags = read_completion(
            completion, row.get("reasoning"), answer_type, choices, row.get("finish_reason"),
            config.think_open, config.think_close, fallback=row.get("final_answer"))
        row.update(reasoning=reasoning, answer=answer, final_answer=final,
                   flags=sorted({*(row.get("flags") or []), *flags}))
    if rows:
        count = ctx.tokenizer.count
        reasoning_tokens = count([r["reasoning"] for r in rows])
        answer_tokens = count([r["answer"] for r in rows])
        for row, nr, na in zip(rows, reasoning_tokens, answer_tokens, strict=True):
            row["reasoning_tokens"], row["answer_tokens"] = nr, na

    kept, rejected = [], []
    for row in rows:
        reason = next((flag for flag in config.reject if flag in row["flags"]), None)
        if reason is None:
            kept.append(row)
        else:
            rejected.append({"table": "traces", "reason": reason, "detail": _detail(reason, row, config),
                             "problem_id": row.get("problem_id"), "trace_id": row.get("trace_id"),
                             "row": row})
    return Result(pa.Table.from_pylist(kept, schema=batch.schema), rejected_table(rejected))


def _problem_lookup(problems: pa.Table) -> dict[str, tuple[str | None, list[str] | None]]:
    names = set(problems.column_names)
    if "problem_id" not in names:
        return {}
    ids = problems.column("problem_id").to_pylist()
    types = problems.column("answer_type").to_pylist() if "answer_type" in names else [None] * len(ids)
    options = problems.column("choices").to_pylist() if "choices" in names else [None] * len(ids)
    return {pid: (t, c) for pid, t, c in zip(ids, types, options, strict=True)}
