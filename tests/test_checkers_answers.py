"""Answer checkers against a hand-written table of tricky pairs, and the math checker's machinery.

The table (``tests/data/answer_pairs.jsonl``) says what each pair *should* give. A pair the checker
gets wrong is never dropped: if preprocessing cannot fix it, the row carries ``known_miss`` (why),
and the test then asserts the current, wrong verdict, so the miss stays visible and a fix (or a
math-verify upgrade) that changes it makes the test fail until the row is updated.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from stages.checkers.base import Check, CheckItem
from stages.checkers.math_equiv import MathChecker, MathConfig, prepare_answer
from stages.checkers.simple import (
    ChoiceChecker,
    ChoiceConfig,
    ExactChecker,
    ExactConfig,
    NumericChecker,
    NumericConfig,
    exact_key,
    parse_number,
)

TABLE = Path(__file__).parent / "data" / "answer_pairs.jsonl"
ROWS: list[dict[str, Any]] = [json.loads(line) for line in TABLE.read_text().splitlines() if line.strip()]
CHECKERS = {"math": (MathChecker, MathConfig), "choice": (ChoiceChecker, ChoiceConfig),
            "exact": (ExactChecker, ExactConfig), "numeric": (NumericChecker, NumericConfig)}
OPPOSITE = {"pass": "fail", "fail": "pass"}


def _item(row: dict[str, Any]) -> CheckItem:
    choices = tuple(row["choices"]) if row.get("choices") else None
    return CheckItem(prediction=row["prediction"], gold=row["gold"], choices=choices)


@pytest.fixture(scope="module")
def table_verdicts() -> dict[int, Check]:
    """Every row checked once, in one ``check`` call per (checker, config): the math rows cost one
    child start and one request instead of one per row."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, row in enumerate(ROWS):
        groups.setdefault((row["checker"], json.dumps(row.get("config") or {}, sort_keys=True)), []).append(i)
    verdicts: dict[int, Check] = {}
    for (name, config_json), indices in groups.items():
        cls, config_cls = CHECKERS[name]
        checker = cls(config_cls(**json.loads(config_json)))
        try:
            for i, check in zip(indices, checker.check([_item(ROWS[i]) for i in indices]), strict=True):
                verdicts[i] = check
        finally:
            checker.close()
    return verdicts


def _row_id(i: int, row: dict[str, Any]) -> str:
    return f"{row['checker']}-{i:03d}-{row['note'][:40]}"


@pytest.mark.parametrize("i", range(len(ROWS)), ids=[_row_id(i, r) for i, r in enumerate(ROWS)])
def test_answer_pair(i: int, table_verdicts: dict[int, Check], record_property) -> None:
    row = ROWS[i]
    check = table_verdicts[i]
    expected = row["expected"]
    if row.get("known_miss"):
        record_property("known_miss", row["known_miss"])
        expected = OPPOSITE[expected]  # the current (wrong) verdict: still checked, so a change shows
    assert check.verdict == expected, (
        f"{row['checker']}: gold {row['gold']!r} vs prediction {row['prediction']!r} ({row['note']}): "
        f"got {check.verdict} ({check.reason}); prepared {prepare_answer(row['gold'])!r} / "
        f"{prepare_answer(row['prediction'])!r}")
    assert check.score == (1.0 if check.verdict == "pass" else 0.0)


def test_fast_parse_changes_no_verdict(table_verdicts: dict[int, Check]) -> None:
    """``fast_parse`` (SLL-first ANTLR, direct numbers) must be pure speed: a third of the math rows,
    checked by plain math-verify parsing, get the very same verdicts and reasons."""
    rows = [i for i, row in enumerate(ROWS) if row["checker"] == "math"][::3]
    checker = MathChecker(MathConfig(fast_parse=False))
    try:
        plain = checker.check([_item(ROWS[i]) for i in rows])
    finally:
        checker.close()
    assert [(c.verdict, c.reason) for c in plain] == [(table_verdicts[i].verdict, table_verdicts[i].reason)
                                                      for i in rows]


def test_table_shape() -> None:
    counts = Counter(row["checker"] for row in ROWS)
    assert counts["math"] >= 120 and all(counts[c] >= 15 for c in ("choice", "exact", "numeric"))
    assert len(ROWS) >= 170
    keys = [(r["checker"], r["gold"], r["prediction"], json.dumps(r.get("config"))) for r in ROWS]
    assert len(keys) == len(set(keys)), "duplicate pairs in the table"
    for row in ROWS:
        assert row["expected"] in ("pass", "fail") and row["note"]
        assert row["checker"] in CHECKERS
        assert ("choices" in row) == (row["checker"] == "choice")
    misses = [r for r in ROWS if r.get("known_miss")]
    assert all(r["checker"] == "math" for r in misses)
    assert len(misses) <= 8, "known misses should stay few: fix the checker instead"
    # the table must exercise both verdicts of every checker
    both = {(c, v) for c in CHECKERS for v in ("pass", "fail")}
    assert {(r["checker"], r["expected"]) for r in ROWS} == both


