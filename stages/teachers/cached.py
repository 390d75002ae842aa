"""A teacher behind the request cache, for stages that ask a model questions (difficulty, rewrite,
judge): ask for (request, index) pairs, get completions; only the misses reach the backend, and
each answer is stored the moment it arrives, so a killed run resumes without paying twice.

The generate stage keeps its own loop because of its budget cut; everything else uses this.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from pydantic import AfterValidator, Field

from stages.request_cache import RequestCache, request_key
from stages.teachers import describe, open_backend
from stages.teachers.base import Backend, Completion, Request, TeacherConfig


def one_answer_teacher(config: TeacherConfig) -> TeacherConfig:
    """A teacher asked questions (judge, difficulty, rewrite) gives one answer each: ``samples`` and
    ``budget`` are generation settings, refused here rather than silently ignored."""
    if config.samples != 1 or config.budget is not None:
        raise ValueError(f"teacher '{config.name}': samples and budget are generate's settings; "
                         "this stage asks one answer per question")
    return config


# the teacher field of stages that ask questions: any backend, one answer per question
OneAnswerTeacher = Annotated[TeacherConfig, Field(discriminator="backend"),
                             AfterValidator(one_answer_teacher)]


class CachedTeacher:
    def __init__(self, config: TeacherConfig, request_cache: str, seed: int, purpose: str):
        self.config, self.seed, self.purpose = one_answer_teacher(config), seed, purpose
        self.cache = RequestCache(request_cache)
        self.info = describe(config)
        self.sampling = config.output_params(seed)
        self.backend: Backend | None = None
        self.stats = {"requests": 0, "cached": 0, "generated": 0, "generated_tokens": 0}

    def key(self, request: Request, index: int) -> str:
        return request_key(self.info, request.messages, self.sampling, index, request.choices)

    def complete(self, requests: Sequence[Request]) -> dict[tuple[str, int], Completion]:
        """Completions by (request id, index); request ids must be unique within the call."""
        found: dict[tuple[str, int], Completion] = {}
        missing: list[Request] = []
        for r in requests:
            wanted = []
            for i in r.indices:
                self.stats["requests"] += 1
                if (c := self.cache.get(self.key(r, i))) is not None:
                    found[(r.id, i)] = c
                    self.stats["cached"] += 1
                else:
                    wanted.append(i)
            if wanted:
                missing.append(Request(r.id, r.messages, tuple(wanted), r.choices))
        if missing:
            if self.backend is None:
                self.backend = open_backend(self.config, self.seed)
            for sample in self.backend.generate(missing):
                r = sample.request
                self.cache.put(self.key(r, sample.index), sample.completion,
                               {"teacher": self.info.__dict__, "sampling": self.sampling,
                                "index": sample.index, "purpose": self.purpose})
                found[(r.id, sample.index)] = sample.completion
                self.stats["generated"] += 1
                self.stats["generated_tokens"] += sample.completion.completion_tokens or 0
        absent = [(r.id, i) for r in requests for i in r.indices if (r.id, i) not in found]
        if absent:
            raise RuntimeError(f"teacher '{self.config.name}' returned no answer for {absent[:3]}")
        return found

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None
