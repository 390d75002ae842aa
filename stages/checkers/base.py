"""The checker interface: does a trace's final answer match the reference, and how sure are we.

A checker takes a list of ``CheckItem`` (one per trace) and returns one ``Check`` per item, in
order. Lists, not single items: checkers batch their expensive work (math-verify in a child
process, code in sandboxes) and memoise repeated answers, since many samples of one problem give
the same answer string. A checker never raises on bad input: a parse failure, a timeout or a
crash is a ``Check`` with verdict ``error`` and a reason, so one bad trace never stops a run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Verdict = Literal["pass", "fail", "judged_pass", "judged_fail", "pseudo_pass", "error"]


@dataclass(frozen=True)
class CheckItem:
    prediction: str | None  # the trace's extracted final answer (code: the program)
    gold: str | None  # the reference answer (code: None; tests say what is right)
    choices: tuple[str, ...] | None = None  # options of a multiple-choice problem, A first
    tests: str | None = None  # code tests as JSON (see stages.checkers.code_sandbox)
    trace: Mapping[str, Any] | None = None  # the whole trace row, for the format checker
    question: str | None = None  # for the judge


@dataclass(frozen=True)
class Check:
    verdict: Verdict
    score: float  # in [0, 1]; code: fraction of tests passed; else 1.0 pass, 0.0 fail or error
    reason: str | None = None  # why not pass (or what the judge said); short, for people
    details: Mapping[str, Any] = field(default_factory=dict)  # e.g. per-test results; JSON-able


class Checker(Protocol):
    name: str
    version: str

    def check(self, items: Sequence[CheckItem]) -> list[Check]: ...

    def close(self) -> None:
        """Release child processes or backends; the checker may not be used afterwards."""