# ---------------------------------------------------------------------------------------------------------
# the math checker's machinery


def _fault(gold: str, pred: str) -> None:
    """Injected into the child (picklable: module level). Markers in the prediction pick the fault."""
    if "SLOW" in pred:
        time.sleep(30)  # interruptible: the child's own alarm ends it
    elif "HANG" in pred:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})  # like C code that never yields
        time.sleep(30)
    elif "CRASH" in pred:
        os._exit(3)


@pytest.fixture(scope="module")
def faulty() -> MathChecker:
    """One checker for the machinery tests (a child start costs about a second): it gives up
    quickly, so timeout tests take seconds, and its child obeys ``_fault``'s markers."""
    checker = MathChecker(MathConfig(timeout_s=0.5), _child_fault=_fault)
    checker.slack_s = 0.5
    yield checker
    checker.close()


def _delta(checker: MathChecker, before: dict[str, int]) -> dict[str, int]:
    return {k: v - before[k] for k, v in checker.stats.items() if v != before[k]}


def test_identity() -> None:
    assert MathChecker.name == "math"
    assert MathChecker.version.startswith("math-verify-0.") and MathChecker.version.endswith("+1")
    assert (ChoiceChecker.name, ExactChecker.name, NumericChecker.name) == ("choice", "exact", "numeric")
    with pytest.raises(ValueError):
        MathConfig(timeout=3)  # extra=forbid: a typo is an error


def test_memo_within_and_across_calls(faulty: MathChecker) -> None:
    faulty.check([CheckItem("0", "0")])  # the child is up
    before = dict(faulty.stats)
    half, wrong = CheckItem("0.5", r"\frac12"), CheckItem("0.6", r"\frac12")
    first = faulty.check([half, half, wrong, half, CheckItem(r"$0.5$", r"\frac12")])
    assert [c.verdict for c in first] == ["pass", "pass", "fail", "pass", "pass"]
    # two pairs reach the child, in one request: "$0.5$" prepares to the same key as "0.5"
    assert _delta(faulty, before) == {"items": 5, "memo_hits": 3, "pairs_verified": 2, "requests": 1}
    before = dict(faulty.stats)
    again = faulty.check([half, wrong, CheckItem("0.5 ", r"\frac12")])
    assert [c.verdict for c in again] == ["pass", "fail", "pass"]
    assert _delta(faulty, before) == {"items": 3, "memo_hits": 3}
    assert faulty.check([]) == []


def test_real_pathological_input_times_out_in_child(faulty: MathChecker) -> None:
    faulty.check([CheckItem("0", "0")])  # the child is up
    before = dict(faulty.stats)
    checks = faulty.check([CheckItem("1", "1"), CheckItem(r"9^{9^{9^{9}}}", "1"), CheckItem("3", "2")])
    assert [c.verdict for c in checks] == ["pass", "error", "fail"]
    assert checks[1].reason == "timeout after 0.5s"
    assert "starts" not in _delta(faulty, before)  # the child's own alarm: nothing had to be killed


def test_slow_pair_gets_error_others_real_verdicts(faulty: MathChecker) -> None:
    faulty.check([CheckItem("0", "0")])
    before = dict(faulty.stats)
    checks = faulty.check([CheckItem("1", "1"), CheckItem("SLOW", "1"), CheckItem("2", "1")])
    assert [c.verdict for c in checks] == ["pass", "error", "fail"]
    assert checks[1].reason == "timeout after 0.5s"
    assert "starts" not in _delta(faulty, before)


def test_hung_child_is_killed_and_culprit_found(faulty: MathChecker) -> None:
    before = dict(faulty.stats)
    items = [CheckItem("1", "1"), CheckItem("HANG", "1"), CheckItem("2", "1"), CheckItem("x+x", "2x")]
    checks = faulty.check(items)
    assert [c.verdict for c in checks] == ["pass", "error", "fail", "pass"]
    assert checks[1].reason == "timeout after 0.5s"
    delta = _delta(faulty, before)
    assert delta["timeouts"] >= 1 and delta["starts"] >= 1
    # the timeout is remembered: the same pathological answer does not cost another one
    before = dict(faulty.stats)
    assert faulty.check([CheckItem("HANG", "1")])[0].reason == "timeout after 0.5s"
    assert _delta(faulty, before) == {"items": 1, "memo_hits": 1}


def test_crashing_pair_gets_error_others_real_verdicts(faulty: MathChecker) -> None:
    before = dict(faulty.stats)
    checks = faulty.check([CheckItem("1", "1"), CheckItem("CRASH", "1"), CheckItem("2", "1")])
    assert [c.verdict for c in checks] == ["pass", "error", "fail"]
    assert checks[1].reason == "checker crashed"
    assert _delta(faulty, before)["crashes"] >= 1
    # a crash is not memoised (it may have been the machine's): the next call tries again
    before = dict(faulty.stats)
    assert faulty.check([CheckItem("CRASH", "1")])[0].reason == "checker crashed"
    assert _delta(faulty, before)["pairs_verified"] == 1


