"""The consistency stage: per problem, how its samples agree, and how often they are right.

For each problem with traces: classes of equivalent final answers (by the problem's checker, not
string equality: "1/2" and "0.5" are one class), the majority answer and its agreement, the pass
rate against the reference (share of samples verified), the mean and coefficient of variation of
per-sample scores (DeepDistill uses the CV to find problems whose samples disagree), and, where
there is no reference, a pseudo-label: the majority answer when its agreement reaches
``pseudo_label_agreement`` over at least ``min_samples`` samples.

Reads traces grouped by problem out of core (DuckDB), writes the ``problems`` table with these
columns filled: one row per problem that has traces.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import pyarrow as pa
from pydantic import Field

from schemas.tables import PROBLEMS
from stages.checkers import get_checker
from stages.checkers.base import Checker, CheckItem
from stages.contract import Context, Inputs, Output, StageConfig
from stages.io import connect, sql_list
from stages.verify import VerifyConfig

CLUSTERED = {"math", "numeric", "choice", "exact"}  # code answers are programs: grouped by text


class ConsistencyConfig(StageConfig):
    pseudo_label_agreement: float = Field(0.6, gt=0, le=1,
                                          description="majority share a pseudo-label needs")
    min_samples: int = Field(2, gt=0, description="samples a pseudo-label needs")
    checkers: VerifyConfig = Field(default_factory=VerifyConfig,
                                   description="routing and checker settings used to compare answers")
    problems_per_batch: int = Field(1000, gt=0)


def consistency(inputs: Inputs, config: ConsistencyConfig, ctx: Context, out: Output) -> None:
    traces, problems = inputs["traces"], inputs["problems"]
    con = connect(traces + problems)
    query = f"""
        SELECT p.*, t.samples FROM read_parquet({sql_list(problems)}) p
        JOIN (SELECT problem_id,
                     list(struct_pack(final_answer, score, verified) ORDER BY trace_id) AS samples
              FROM read_parquet({sql_list(traces)}) GROUP BY problem_id) t USING (problem_id)
        ORDER BY problem_id"""
    reader = con.sql(query).to_arrow_reader(config.problems_per_batch)
    for batch in reader:
        rows = []
        for p in batch.to_pylist():
            samples = p.pop("samples")
            p.update(summarise(samples, p, config))
            rows.append(p)
        out.write(pa.Table.from_pylist(rows, schema=PROBLEMS))


def summarise(samples: Sequence[dict], problem: dict, config: ConsistencyConfig) -> dict:
    """The consistency columns of one problem from its samples (final_answer, score, verified)."""
    answers = [s["final_answer"] for s in samples]
    name = config.checkers.route.get(problem.get("answer_type") or "", config.checkers.default_checker)
    checker = get_checker(name, getattr(config.checkers, name)) if name in CLUSTERED else None
    classes = cluster(answers, checker, tuple(problem.get("choices") or ()) or None)
    sizes = [len(c) for c in classes]
    top = max(range(len(classes)), key=lambda k: (sizes[k], -k)) if classes else None
    majority = answers[classes[top][0]] if top is not None else None
    agreement = sizes[top] / len(samples) if top is not None else 0.0
    scores = [float(s["score"]) for s in samples if s["score"] is not None]
    mean = statistics.fmean(scores) if scores else None
    cv = statistics.pstdev(scores) / mean if scores and mean else None
    verified = [s["verified"] for s in samples if s["verified"] is not None]
    has_reference = problem.get("answer") is not None or bool(problem.get("tests"))
    pseudo = None
    if problem.get("answer") is None and majority is not None and len(samples) >= config.min_samples \
            and agreement >= config.pseudo_label_agreement:
        pseudo = majority
    pass_rate = sum(verified) / len(verified) if verified and has_reference else None
    return {"n_samples": len(samples), "n_clusters": len(classes), "majority_answer": majority,
            "agreement": round(agreement, 6), "pass_rate": pass_rate, "score_mean": mean, "score_cv": cv,
            "pseudo_label": pseudo}


def cluster(answers: Sequence[str | None], checker: Checker | None,
            choices: tuple[str, ...] | None) -> list[list[int]]:
    """Indices of equivalent answers, in order of first appearance; missing answers form no class.

    Each distinct answer string is compared with the first answer of every class so far, in one
    checker call, so the checker batches (and memoises) the comparisons.
    """
    distinct: dict[str, list[int]] = {}
    for i, a in enumerate(answers):
        if a is not None and a.strip():
            distinct.setdefault(a.strip(), []).append(i)
    classes: list[tuple[str, list[int]]] = []
    for text, indices in distinct.items():
        home = None
        if checker is not None and classes:
            checks = checker.check([CheckItem(prediction=text, gold=rep, choices=choices)
                                    for rep, _ in classes])
            home = next((k for k, c in enumerate(checks) if c.verdict == "pass"), None)
        if home is None:
            classes.append((text, list(indices)))
        else:
            classes[home][1].extend(indices)
    return [sorted(members) for _, members in classes]
