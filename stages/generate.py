"""The generate stage: n samples per problem from each teacher, and no completion paid for twice.

Every sample goes through the request cache (``stages.request_cache``): before asking a teacher,
the stage looks up each (teacher, prompt, sampling, index) key, sends only what is missing, and
stores each completion the moment it arrives. A re-run, a resumed run, or a run whose budget was
raised sends only the requests it lacks.

Budget: a teacher may spend at most ``budget`` completion tokens on the stage. Problems are taken in
input order; a problem starts only while the tokens of the problems before it are under the
budget, and the rest are rejected as ``budget_exhausted``. The cut depends only on token counts in
order, never on timing, so the output is the same however many requests were in flight. With
``--shard i/N`` each shard applies the budget to its own slice.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

import pyarrow as pa
from pydantic import Field, field_validator, model_validator
from tqdm.auto import tqdm

from schemas.ids import canonical_json, digest, trace_id
from schemas.tables import TRACES
from schemas.validate import rejected_table
from stages.contract import Context, Inputs, Output, StageConfig
from stages.io import iter_rows, parquet_rows, shard_range
from stages.prompts import chat, check_template, lettered, question_text
from stages.request_cache import RequestCache, request_key
from stages.teachers import describe, open_backend
from stages.teachers.base import Backend, Completion, Message, Request, TeacherConfig, TeacherInfo

DEFAULT_TEMPLATE = "{question}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."
TEMPLATE_FIELDS = {"question", "choices"}


class GenerateConfig(StageConfig):
    teachers: list[Annotated[TeacherConfig, Field(discriminator="backend")]] = Field(
        min_length=1, description="each samples every problem; see stages.teachers.base for options")
    system_prompt: str | None = Field(None, description="sent as the system message when set")
    prompt_template: str = Field(
        DEFAULT_TEMPLATE, description="the user message; fields {question} and {choices} (lettered "
        "options; appended after the question when the template has no {choices} and the problem has "
        "options)")
    problems_per_part: int = Field(64, gt=0, description="problems per output part")

    @field_validator("prompt_template")
    @classmethod
    def _known_fields(cls, template: str) -> str:
        return check_template(template, TEMPLATE_FIELDS)

    @model_validator(mode="after")
    def _unique_names(self) -> GenerateConfig:
        names = [t.name for t in self.teachers]
        if len(set(names)) != len(names):
            raise ValueError(f"teacher names must be unique (got {names})")
        return self


def requirements(config: GenerateConfig) -> tuple[tuple[str, str], ...]:
    from stages.teachers import requirements as backend_requirements

    return tuple(dict.fromkeys(r for t in config.teachers for r in backend_requirements(t)))


def render_messages(problem: dict[str, Any], config: GenerateConfig) -> tuple[Message, ...]:
    placed = "{choices}" in config.prompt_template  # else the options follow the question
    question = problem["question"] if placed else question_text(problem)
    user = config.prompt_template.format(question=question, choices=lettered(problem.get("choices")))
    return chat(config.system_prompt, user)


@dataclass
class _Teacher:
    """One teacher's state across the stage: who it is, what it spent, its backend once started."""

    config: TeacherConfig
    info: TeacherInfo
    sampling: dict[str, Any]
    key: str  # the teacher part of trace ids
    template_hash: str
    backend: Backend | None = None
    spent: int = 0  # completion tokens of the problems kept so far, cached or new
    stats: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ["samples", "cached_samples", "generated_samples", "generated_tokens", "completion_tokens",
         "prompt_tokens", "budget_exhausted_problems"], 0))


def generate(inputs: Inputs, config: GenerateConfig, ctx: Context, out: Output) -> None:
    files = inputs["problems"]
    start, stop = shard_range(parquet_rows(files), ctx.shard)
    cache = RequestCache(ctx.request_cache)
    known = cache.keys()
    template_hash = digest(config.system_prompt, config.prompt_template, length=16)
    teachers = []
    for tc in config.teachers:
        info, sampling = describe(tc), tc.output_params(ctx.seed)
        key = digest("teacher", info.backend, info.model, info.revision, sampling, template_hash, length=16)
        teachers.append(_Teacher(tc, info, sampling, key, template_hash))
    bar = tqdm(total=(stop - start) * sum(t.config.samples for t in teachers), unit="sample",
               desc=f"{ctx.stage} (teacher samples)", leave=False, disable=None)
    try:
        for chunk in iter_rows(files, config.problems_per_part, start, stop):
            problems = chunk.to_pylist()
            rows: dict[str, list[dict]] = {p["problem_id"]: [] for p in problems}
            rejected: list[dict] = []
            for t in teachers:
                kept = _complete(t, problems, config, cache, known, ctx, bar)
                for p, completions in zip(problems, kept, strict=False):
                    rows[p["problem_id"]].extend(_trace(p, t, i, c) for i, c in enumerate(completions))
                for p in problems[len(kept):]:
                    t.stats["budget_exhausted_problems"] += 1
                    rejected.append({
                        "table": "problems", "reason": "budget_exhausted", "problem_id": p["problem_id"],
                        "source": p["source"], "row": p,
                        "detail": f"teacher '{t.config.name}' spent {t.spent} of its budget of "
                                  f"{t.config.budget} completion tokens; raise it and re-run to continue"})
            traces = [r for p in problems for r in rows[p["problem_id"]]]
            out.write(pa.Table.from_pylist(traces, schema=TRACES))
            out.reject(rejected_table(rejected))
    finally:
        bar.close()
        for t in teachers:
            if t.backend is not None:
                t.stats.update({f"backend_{k}": v for k, v in _backend_stats(t.backend).items()})
                t.backend.close()
    out.stats({"teachers": {t.config.name: {**t.stats, "budget": t.config.budget, "spent": t.spent,
                                            "backend": t.info.backend, "model": t.info.model}
                            for t in teachers}})


