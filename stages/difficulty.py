"""The difficulty stage: a level per problem, and a written reason for it on every row.

Two sources can say how hard a problem is, and neither is always there or always right:

- **empirical**: the pass rate the consistency stage measured over the teacher's own samples.
  It counts only when ``pass_rate`` is not null and ``n_samples >= min_samples`` (the columns are
  absent or null when problems come straight from ingest, and a rate over 2 samples is noise).
  ``pass_rate >= pass_rate_thresholds[0]`` -> ``levels[0]``, ``>= thresholds[1]`` -> ``levels[1]``,
  ..., below the last threshold -> the last (hardest) level. Boundaries belong to the easier level.
- **judged**: the teacher's answer to "how hard is this?", constrained to the levels (a grammar,
  guided decoding or a JSON-schema ``response_format``) and read strictly with ``read_choice``. A
  malformed reply is asked again with the next sample index, up to ``retries`` more times; after
  that the judgement is ``"unknown"``. Only asked when ``teacher`` is set.

The rule (``combine``) that picks ``difficulty`` from them:

- ``empirical_first`` (default): the empirical level if there is one, else the judged one if known.
  Measured behaviour beats an opinion, but an opinion beats nothing.
- ``judged_first``: the judged level if known, else the empirical one.
- ``harder``: the harder of the two available (the later in ``levels``): for curricula that would
  rather over- than under-estimate.
- neither available: ``fallback`` (default: the middle level).

``difficulty_rule`` spells out what happened, so users see why a problem got its level, e.g.
``"pass_rate 0.25 over 8 samples -> hard; judged medium; empirical_first -> hard"``,
``"no pass rate; judged easy -> easy"`` or
``"no pass rate; judgement unknown after 3 tries -> fallback medium"``.

Every judgement goes through the request cache (``CachedTeacher``): a re-run sends nothing, and
a retry is a new request (new index, new seed), cached like the first try. Rows in == rows out:
the stage only fills columns, it never rejects.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from schemas.tables import PROBLEMS
from stages.contract import Context, Inputs, Output, StageConfig
from stages.io import iter_rows, parquet_rows, shard_range
from stages.prompts import chat, check_template, question_text
from stages.teachers.base import Message, Request, read_choice
from stages.teachers.cached import CachedTeacher, OneAnswerTeacher

UNKNOWN = "unknown"
DEFAULT_TEMPLATE = (
    "How hard is the following problem for a strong student? Judge its difficulty; do not solve it.\n\n"
    "Problem:\n{question}\n\n"
    "Reply with exactly one word, one of: {levels}.")
TEMPLATE_FIELDS = {"question", "levels"}
Source = Literal["empirical", "judged", "fallback"]


class DifficultyConfig(StageConfig):
    teacher: OneAnswerTeacher | None = Field(
        None, description="judges each problem; None: pass rates only (see stages.teachers.base)")
    levels: list[str] = Field(["easy", "medium", "hard"], description="ordered easy -> hard; at least 2")
    prompt_template: str = Field(DEFAULT_TEMPLATE, description="the user message; fields {question} "
                                 "(with lettered options when the problem has them) and {levels}")
    system_prompt: str | None = Field(None, description="sent as the system message when set")
    retries: int = Field(2, ge=0, description="further tries after a malformed judgement, each with the "
                         "next sample index; then the judgement is 'unknown'")
    pass_rate_thresholds: list[float] = Field(
        [0.8, 0.4], description="len(levels) - 1 values, strictly descending: pass_rate >= t[0] -> "
        "levels[0], >= t[1] -> levels[1], ..., else the last level")
    min_samples: int = Field(4, gt=0, description="fewest samples for a pass rate to count")
    combine: Literal["empirical_first", "judged_first", "harder"] = Field(
        "empirical_first", description="how the empirical and the judged level make the difficulty")
    fallback: str | None = Field(None, description="level when neither source gives one "
                                 "(default: the middle level)")
    problems_per_part: int = Field(64, gt=0, description="problems per output part and per batch of "
                                   "judgements sent together")

    @field_validator("levels")
    @classmethod
    def _valid_levels(cls, levels: list[str]) -> list[str]:
        if len(levels) < 2:
            raise ValueError(f"at least 2 levels are needed, ordered easy -> hard (got {levels})")
        if any(not level.strip() or level != level.strip() for level in levels):
            raise ValueError(f"levels must be non-empty words without surrounding spaces (got {levels})")
        folded = [level.casefold() for level in levels]
        if len(set(folded)) != len(folded):
            raise ValueError(f"levels must be unique, ignoring case (got {levels})")
        if UNKNOWN in folded:
            raise ValueError(f"'{UNKNOWN}' cannot be a level: it marks a judgement that failed")
        return levels

    @field_validator("prompt_template")
    @classmethod
    def _known_fields(cls, template: str) -> str:
        return check_template(template, TEMPLATE_FIELDS, required={"question"})

    @field_validator("pass_rate_thresholds")
    @classmethod
    def _valid_thresholds(cls, thresholds: list[float]) -> list[float]:
        if any(not 0 <= t <= 1 for t in thresholds):
            raise ValueError(f"pass rate thresholds must lie in [0, 1] (got {thresholds})")
        if any(a <= b for a, b in itertools.pairwise(thresholds)):
            raise ValueError(f"pass rate thresholds must be strictly descending, easy -> hard "
                             f"(got {thresholds})")
        return thresholds

    @model_validator(mode="after")
    def _consistent(self) -> DifficultyConfig:
        if len(self.pass_rate_thresholds) != len(self.levels) - 1:
            raise ValueError(f"pass_rate_thresholds needs len(levels) - 1 = {len(self.levels) - 1} values "
                             f"for levels {self.levels} (got {self.pass_rate_thresholds})")
        if self.fallback is not None and self.fallback not in self.levels:
            raise ValueError(f"fallback {self.fallback!r} is not one of the levels {self.levels}")
        return self

    @property
    def fallback_level(self) -> str:
        return self.fallback if self.fallback is not None else self.levels[(len(self.levels) - 1) // 2]


def requirements(config: DifficultyConfig) -> tuple[tuple[str, str], ...]:
    """What the teacher's backend needs; nothing without a teacher."""
    from stages.teachers import requirements as backend_requirements

    return backend_requirements(config.teacher) if config.teacher is not None else ()


