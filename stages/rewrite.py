"""The rewrite stage: difficulty-aware concise rewriting of verified traces ("Concise Reasoning, Big Gains").

A long correct trace teaches a student to ramble; a trace rewritten to a structure and token budget
that fit the problem's difficulty teaches it to reason as much as the problem needs. For each verified
original trace a teacher rewrites the reasoning with the template of the problem's ``difficulty``
level (easy: short analysis, approach, summary; medium: adds reflection and improvement; hard:
sub-problems, each reflected on, then integration), under that level's budget of reasoning tokens.

A rewrite is only worth keeping if it is still right and really shorter, so it must:

- state a final answer (else ``no_final_answer``);
- fit the budget times ``tolerance``; an over-long rewrite gets one retry with a stricter prompt,
  and is ``over_budget`` if still too long;
- pass the checker the problem's ``answer_type`` routes to, against the reference answer (or the
  original's final answer where there is none); else ``answer_changed``.

Rejected attempts go to ``rejected`` naming their parent; the original always has output (itself or
the rewrite that replaces it), so the runner's per-parent accounting holds. Every model call goes
through ``CachedTeacher``: a re-run sends nothing it already paid for.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, field_validator, model_validator

from schemas.ids import canonical_json, digest
from schemas.tables import TRACES
from schemas.validate import rejected_table
from stages.checkers import get_checker
from stages.checkers.base import Check, CheckItem
from stages.contract import Context, Inputs, Output, StageConfig
from stages.io import iter_rows, parquet_rows, shard_range
from stages.parse import read_completion
from stages.prompts import check_template, question_text
from stages.teachers.base import Completion, Request
from stages.teachers.cached import CachedTeacher, OneAnswerTeacher
from stages.verify import VerifyConfig, is_verified

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
TEMPLATE_FIELDS = {"question", "reasoning", "reference", "budget"}

_INTRO = ("Rewrite the reasoning below so that it is concise and well structured. Keep every step "
          "needed to reach the answer; drop repetition, dead ends and side remarks.\n\n"
          "Problem:\n{question}\n\nOriginal reasoning:\n{reasoning}\n\n{reference}")
_OUTRO = ("Use at most {budget} tokens of reasoning. Write the rewritten reasoning inside "
          "<think>...</think>, then give the final answer as \\boxed{{...}}.")

DEFAULT_TEMPLATES: dict[str, str] = {
    "easy": _INTRO + "Structure the reasoning as:\n"
    "1. Analysis: what is asked, in a sentence or two.\n"
    "2. Approach: the direct computation.\n"
    "3. Summary: the result.\n\n" + _OUTRO,
    "medium": _INTRO + "Structure the reasoning as:\n"
    "1. Analysis: what is asked and what is given.\n"
    "2. Approach: the method and its key steps.\n"
    "3. Reflection: check the steps for mistakes.\n"
    "4. Improvement: fix or simplify what the reflection found.\n"
    "5. Summary: the result.\n\n" + _OUTRO,
    "hard": _INTRO + "Structure the reasoning as:\n"
    "1. Decomposition: split the problem into sub-problems.\n"
    "2. For each sub-problem: Approach, then Reflection (check it), then Improvement (fix or simplify).\n"
    "3. Integration: combine the sub-problems' results.\n"
    "4. Summary: the result.\n\n" + _OUTRO,
}
DEFAULT_BUDGETS = {"easy": 256, "medium": 512, "hard": 1024}
STRICT_SUFFIX = ("Your previous rewrite was too long. Stay under {budget} tokens: cut repetition and "
                 "side remarks.")
REFERENCE_SENTENCE = "The reference answer is {answer}; the rewrite must reach this same final answer.\n\n"
Reason = Literal["no_final_answer", "over_budget", "answer_changed", "not_shorter"]


class RewriteConfig(StageConfig):
    teacher: OneAnswerTeacher = Field(
        description="the model that rewrites; see stages.teachers.base for options")
    budgets: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_BUDGETS),
        description="reasoning tokens per difficulty level (default easy 256, medium 512, hard 1024: "
        "about what a clean solution of each level needs); a level missing here uses default_level's")
    default_level: str = Field("medium", description="for problems without a difficulty or with an "
                               "unknown level")
    templates: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_TEMPLATES),
        description="user prompt per level; fields {question}, {reasoning}, {reference}, {budget}; "
        "a level missing here uses default_level's")
    include_reference: bool = Field(True, description="tell the teacher the reference answer")
    tolerance: float = Field(1.15, ge=1, description="a rewrite over budget x tolerance reasoning tokens "
                             "is over budget")
    strict_suffix: str = Field(STRICT_SUFFIX, description="appended to the prompt for the one retry of an "
                               "over-budget rewrite; field {budget}")
    keep: Literal["shortest", "both"] = Field(
        "shortest", description="shortest: the kept rewrite replaces its original when it has fewer "
        "reasoning tokens; both: output the original and the kept rewrite")
    checkers: VerifyConfig = Field(default_factory=lambda: VerifyConfig(require_format=False),
                                   description="routing and checker settings for re-verification")
    traces_per_part: int = Field(256, gt=0, description="traces per output part")

    @field_validator("budgets")
    @classmethod
    def _positive(cls, budgets: dict[str, int]) -> dict[str, int]:
        bad = {k: v for k, v in budgets.items() if v <= 0}
        if bad:
            raise ValueError(f"budgets must be positive token counts (got {bad})")
        return budgets

    @field_validator("templates")
    @classmethod
    def _known_fields(cls, templates: dict[str, str]) -> dict[str, str]:
        for level, template in templates.items():
            check_template(template, TEMPLATE_FIELDS, what=f"template '{level}'")
        return templates

    @field_validator("strict_suffix")
    @classmethod
    def _suffix_fields(cls, suffix: str) -> str:
        return check_template(suffix, {"budget"}, what="strict_suffix")

    @model_validator(mode="after")
    def _default_level_defined(self) -> RewriteConfig:
        for name, table in (("budgets", self.budgets), ("templates", self.templates)):
            if self.default_level not in table:
                raise ValueError(f"default_level '{self.default_level}' has no entry in {name} "
                                 f"(levels: {sorted(table)})")
        return self

    def level(self, difficulty: str | None) -> str:
        """The level a problem is rewritten at: its difficulty if the config knows it."""
        known = set(self.budgets) | set(self.templates)
        return difficulty if difficulty in known else self.default_level

    def budget(self, level: str) -> int:
        return self.budgets.get(level, self.budgets[self.default_level])

    def template(self, level: str) -> str:
        return self.templates.get(level, self.templates[self.default_level])


def requirements(config: RewriteConfig) -> tuple[tuple[str, str], ...]:
    from stages.teachers import requirements as backend_requirements

    return backend_requirements(config.teacher)


def template_hash(template: str) -> str:
    """Names a template in ids and provenance: a changed template is a different rewrite."""
    return digest("rewrite-template", template, length=16)


def build_prompt(config: RewriteConfig, level: str, question: str, reasoning: str, reference: str | None,
                 *, strict: bool = False) -> str:
    """The user message for one rewrite; ``strict`` appends the retry's warning."""
    budget = config.budget(level)
    sentence = REFERENCE_SENTENCE.format(answer=reference) if config.include_reference and reference else ""
    prompt = config.template(level).format(question=question, reasoning=reasoning, reference=sentence,
                                           budget=budget)
    if strict:
        prompt += "\n\n" + config.strict_suffix.format(budget=budget)
    return prompt


