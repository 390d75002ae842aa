"""Consistency on planted groups: all agree, a split vote, no reference; and through a real run."""

from __future__ import annotations

import pytest

from stages.checkers import get_checker
from stages.checkers.math_equiv import MathConfig
from stages.consistency import ConsistencyConfig, cluster, summarise


def samples(answers: list[str | None], verified: list[bool] | None = None) -> list[dict]:
    verified = verified or [False] * len(answers)
    return [{"final_answer": a, "score": float(v), "verified": v}
            for a, v in zip(answers, verified, strict=True)]


@pytest.fixture(scope="module")
def math():
    return get_checker("math", MathConfig())


def test_equivalent_forms_are_one_class_by_the_checker_not_by_string(math):
    classes = cluster(["1/2", "0.5", "\\frac{1}{2}", "2", " 0.5 ", None, ""], math, None)
    assert classes == [[0, 1, 2, 4], [3]]  # missing answers form no class


def test_all_agree_with_the_reference():
    problem = {"answer": "7", "answer_type": "math"}
    out = summarise(samples(["7", "7.0", "14/2", "7"], [True] * 4), problem, ConsistencyConfig())
    assert out["n_samples"] == 4 and out["n_clusters"] == 1 and out["agreement"] == 1.0
    assert out["pass_rate"] == 1.0 and out["score_mean"] == 1.0 and out["score_cv"] == 0.0
    assert out["pseudo_label"] is None  # there is a reference: no pseudo-label


def test_split_vote():
    problem = {"answer": "12", "answer_type": "math"}
    answers = ["12", "12", "12", "15", "15", "9", None, "24/2"]
    verified = [True, True, True, False, False, False, False, True]
    out = summarise(samples(answers, verified), problem, ConsistencyConfig())
    assert out["n_clusters"] == 3  # {12, 12, 12, 24/2}, {15, 15}, {9}
    assert out["majority_answer"] == "12" and out["agreement"] == 0.5
    assert out["pass_rate"] == 0.5
    assert out["score_cv"] == pytest.approx(1.0)  # scores 1,1,1,0,0,0,0,1: mean 0.5, sd 0.5


def test_no_reference_gets_a_pseudo_label_only_above_the_agreement():
    problem = {"answer": None, "answer_type": "math"}
    config = ConsistencyConfig(pseudo_label_agreement=0.6)
    strong = summarise(samples(["3/4", "0.75", "0.75", "1"]), problem, config)
    assert strong["pseudo_label"] == "3/4" and strong["agreement"] == 0.75
    assert strong["pass_rate"] is None  # nothing to pass against
    weak = summarise(samples(["1", "2", "2", "3", "4"]), problem, config)
    assert weak["majority_answer"] == "2" and weak["pseudo_label"] is None
    alone = summarise(samples(["5"]), problem, config)
    assert alone["pseudo_label"] is None  # one sample is no consensus (min_samples=2)


def test_choice_letters_cluster_by_letter():
    problem = {"answer": "B", "answer_type": "choice", "choices": ["1", "2", "3"]}
    out = summarise(samples(["B", "B", "A", "B"], [True, True, False, True]), problem, ConsistencyConfig())
    assert out["n_clusters"] == 2 and out["majority_answer"] == "B" and out["agreement"] == 0.75