def empirical_level(pass_rate: float | None, n_samples: int | None, config: DifficultyConfig) -> str | None:
    """The level a pass rate maps to, or None when there is no rate or too few samples behind it."""
    if pass_rate is None or n_samples is None or n_samples < config.min_samples:
        return None
    for level, threshold in zip(config.levels, config.pass_rate_thresholds, strict=False):
        if pass_rate >= threshold:
            return level
    return config.levels[-1]


def decide(problem: dict[str, Any], judged: str | None, tries: int,
           config: DifficultyConfig) -> tuple[str, str, Source]:
    """(difficulty, rule text, which source decided) for one problem.

    ``judged`` is a level, ``"unknown"`` after ``tries`` malformed replies, or None when no teacher
    was asked.
    """
    pass_rate, n = problem.get("pass_rate"), problem.get("n_samples")
    empirical = empirical_level(pass_rate, n, config)
    if pass_rate is None:
        parts = ["no pass rate"]
    elif empirical is None:
        parts = [f"pass_rate {pass_rate:.3g} over {n or 0} samples, fewer than {config.min_samples}"]
    else:
        parts = [f"pass_rate {pass_rate:.3g} over {n} samples -> {empirical}"]
    if judged is None:
        parts.append("not judged")
    elif judged == UNKNOWN:
        parts.append(f"judgement unknown after {tries} {'try' if tries == 1 else 'tries'}")
    else:
        parts.append(f"judged {judged}")
    known = judged if judged not in (None, UNKNOWN) else None
    if empirical is not None and known is not None:
        if config.combine == "empirical_first":
            level, source = empirical, "empirical"
        elif config.combine == "judged_first":
            level, source = known, "judged"
        else:
            harder = config.levels.index(known) > config.levels.index(empirical)
            level, source = (known, "judged") if harder else (empirical, "empirical")
        return level, "; ".join(parts) + f"; {config.combine} -> {level}", source
    if empirical is not None:
        return empirical, "; ".join(parts) + f" -> {empirical}", "empirical"
    if known is not None:
        return known, "; ".join(parts) + f" -> {known}", "judged"
    level = config.fallback_level
    return level, "; ".join(parts) + f" -> fallback {level}", "fallback"


def render_messages(problem: dict[str, Any], config: DifficultyConfig) -> tuple[Message, ...]:
    """The judgement prompt; options are shown, since a choice problem's hardness depends on them."""
    user = config.prompt_template.format(question=question_text(problem), levels=", ".join(config.levels))
    return chat(config.system_prompt, user)


def judge(teacher: CachedTeacher, problems: list[dict[str, Any]],
          config: DifficultyConfig) -> list[tuple[str, int]]:
    """(level or "unknown", tries) per problem, in order.

    One ``complete`` call per round for the whole batch, so a backend runs the judgements
    concurrently; round r asks only the problems still malformed, with sample index r.
    """
    choices = tuple(config.levels)
    requests = {f"{i}:{p['problem_id']}": (i, render_messages(p, config)) for i, p in enumerate(problems)}
    result: list[tuple[str, int]] = [(UNKNOWN, 0)] * len(problems)
    pending = list(requests)
    for index in range(config.retries + 1):
        if not pending:
            break
        answers = teacher.complete([Request(rid, requests[rid][1], (index,), choices) for rid in pending])
        still = []
        for rid in pending:
            level = read_choice(answers[(rid, index)].text, choices)
            result[requests[rid][0]] = (level or UNKNOWN, index + 1)
            if level is None:
                still.append(rid)
        pending = still
    return result


def difficulty(inputs: Inputs, config: DifficultyConfig, ctx: Context, out: Output) -> None:
    files = inputs["problems"]
    start, stop = shard_range(parquet_rows(files), ctx.shard)
    teacher = None
    if config.teacher is not None:
        if ctx.request_cache is None:
            raise ValueError(f"stage {ctx.stage}: a teacher needs a request cache (ctx.request_cache)")
        teacher = CachedTeacher(config.teacher, ctx.request_cache, ctx.seed, purpose="difficulty")
    levels: Counter[str] = Counter()
    judged_counts: Counter[str] = Counter()
    rules: Counter[str] = Counter({"empirical": 0, "judged": 0, "fallback": 0})
    try:
        for chunk in iter_rows(files, config.problems_per_part, start, stop):
            problems = chunk.to_pylist()
            judgements = judge(teacher, problems, config) if teacher is not None \
                else [(None, 0)] * len(problems)
            for p, (judged, tries) in zip(problems, judgements, strict=True):
                level, rule, source = decide(p, judged, tries, config)
                p.update(difficulty=level, difficulty_judged=judged, difficulty_rule=rule)
                levels[level] += 1
                rules[source] += 1
                if judged is not None:
                    judged_counts[judged] += 1
            out.write(pa.Table.from_pylist(problems, schema=PROBLEMS))
    finally:
        if teacher is not None:
            teacher.close()
    out.stats({"levels": {lv: levels[lv] for lv in config.levels},
               "judged": dict(sorted(judged_counts.items())), "rules": dict(rules),
               "teacher": dict(teacher.stats) if teacher is not None else {}})