def over_budget(tokens: int | None, budget: int, tolerance: float) -> bool:
    """Over budget past the tolerance, which forgives tokenizer differences between us and the teacher.

    The limit is rounded so that float error never moves the boundary (100 x 1.15 is 114.999...).
    """
    return tokens is not None and tokens > round(budget * tolerance, 9)


def choose(keep: str, original: dict[str, Any], rewrite: dict[str, Any] | None,
           original_tokens: int | None = None) -> list[dict[str, Any]]:
    """The rows output for one original: the point is shorter traces, so "shortest" replaces the
    original only with a rewrite that really is shorter. ``original_tokens`` overrides the row's count."""
    if rewrite is None:
        return [original]
    if keep == "both":
        return [original, rewrite]
    before = original.get("reasoning_tokens") if original_tokens is None else original_tokens
    after = rewrite.get("reasoning_tokens")
    if before is None or (after is not None and after < before):
        return [rewrite]
    return [original]


@dataclass
class _Attempt:
    """One original's rewrite across both rounds."""

    row: dict[str, Any]
    problem: dict[str, Any]
    level: str
    budget: int
    template_hash: str
    rewrite_id: str
    original_tokens: int
    index: int = 0
    completion: Completion | None = None
    parsed: dict[str, Any] = field(default_factory=dict)


def _read_problems(files: list[str]) -> dict[str, dict[str, Any]]:
    """Problems by id. All of them in memory: fine at today's sizes; a join by part would scale further."""
    wanted = ["problem_id", "question", "answer", "answer_type", "choices", "tests", "difficulty"]
    by_id: dict[str, dict[str, Any]] = {}
    for path in files:
        present = set(pq.read_schema(path).names)
        table = pq.read_table(path, columns=[c for c in wanted if c in present])
        for p in table.to_pylist():
            by_id[p["problem_id"]] = {c: p.get(c) for c in wanted}
    return by_id