def _complete(t: _Teacher, problems: list[dict], config: GenerateConfig, cache: RequestCache,
              known: set[str], ctx: Context, bar: tqdm) -> list[list[Completion]]:
    """The completions of the problems this teacher keeps, in order; those past its budget are cut."""
    requests = [Request(p["problem_id"], render_messages(p, config), tuple(range(t.config.samples)))
                for p in problems]
    keys = [[request_key(t.info, r.messages, t.sampling, i) for i in r.indices] for r in requests]
    have: dict[str, Completion] = {}
    for ks in keys:
        for k in ks:
            if k in known and (c := cache.get(k)) is not None:
                have[k] = c
    cached = set(have)
    budget = t.config.budget
    while True:
        spent, j = t.spent, 0
        while j < len(problems) and (budget is None or spent < budget) and all(k in have for k in keys[j]):
            spent += sum(_tokens(have[k], ctx) for k in keys[j])
            j += 1
        if j == len(problems) or (budget is not None and spent >= budget):
            break
        before = len(have)
        _fetch(t, requests[j:], keys[j:], have, spent, cache, known, ctx, bar)
        if len(have) == before:
            raise RuntimeError(f"teacher '{t.config.name}' returned no sample for problem "
                               f"{requests[j].id}; the backend dropped a request")
    t.spent = spent
    kept = [[have[k] for k in ks] for ks in keys[:j]]
    for ks in keys[:j]:
        for k in ks:
            c = have[k]
            t.stats["samples"] += 1
            t.stats["cached_samples"] += k in cached
            t.stats["completion_tokens"] += _tokens(c, ctx)
            t.stats["prompt_tokens"] += c.prompt_tokens or 0
    bar.update(sum(len(ks) for ks in keys[:j]))
    return kept


def _fetch(t: _Teacher, requests: list[Request], keys: list[list[str]], have: dict[str, Completion],
           spent: int, cache: RequestCache, known: set[str], ctx: Context, bar: tqdm) -> None:
    """Ask the teacher for the missing samples, in order, and stop feeding it once the budget is spent."""
    budget = t.config.budget
    running = [spent]  # completion tokens of everything before the next request, as far as known
    about_of = {r.id: (ks, r) for r, ks in zip(requests, keys, strict=True)}

    def feed() -> Iterator[Request]:
        for r, ks in zip(requests, keys, strict=True):
            if budget is not None and running[0] >= budget:
                return
            missing = tuple(i for i, k in zip(r.indices, ks, strict=True) if k not in have)
            if missing:
                yield Request(r.id, r.messages, missing)
            else:
                running[0] += sum(_tokens(have[k], ctx) for k in ks)

    if t.backend is None:
        t.backend = open_backend(t.config, ctx.seed)
    for sample in t.backend.generate(feed()):
        ks, r = about_of[sample.request.id]
        key = ks[r.indices.index(sample.index)]
        cache.put(key, sample.completion, {"teacher": t.info.__dict__, "sampling": t.sampling,
                                           "index": sample.index, "problem_id": r.id})
        known.add(key)
        have[key] = sample.completion
        n = _tokens(sample.completion, ctx)
        running[0] += n
        t.stats["generated_samples"] += 1
        t.stats["generated_tokens"] += n
        bar.set_postfix_str(f"{t.config.name}: {t.stats['generated_tokens']} new tokens", refresh=False)


def _tokens(c: Completion, ctx: Context) -> int:
    """Completion tokens as the teacher counted them; our tokenizer where a server does not say."""
    if c.completion_tokens is not None:
        return c.completion_tokens
    return ctx.tokenizer.count([c.text + (c.reasoning or "")])[0] or 0


def _trace(problem: dict, t: _Teacher, index: int, c: Completion) -> dict[str, Any]:
    return {
        "trace_id": trace_id(problem["problem_id"], t.key, index),
        "problem_id": problem["problem_id"],
        "parent_trace_id": None,
        "variant": "original",
        "sample_index": index,
        "teacher": {"backend": t.info.backend, "model": t.info.model, "revision": t.info.revision,
                    "sampling_params": canonical_json(t.sampling), "seed": t.sampling["seed"] + index,
                    "prompt_template_hash": t.template_hash},
        "completion": c.text,
        "reasoning": c.reasoning,
        "finish_reason": c.finish_reason,
        "flags": [],
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
    }


def _backend_stats(backend: Backend) -> dict[str, int]:
    stats = getattr(backend, "stats", None) or {}
    return {k: v for k, v in stats.items() if isinstance(v, int)}
