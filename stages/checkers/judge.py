"""The judge: an LLM's word on answers the symbolic checkers cannot read, marked as judged.

Symbolic checkers fail on formatting as often as on substance ("one half", an answer in prose, a
box the extractor missed). Like open-r1's rescue of formatting-only failures, verify can send
those traces to a judge through any teacher backend. Its verdicts are ``judged_pass`` or
``judged_fail``, never ``pass``: a recipe decides with ``allow_judged`` whether they count.

Every judgement goes through the request cache, like generation: re-runs never ask twice. The
reply is parsed strictly: its last word must be EQUIVALENT or DIFFERENT; anything else is an
``error`` with the reply quoted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from stages.checkers.base import Check, CheckItem
from stages.contract import StageConfig
from stages.teachers.base import Completion, Request
from stages.teachers.cached import CachedTeacher, OneAnswerTeacher

PROMPT = """You are grading a student's final answer against the reference answer.

Question:
{question}

Reference answer: {gold}

End of the student's response:
{response}

Is the student's final answer equivalent to the reference answer? Ignore formatting, wording and \
units. Reply with one word: EQUIVALENT or DIFFERENT."""

_LAST_WORD = re.compile(r"([A-Za-z]+)\W*$")


class JudgeConfig(StageConfig):
    teacher: OneAnswerTeacher = Field(
        description="any teacher backend; use temperature 0 and a small max_tokens")
    prompt_template: str = Field(PROMPT, description="fields: {question}, {gold}, {response}")
    response_chars: int = Field(2000, gt=0, description="how much of the end of the response the judge sees")
    when: list[Literal["unparsable", "no_answer"]] = Field(
        default_factory=lambda: ["unparsable", "no_answer"],
        description="which failures go to the judge: the checker could not read the prediction, or "
        "parse found no final answer")


class JudgeChecker:
    name = "judge"
    version = "1"

    def __init__(self, config: JudgeConfig, request_cache: str, seed: int):
        self.config = config
        self.teacher = CachedTeacher(config.teacher, request_cache, seed, purpose="judge")
        self.stats = {"judged": 0, "unreadable": 0}

    def check(self, items: Sequence[CheckItem]) -> list[Check]:
        prompts = [self._messages(item) for item in items]
        requests: dict[str, Request] = {}
        for messages in prompts:  # identical prompts are one request
            text = messages[-1]["content"]
            requests.setdefault(text, Request(f"j{len(requests)}", messages, (0,)))
        replies = self.teacher.complete(list(requests.values()))
        return [self._verdict(replies[(requests[m[-1]["content"]].id, 0)]) for m in prompts]

    def _messages(self, item: CheckItem) -> tuple[dict[str, str], ...]:
        trace = item.trace or {}
        response = trace.get("answer") or trace.get("completion") or item.prediction or ""
        prompt = self.config.prompt_template.format(
            question=item.question or "", gold=item.gold or "",
            response=response[-self.config.response_chars:])
        return ({"role": "user", "content": prompt},)

    def _verdict(self, reply: Completion) -> Check:
        self.stats["judged"] += 1
        match = _LAST_WORD.search(reply.text.strip())
        word = match.group(1).upper() if match else ""
        details = {"judge_reply": reply.text[-300:], "judge_model": self.teacher.info.model}
        if word == "EQUIVALENT":
            return Check("judged_pass", 1.0, None, details)
        if word == "DIFFERENT":
            return Check("judged_fail", 0.0, "the judge found the answer different", details)
        self.stats["unreadable"] += 1
        return Check("error", 0.0, f"judge reply not understood: {reply.text[-80:]!r}", details)

    def close(self) -> None:
        self.teacher.close()