def _schema(schema: pa.Schema) -> pa.Schema:
    """The input's schema, with the TRACES columns a rewrite fills added where the input lacks them."""
    for f in TRACES:
        if schema.get_field_index(f.name) < 0:
            schema = schema.append(f)
    return schema


def rewrite(inputs: Inputs, config: RewriteConfig, ctx: Context, out: Output) -> None:
    files = inputs["traces"]
    start, stop = shard_range(parquet_rows(files), ctx.shard)
    problems = _read_problems(inputs["problems"])
    teacher = CachedTeacher(config.teacher, ctx.request_cache, ctx.seed, purpose="rewrite")
    levels: dict[str, dict[str, Any]] = {}
    retried = 0
    try:
        for chunk in iter_rows(files, config.traces_per_part, start, stop):
            rows, rejected, n = _part(chunk, problems, config, ctx, teacher, levels)
            retried += n
            out.write(pa.Table.from_pylist(rows, schema=_schema(chunk.schema)))
            out.reject(rejected_table(rejected))
    finally:
        teacher.close()
    for s in levels.values():  # counts only: shards' stats are summed, so shares are derived later
        s["rejected"] = dict(sorted(s["rejected"].items()))
    out.stats({"levels": dict(sorted(levels.items())), "retried": retried, "teacher": dict(teacher.stats)})


def _part(chunk: pa.Table, problems: dict[str, dict], config: RewriteConfig, ctx: Context,
          teacher: CachedTeacher, levels: dict[str, dict]) -> tuple[list[dict], list[dict], int]:
    """Rewrite one part's candidates: (output rows in input order, rejected rows, retries)."""
    rows = chunk.to_pylist()
    attempts: dict[int, _Attempt] = {}
    for i, row in enumerate(rows):
        problem = problems.get(row.get("problem_id"))
        # teacher samples and reference solutions alike; never a rewrite of a rewrite
        if row.get("verified") is not True or row.get("variant") == "concise" or problem is None \
                or problem.get("answer_type") == "code":
            continue  # not ours: unverified, a rewrite already, no problem to check against, or a program
        level = config.level(problem.get("difficulty"))
        thash = template_hash(config.template(level))
        tokens = row.get("reasoning_tokens")
        if tokens is None:
            tokens = ctx.tokenizer.count([row.get("reasoning") or ""])[0] or 0
        budget = config.budget(level)
        rewrite_id = digest("rewrite", row["trace_id"], thash, teacher.info.__dict__, teacher.sampling,
                            budget, config.include_reference, config.strict_suffix, length=32)
        attempts[i] = _Attempt(row, problem, level, budget, thash, rewrite_id, tokens)
    if not attempts:
        return rows, [], 0

    _round(list(attempts.values()), config, ctx, teacher, strict=False)
    again = [a for a in attempts.values()
             if over_budget(a.parsed["reasoning_tokens"], a.budget, config.tolerance)]
    if again:
        _round(again, config, ctx, teacher, strict=True)

    checks = _recheck([a for a in attempts.values() if a.parsed["final_answer"] is not None
                       and not over_budget(a.parsed["reasoning_tokens"], a.budget, config.tolerance)], config)
    output: list[dict] = []
    rejected: list[dict] = []
    written: dict[int, list[dict]] = {}
    for i, a in attempts.items():
        stats = levels.setdefault(a.level, {"attempted": 0, "kept": 0, "tokens_before": 0,
                                            "tokens_before_kept": 0, "tokens_after": 0,
                                            "rejected": Counter()})
        stats["attempted"] += 1
        stats["tokens_before"] += a.original_tokens
        row, reason, detail = _outcome(a, checks.get(id(a)), config, teacher)
        written[i] = choose(config.keep, a.row, row if reason is None else None, a.original_tokens)
        if reason is None and row not in written[i]:  # verified, but no shorter than the original
            reason, detail = "not_shorter", (f"{row['reasoning_tokens']} reasoning tokens, the original has "
                                             f"{a.original_tokens}")
        if reason is None:
            stats["kept"] += 1
            stats["tokens_before_kept"] += a.original_tokens
            stats["tokens_after"] += row["reasoning_tokens"]
        else:
            stats["rejected"][reason] += 1
            rejected.append({"table": "traces", "reason": reason, "detail": detail,
                             "problem_id": a.row.get("problem_id"), "trace_id": a.row["trace_id"],
                             "related_id": a.rewrite_id, "row": row})
    for i, row in enumerate(rows):
        output.extend(written.get(i, [row]))
    return output, rejected, len(again)


