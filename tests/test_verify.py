"""The verify stage on planted traces, and ``tracefoundry verify FILE``."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.cli import main
from schemas.tables import PROBLEMS, TRACES
from stages.verify import VerifyConfig, verify

GOOD = "<think>I add them.</think>"


def problem(pid: str, answer: str | None, answer_type: str = "math", **extra) -> dict:
    return {"problem_id": pid, "question": f"question {pid}", "answer": answer, "answer_type": answer_type,
            "source": {"dataset": "t", "config": None, "split": None, "revision": None, "row": 0}, **extra}


def trace(pid: str, final: str | None, *, reasoning: str = "I add them.", finish: str = "stop",
          flags: list[str] | None = None, tid: str | None = None) -> dict:
    return {"trace_id": tid or f"{pid}-{final}", "problem_id": pid, "sample_index": 0, "variant": "original",
            "completion": f"{GOOD} {final}", "reasoning": reasoning, "answer": f"The answer is {final}.",
            "final_answer": final, "finish_reason": finish, "flags": flags or [],
            "checkers": [{"name": "earlier", "version": "0", "verdict": "pass"}]}


def run_verify(traces: list[dict], problems: list[dict], **config) -> list[dict]:
    ctx = SimpleNamespace(stage="verify")
    result = verify(pa.Table.from_pylist(traces, schema=TRACES), VerifyConfig(**config), ctx,
                    pa.Table.from_pylist(problems, schema=PROBLEMS))
    assert result.rejected.num_rows == 0 and result.rows.num_rows == len(traces)  # never drops
    return result.rows.to_pylist()


def test_each_answer_type_goes_to_its_checker():
    problems = [problem("m", "\\frac{1}{2}"), problem("n", "3.14159", "numeric"),
                problem("c", "B", "choice", choices=["1", "2", "3"]), problem("e", "Paris", "exact")]
    rows = run_verify([trace("m", "0.5"), trace("m", "2"), trace("n", "3.141590001"), trace("c", "(B)"),
                       trace("c", "A"), trace("e", "paris"), trace("e", "Lyon")], problems)
    got = [(r["problem_id"], r["verdict"], r["verified"], r["checkers"][1]["name"]) for r in rows]
    assert got == [("m", "pass", True, "math"), ("m", "fail", False, "math"),
                   ("n", "pass", True, "numeric"), ("c", "pass", True, "choice"),
                   ("c", "fail", False, "choice"), ("e", "pass", True, "exact"),
                   ("e", "fail", False, "exact")]
    for r in rows:  # earlier checkers are kept, then the answer checker and format, with versions
        names = [c["name"] for c in r["checkers"]]
        assert names[0] == "earlier" and names[2] == "format" and all(c["version"] for c in r["checkers"])
        assert r["score"] == (1.0 if r["verdict"] == "pass" else 0.0)
        assert r["check_reason"] is None if r["verified"] else r["check_reason"]
        assert set(json.loads(r["check_details"])) == {"answer", "format"}


def test_a_right_answer_with_a_broken_format_is_not_verified_unless_format_is_optional():
    problems = [problem("m", "7")]
    truncated = trace("m", "7", finish="length", flags=["truncated"])
    row = run_verify([truncated], problems)[0]
    assert row["verdict"] == "pass" and not row["verified"] and row["check_reason"].startswith("format:")
    assert run_verify([truncated], problems, require_format=False)[0]["verified"]


def test_no_reference_is_an_error_until_a_pseudo_label_exists():
    row = run_verify([trace("m", "5")], [problem("m", None)])[0]
    assert row["verdict"] == "error" and "no reference" in row["check_reason"] and not row["verified"]
    labelled = [problem("m", None, pseudo_label="10/2")]
    row = run_verify([trace("m", "5")], labelled, pseudo_labels=True)[0]
    assert row["verdict"] == "pseudo_pass" and not row["verified"]  # pseudo passes count only if allowed
    assert run_verify([trace("m", "5")], labelled, pseudo_labels=True, allow_pseudo=True)[0]["verified"]
    wrong = run_verify([trace("m", "6")], labelled, pseudo_labels=True, allow_pseudo=True)[0]
    assert wrong["verdict"] == "fail"


def test_code_is_scored_by_tests_in_the_sandbox_and_the_threshold_decides():
    tests = json.dumps({"style": "stdio", "cases": [{"input": "1 2\n", "output": "3\n"},
                                                    {"input": "2 2\n", "output": "4\n"},
                                                    {"input": "5 5\n", "output": "10\n"}]})
    problems = [problem("k", None, "code", tests=tests)]
    right = "a, b = map(int, input().split())\nprint(a + b)"
    wrong_once = "a, b = map(int, input().split())\nprint(a + b if a != 5 else 0)"
    rows = run_verify([trace("k", right, tid="r"), trace("k", wrong_once, tid="w")], problems)
    assert [(r["verdict"], r["verified"]) for r in rows] == [("pass", True), ("fail", False)]
    assert rows[1]["score"] == pytest.approx(2 / 3)
    lenient = run_verify([trace("k", wrong_once, tid="w")], problems, code_threshold=0.6)[0]
    assert lenient["verified"] and lenient["score"] == pytest.approx(2 / 3)


def test_unknown_checker_in_route_is_a_config_error():
    with pytest.raises(ValueError, match="unknown checker"):
        VerifyConfig(route={"math": "sympy"})


def test_verify_file_writes_verdicts_beside_jsonl_and_parquet(tmp_path, capsys):
    rows = [{"answer": "1/2", "prediction": "0.5"}, {"answer": "3", "prediction": "4"},
            {"answer": "x^2+2x+1", "prediction": "(x+1)^2"}, {"answer": "2", "prediction": None}]
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["verify", str(path), "--checker", "math", "--no-progress"]) == 0
    out = [json.loads(line) for line in (tmp_path / "answers.verdicts.jsonl").read_text().splitlines()]
    assert [r["verdict"] for r in out] == ["pass", "fail", "pass", "fail"]
    assert out[0]["prediction"] == "0.5" and out[3]["check_reason"]
    assert "4 rows (fail: 2, pass: 2)" in capsys.readouterr().out

    table = pa.table({"gold": ["B", "C"], "completion": ["so the answer is (B)", "Answer: A"],
                      "options": [["x", "y", "z"], ["x", "y", "z"]]})
    pq.write_table(table, tmp_path / "mc.parquet")
    assert main(["verify", str(tmp_path / "mc.parquet"), "--checker", "choice", "--gold-col", "gold",
                 "--pred-col", "completion", "--choices-col", "options", "--extract", "--no-progress"]) == 0
    assert pq.read_table(tmp_path / "mc.verdicts.parquet")["verdict"].to_pylist() == ["pass", "fail"]


def test_verify_file_names_a_missing_column(tmp_path, capsys):
    path = tmp_path / "a.jsonl"
    path.write_text('{"gold": "1", "pred": "1"}\n')
    assert main(["verify", str(path), "--checker", "exact", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "a.jsonl" in err and "prediction" in err and "--pred-col" in err


def test_the_judge_rescues_unreadable_answers_and_is_marked_judged(tmp_path):
    from support.openai_fakes import ScriptedOpenAIServer, chat_reply

    def reply(body: dict, n: int) -> dict:
        prompt = body["messages"][-1]["content"]
        word = "EQUIVALENT" if "one half" in prompt else "DIFFERENT" if "a lot" in prompt else "maybe?"
        return chat_reply(f"Thinking done. {word}", completion_tokens=3)

    traces = [trace("m", None, tid="t1"), trace("m", "2", tid="t2"), trace("n", None, tid="t3"),
              trace("o", None, tid="t4")]
    traces[0]["answer"] = "The answer is one half."
    traces[2]["answer"] = "It is a lot."
    traces[3]["answer"] = "Hmm."
    problems = [problem("m", "\\frac{1}{2}"), problem("n", "1000", "numeric"), problem("o", "3")]
    with ScriptedOpenAIServer(reply) as server:
        judge = {"teacher": {"backend": "openai", "name": "judge", "model": "judge",
                             "base_url": server.base_url, "temperature": 0, "max_tokens": 8,
                             "backoff_s": 0.01}}
        ctx = SimpleNamespace(stage="verify", request_cache=str(tmp_path / "cache"), seed=0)
        config = VerifyConfig(judge=judge, require_format=False)
        table = pa.Table.from_pylist(traces, schema=TRACES)
        rows = verify(table, config, ctx, pa.Table.from_pylist(problems, schema=PROBLEMS)).rows.to_pylist()
        assert len(server.received) == 3  # t2 was read and judged wrong by math-verify: no judge needed
        again = verify(table, config, ctx, pa.Table.from_pylist(problems, schema=PROBLEMS)).rows.to_pylist()
        assert len(server.received) == 3 and again == rows  # judgements come from the request cache
    got = [(r["verdict"], r["verified"], r["checkers"][1]["name"]) for r in rows]
    assert got == [("judged_pass", False, "judge"), ("fail", False, "math"), ("judged_fail", False, "judge"),
                   ("error", False, "judge")]
    assert "not understood" in rows[3]["check_reason"]
    allowed = verify(table, VerifyConfig(judge=judge, require_format=False, allow_judged=True), ctx,
                     pa.Table.from_pylist(problems, schema=PROBLEMS)).rows.to_pylist()
    assert [r["verified"] for r in allowed] == [True, False, False, False]
