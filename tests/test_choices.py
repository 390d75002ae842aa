"""Constrained replies: strict reading, and llama.cpp's grammar on the embedded model."""

from __future__ import annotations

import pytest

from stages.teachers.base import LlamaCppTeacher, Request, choice_grammar, read_choice

LEVELS = ("easy", "medium", "hard")


@pytest.mark.parametrize(("reply", "expected"), [
    ("hard", "hard"), (" Medium.\n", "medium"), ('"easy"', "easy"), ('{"answer": "hard"}', "hard"),
    ("very hard", None), ("easy or medium", None), ("", None), ('{"level": "hard"}', None),
    ("{not json", None), ("hardly", None), ('["hard"]', None),
])
def test_replies_are_read_strictly(reply: str, expected: str | None) -> None:
    assert read_choice(reply, LEVELS) == expected


def test_grammar_lists_exactly_the_choices() -> None:
    assert choice_grammar(("a", 'say "b"')) == 'root ::= "a" | "say \\"b\\""'


@pytest.mark.slow
def test_llamacpp_grammar_keeps_the_embedded_model_to_the_choices() -> None:
    from stages.teachers.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend(LlamaCppTeacher(name="judge", max_tokens=6, temperature=1.0), 0)
    prompts = ["How hard is 2 + 2?", "Rate: prove the Riemann hypothesis.", "Tell me a story."]
    requests = [Request(f"p{i}", ({"role": "user", "content": p},), (0, 1, 2), LEVELS)
                for i, p in enumerate(prompts)]
    replies = [s.completion.text for s in backend.generate(requests)]
    backend.close()
    assert len(replies) == 9 and all(read_choice(r, LEVELS) is not None for r in replies), replies
