"""The verify stage: does each trace's final answer hold up, by the checker its problem calls for.

Verify never drops a row. It sets ``verdict`` (pass, fail, judged_pass, judged_fail, pseudo_pass,
error), ``score`` in [0, 1], the checkers' names and versions, and ``verified``:

- ``pass`` is verified; for code, ``score`` (fraction of tests passed) must reach ``code_threshold``;
- ``judged_pass`` (an LLM judge's word, not a proof) only where ``allow_judged`` is set;
- ``pseudo_pass`` (matches the majority answer of a problem without a reference, from the
  consistency stage) only where ``allow_pseudo`` is set;
- with ``require_format``, the format checker must pass too (reasoning closed, answer present, not
  truncated, no runaway repetition).

Rows are dropped for being unverified later, by ``select`` or a filter, with reason ``unverified``.
The checker follows the problem's ``answer_type`` through ``route``.
"""

from __future__ import annotations

import pyarrow as pa
from pydantic import Field, field_validator

from schemas.ids import canonical_json
from stages.checkers import CHECKERS, get_checker
from stages.checkers.base import Check, CheckItem
from stages.checkers.code_sandbox import CodeConfig
from stages.checkers.format_check import FormatConfig
from stages.checkers.judge import JudgeChecker, JudgeConfig
from stages.checkers.math_equiv import MathConfig
from stages.checkers.simple import ChoiceConfig, ExactConfig, NumericConfig
from stages.contract import Context, Result, StageConfig

DEFAULT_ROUTE = {"math": "math", "numeric": "numeric", "choice": "choice", "exact": "exact", "code": "code",
                 "text": "exact"}


class VerifyConfig(StageConfig):
    route: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_ROUTE),
                                  description="answer_type -> checker (math, numeric, choice, exact, code)")
    default_checker: str = Field("math", description="for problems without an answer_type")
    math: MathConfig = Field(default_factory=MathConfig)
    numeric: NumericConfig = Field(default_factory=NumericConfig)
    choice: ChoiceConfig = Field(default_factory=ChoiceConfig)
    exact: ExactConfig = Field(default_factory=ExactConfig)
    code: CodeConfig = Field(default_factory=CodeConfig)
    format: FormatConfig = Field(default_factory=FormatConfig)
    require_format: bool = Field(True, description="verified also needs the format checker's pass")
    code_threshold: float = Field(1.0, ge=0, le=1,
                                  description="score a code trace needs to count as verified")
    allow_judged: bool = Field(False, description="count judged_pass as verified")
    allow_pseudo: bool = Field(False, description="count pseudo_pass as verified")
    judge: JudgeConfig | None = Field(
        None, description="an LLM judge for answers the checker cannot read (verdicts judged_pass/fail)")
    pseudo_labels: bool = Field(
        False, description="check problems without a reference against their pseudo_label (read the "
        "problems from a consistency stage); a match is pseudo_pass")

    @field_validator("route")
    @classmethod
    def _known_checkers(cls, route: dict[str, str]) -> dict[str, str]:
        unknown = {c for c in route.values() if c not in CHECKERS or c == "format"}
        if unknown:
            raise ValueError(f"unknown checker(s) {sorted(unknown)}; known: "
                             f"{sorted(c for c in CHECKERS if c != 'format')}")
        return route