def test_killed_child_is_restarted(faulty: MathChecker) -> None:
    assert faulty.check([CheckItem("2", "1+1")])[0].verdict == "pass"
    pid = faulty.child_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    before = dict(faulty.stats)
    checks = faulty.check([CheckItem("3", "1+2"), CheckItem("5", "1+2")])
    assert [c.verdict for c in checks] == ["pass", "fail"]
    assert faulty.child_pid not in (None, pid)
    assert _delta(faulty, before)["starts"] == 1


def test_child_that_cannot_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """In a daemonic process (a Pool worker) a child cannot start: every item says so, at once."""
    checker = MathChecker()

    def refuse() -> None:
        raise AssertionError("daemonic processes are not allowed to have children")

    monkeypatch.setattr(checker, "_ensure_child", refuse)
    checks = checker.check([CheckItem("1", "1"), CheckItem("2", "1"), CheckItem("3", "1")])
    assert {c.verdict for c in checks} == {"error"}
    assert all(c.reason.startswith("checker could not start: AssertionError") for c in checks)
    assert checker.stats["crashes"] == 1  # one attempt, not one per pair
    assert not checker._memo  # not the pairs' fault: a later call tries again
    checker.close()


def test_reference_and_prediction_edge_cases(faulty: MathChecker) -> None:
    checks = faulty.check([
        CheckItem(gold="\\", prediction="5"),  # math-verify reads nothing in this gold
        CheckItem(gold="$$", prediction="5"),  # nothing left after unwrapping
        CheckItem(gold="5", prediction=None),
        CheckItem(gold=None, prediction="5"),
        CheckItem(gold="", prediction="5"),
        CheckItem(gold="5", prediction="   "),
        CheckItem(gold="5", prediction="\\"),
        CheckItem(gold=5, prediction="5"),  # type: ignore[arg-type]  # not a string: only this item errors
    ])
    assert [(c.verdict, c.reason) for c in checks[:7]] == [
        ("error", "gold answer not parsable"),
        ("error", "gold answer not parsable"),
        ("fail", "no answer"),
        ("error", "no gold answer"),
        ("error", "no gold answer"),
        ("fail", "no answer"),
        ("fail", "no parsable answer in prediction"),
    ]
    assert checks[7].verdict == "error" and checks[7].reason.startswith("checker error")


def test_close_stops_the_child() -> None:
    checker = MathChecker()
    assert checker.child_pid is None  # started lazily
    checker.check([CheckItem("1", "1")])
    process = checker._process
    assert process is not None and process.is_alive()
    checker.close()
    assert not process.is_alive()
    assert checker.child_pid is None
    checker.close()  # twice is harmless


def test_prepare_answer_rules() -> None:
    assert prepare_answer("5 cm") == prepare_answer(r"5\text{ cm}") == prepare_answer("$5$") == "$5$"
    assert prepare_answer("1,000") == "$1000$" and prepare_answer("1,2") == "$1,2$"
    assert prepare_answer(r"50\%") == prepare_answer("50%") == "$50$"
    assert prepare_answer(r"0.\overline{3}") == r"$\frac{1}{3}$"
    assert prepare_answer("The answer is 5 apples") == "The answer is 5"  # prose: math-verify extracts
    assert prepare_answer("   ") is None and prepare_answer(None) is None


# ---------------------------------------------------------------------------------------------------------
# the simple checkers' edges the table cannot express


def test_simple_checkers_reference_errors() -> None:
    assert ChoiceChecker().check([CheckItem("A", None, ("x", "y"))])[0].reason == "no gold answer"
    assert ChoiceChecker().check([CheckItem("A", "z", ("x", "y"))])[0].verdict == "error"
    assert NumericChecker().check([CheckItem("5", "five")])[0].reason == "gold answer is not a number"
    assert ExactChecker().check([CheckItem("x", None)])[0].verdict == "error"
    wrong = ChoiceChecker().check([CheckItem("C", "B", ("1", "2", "3"))])[0]
    assert (wrong.verdict, wrong.details) == ("fail", {"chosen": "C", "gold": "B"})
    assert NumericChecker().check([CheckItem(object(), "5")])[0].verdict == "error"  # type: ignore[arg-type]


def test_simple_normalisation_edges() -> None:
    assert exact_key(r"\text{a} + \text{b}") == r"\text{a} + \text{b}"  # two blocks: no outer wrapper
    assert exact_key(r"$\textbf{New  York}$.") == "new york"
    assert parse_number("1e999999999") == float("inf")  # no billion-digit integer
    assert parse_number(r"1.5\times 10^{3}") == 1500 and parse_number("-$5") == -5