def _round(attempts: list[_Attempt], config: RewriteConfig, ctx: Context, teacher: CachedTeacher,
           *, strict: bool) -> None:
    """Ask for one rewrite of each attempt in one call (index 1, a new seed, for the retry), and parse it."""
    index = 1 if strict else 0
    requests = []
    for a in attempts:
        reference = a.problem.get("answer")
        prompt = build_prompt(config, a.level, question_text(a.problem), a.row.get("reasoning") or "",
                              reference, strict=strict)
        requests.append(Request(a.row["trace_id"], ({"role": "user", "content": prompt},), (index,)))
    found = teacher.complete(requests)
    for a in attempts:
        a.index, a.completion = index, found[(a.row["trace_id"], index)]
        reasoning, answer, final, flags = read_completion(
            a.completion.text, a.completion.reasoning, a.problem.get("answer_type"),
            a.problem.get("choices"), a.completion.finish_reason, THINK_OPEN, THINK_CLOSE)
        a.parsed = {"reasoning": reasoning, "answer": answer, "final_answer": final, "flags": sorted(flags)}
    counts = ctx.tokenizer.count([a.parsed["reasoning"] for a in attempts]
                                 + [a.parsed["answer"] for a in attempts])
    for a, nr, na in zip(attempts, counts[:len(attempts)], counts[len(attempts):], strict=True):
        a.parsed.update(reasoning_tokens=nr, answer_tokens=na)


def _gold(a: _Attempt) -> str | None:
    """The reference answer, or the original's answer: a rewrite must not change what was verified."""
    return a.problem.get("answer") if a.problem.get("answer") is not None else a.row.get("final_answer")


def _recheck(attempts: list[_Attempt], config: RewriteConfig) -> dict[int, tuple[Any, Check]]:
    """(checker, verdict) per attempt (by id), with the checker the problem's answer_type routes to."""
    routes: dict[str, list[_Attempt]] = {}
    for a in attempts:
        name = config.checkers.route.get(a.problem.get("answer_type") or "", config.checkers.default_checker)
        routes.setdefault(name, []).append(a)
    found: dict[int, tuple[Any, Check]] = {}
    for name, group in routes.items():
        checker = get_checker(name, getattr(config.checkers, name))
        items = [CheckItem(prediction=a.parsed["final_answer"], gold=_gold(a),
                           choices=tuple(a.problem["choices"]) if a.problem.get("choices") else None,
                           tests=a.problem.get("tests"), question=a.problem.get("question"))
                 for a in group]
        for a, check in zip(group, checker.check(items), strict=True):
            found[id(a)] = (checker, check)
    return found


def _outcome(a: _Attempt, checked: tuple[Any, Check] | None, config: RewriteConfig,
             teacher: CachedTeacher) -> tuple[dict[str, Any], Reason | None, str | None]:
    """The rewrite's row and why it is rejected (None: kept), in the order the reasons are documented."""
    c, p, info = a.completion, a.parsed, teacher.info
    row: dict[str, Any] = {
        "trace_id": a.rewrite_id, "problem_id": a.row.get("problem_id"), "parent_trace_id": a.row["trace_id"],
        "variant": "concise", "sample_index": a.row.get("sample_index"),
        "teacher": {"backend": info.backend, "model": info.model, "revision": info.revision,
                    "sampling_params": canonical_json(teacher.sampling),
                    "seed": teacher.sampling["seed"] + a.index, "prompt_template_hash": a.template_hash},
        "completion": c.text, "reasoning": p["reasoning"], "answer": p["answer"],
        "final_answer": p["final_answer"], "finish_reason": c.finish_reason, "flags": p["flags"],
        "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
        "reasoning_tokens": p["reasoning_tokens"], "answer_tokens": p["answer_tokens"],
        "rewrite": {"model": info.model, "template": a.template_hash, "difficulty": a.level,
                    "budget": a.budget},
        "checkers": list(a.row.get("checkers") or []),
        "verdict": None, "score": None, "verified": False, "check_reason": None, "check_details": None,
    }
    if p["final_answer"] is None:
        return row, "no_final_answer", "the rewrite states no final answer"
    if over_budget(p["reasoning_tokens"], a.budget, config.tolerance):
        return row, "over_budget", (f"{p['reasoning_tokens']} reasoning tokens vs a budget of {a.budget} "
                                    f"(x{config.tolerance} tolerance) after a retry")
    checker, check = checked
    row["checkers"].append({"name": checker.name, "version": checker.version, "verdict": check.verdict})
    row.update(verdict=check.verdict, score=float(check.score),
               check_details=canonical_json({"answer": {"checker": checker.name, "reason": check.reason,
                                                        **dict(check.details)}}))
    if not is_verified(check.verdict, check.score, checker.name, config.checkers):
        row["check_reason"] = check.reason or check.verdict
        return row, "answer_changed", (f"rewrite answered {p['final_answer']!r}, expected {_gold(a)!r}"
                                       + (f" ({check.reason})" if check.reason else ""))
    row.update(verified=True)
    return row, None, None