def verify(batch: pa.Table, config: VerifyConfig, ctx: Context, problems: pa.Table) -> Result:
    rows = batch.to_pylist()
    by_id = {p["problem_id"]: p for p in problems.to_pylist()}
    routes: dict[str, list[int]] = {}
    items: list[CheckItem | None] = []
    pseudo: list[bool] = []
    for i, r in enumerate(rows):
        p = by_id.get(r["problem_id"]) or {}
        name = config.route.get(p.get("answer_type") or "", config.default_checker)
        gold, is_pseudo = p.get("answer"), False
        if gold is None and config.pseudo_labels and p.get("pseudo_label") is not None:
            gold, is_pseudo = p["pseudo_label"], True
        items.append(CheckItem(prediction=r["final_answer"], gold=gold,
                               choices=tuple(p["choices"]) if p.get("choices") else None,
                               tests=p.get("tests"), trace=r, question=p.get("question")))
        pseudo.append(is_pseudo)
        routes.setdefault(name, []).append(i)
    answers: list[tuple[str, Check] | None] = [None] * len(rows)
    for name, indices in routes.items():
        checker = get_checker(name, getattr(config, name))
        todo = [i for i in indices if name == "code" or items[i].gold is not None]
        for i in set(indices) - set(todo):
            answers[i] = (name, Check("error", 0.0, "no reference answer (a consistency stage can "
                                                    "pseudo-label it)"))
        for i, check in zip(todo, checker.check([items[i] for i in todo]), strict=True):
            answers[i] = (name, check)
    if config.judge is not None:
        _judge(rows, items, answers, config.judge, ctx)
    fmt_checker = get_checker("format", config.format)
    formats = fmt_checker.check(items)
    for i, r in enumerate(rows):
        name, check = answers[i]
        checker = _JUDGES[_judge_key(config.judge, ctx)] if name == "judge" else \
            get_checker(name, getattr(config, name))
        verdict = "pseudo_pass" if pseudo[i] and check.verdict == "pass" else check.verdict
        verified = is_verified(verdict, check.score, name, config)
        reason = None if verified else (check.reason or verdict)
        if config.require_format and formats[i].verdict != "pass":
            reason = f"format: {formats[i].reason}" if verified else reason
            verified = False
        r.update({
            "verdict": verdict, "score": float(check.score), "verified": verified, "check_reason": reason,
            "checkers": [*(r.get("checkers") or []),
                         {"name": checker.name, "version": checker.version, "verdict": verdict},
                         {"name": fmt_checker.name, "version": fmt_checker.version,
                          "verdict": formats[i].verdict}],
            "check_details": canonical_json({"answer": {"checker": name, "reason": check.reason,
                                                        **dict(check.details)},
                                             "format": {"reason": formats[i].reason,
                                                        **dict(formats[i].details)}}),
        })
    return Result(pa.Table.from_pylist(rows, schema=_with_columns(batch.schema)))


# what a checker says when it could not read the prediction at all (vs. read it and disagreed)
UNPARSABLE = ("no parsable answer in prediction", "prediction is not a number",
              "prediction names no option")
_JUDGES: dict[tuple[str, str], JudgeChecker] = {}


def _judge_key(config: JudgeConfig, ctx: Context) -> tuple[str, str]:
    return config.model_dump_json(), str(ctx.request_cache)


def _judge(rows: list[dict], items: list[CheckItem], answers: list, config: JudgeConfig,
           ctx: Context) -> None:
    """Send what the checkers could not read to the judge; its verdicts replace theirs, marked judged."""
    chosen = []
    for i, (name, check) in enumerate(answers):
        if name == "code" or items[i].gold is None:
            continue
        unparsable = check.reason in UNPARSABLE or check.verdict == "error"  # gold unreadable, timeout
        no_answer = check.reason == "no answer"
        if ("unparsable" in config.when and unparsable) or ("no_answer" in config.when and no_answer):
            chosen.append(i)
    if not chosen:
        return
    key = _judge_key(config, ctx)
    if key not in _JUDGES:
        _JUDGES[key] = JudgeChecker(config, ctx.request_cache, ctx.seed)
    for i, check in zip(chosen, _JUDGES[key].check([items[i] for i in chosen]), strict=True):
        answers[i] = ("judge", check)


def is_verified(verdict: str, score: float, checker: str, config: VerifyConfig) -> bool:
    if verdict == "pass":
        return checker != "code" or score >= config.code_threshold
    if checker == "code" and verdict == "fail":
        return score >= config.code_threshold and config.code_threshold < 1
    return ((verdict == "judged_pass" and config.allow_judged)
            or (verdict == "pseudo_pass" and config.allow_pseudo))


def _with_columns(schema: pa.Schema) -> pa.Schema:
    """The batch's schema (extra columns kept) with verify's columns typed as TRACES declares them."""
    from schemas.tables import TRACES

    for name in ("verdict", "score", "verified", "check_reason", "check_details", "checkers"):
        field = TRACES.field(name)
        i = schema.get_field_index(name)
        schema = schema.set(i, field) if i >= 0 else schema.append(field)
    return schema
