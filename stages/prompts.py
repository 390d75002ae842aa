"""Prompt templates in recipes: their fields are checked when the recipe loads, not mid-run."""

from __future__ import annotations

import string
from collections.abc import Set


def check_template(template: str, known: Set[str], required: Set[str] = frozenset(),
                   what: str = "template") -> str:
    """Return the template if it uses only ``known`` fields and all ``required`` ones; else say why."""
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as e:
        raise ValueError(f"{what}: not a valid template ({e}); write literal braces as {{{{ and }}}}") \
            from None
    unknown = names - set(known)
    if unknown:
        raise ValueError(f"{what}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
    missing = set(required) - names
    if missing:
        raise ValueError(f"{what}: must contain {', '.join('{' + m + '}' for m in sorted(missing))}")
    return template


def lettered(choices: list[str] | None) -> str:
    """Options as "A. ...", one a line: the letters checkers and parse read back."""
    return "\n".join(f"{chr(65 + i)}. {c}" for i, c in enumerate(choices or []))


def question_text(problem: dict) -> str:
    """The question as a teacher sees it: a choice problem's options follow it."""
    options = lettered(problem.get("choices"))
    return f"{problem['question']}\n\n{options}" if options else problem["question"]


def chat(system: str | None, user: str) -> tuple[dict[str, str], ...]:
    return (*(() if system is None else ({"role": "system", "content": system},)),
            {"role": "user", "content": user})
