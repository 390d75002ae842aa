"""The parse stage: reasoning/answer splits, final-answer extraction, and the batch function's accounting."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pyarrow as pa
import pytest
from pydantic import ValidationError

from schemas.tables import PROBLEMS, TRACES
from stages.parse import ParseConfig, extract_final_answer, parse, split_reasoning

OPEN, CLOSE = "<think>", "</think>"
CTX = SimpleNamespace(tokenizer=SimpleNamespace(count=lambda xs: [len(x.split()) for x in xs]))


@pytest.mark.parametrize(
    ("completion", "reasoning", "expected"),
    [
        pytest.param("<think>\nLet me add.\n</think>\n\nThe answer is 4.", None,
                     ("Let me add.", "The answer is 4.", []), id="tags"),
        pytest.param("\n<think>work</think>42", None, ("work", "42", []), id="whitespace-before-open"),
        pytest.param("Sure.<think>work</think>42", None, ("Sure.\n\nwork", "42", []), id="preamble"),
        pytest.param("work\n</think>\n\n42", None, ("work", "42", []), id="close-only"),
        pytest.param("<think>work that never", None, ("work that never", "", ["unclosed_reasoning"]),
                     id="unclosed"),
        pytest.param("<think></think>\\boxed{1}", None, ("", "\\boxed{1}", []), id="empty-think"),
        pytest.param("The answer is 4.", "I added 2 and 2. ", ("I added 2 and 2.", "The answer is 4.", []),
                     id="server-reasoning"),
        pytest.param("</think>\n\n4", "I added.", ("I added.", "4", []), id="server-reasoning-stray-tag"),
        pytest.param("I added.\n\nAnswer: 4", "I added.", ("I added.", "Answer: 4", []),
                     id="server-reasoning-repeated-in-completion"),
        pytest.param("<think>a</think>4", "", ("a", "4", []), id="empty-server-reasoning-ignored"),
        pytest.param("First.\n\nSecond.\n\nSo the result is $\\boxed{4}$.", None,
                     ("First.\n\nSecond.", "So the result is $\\boxed{4}$.", ["no_reasoning_tags"]),
                     id="no-tags-boxed-paragraph"),
        pytest.param("Step one.\nStep two.\nAnswer: 4", None,
                     ("Step one.\nStep two.", "Answer: 4", ["no_reasoning_tags"]), id="no-tags-answer-line"),
        pytest.param("Work.\n\n**Answer:** 12", None, ("Work.", "**Answer:** 12", ["no_reasoning_tags"]),
                     id="no-tags-markdown-answer"),
        pytest.param("Work.\n\nfinal answer: 7\n\nDouble-checked.", None,
                     ("Work.", "final answer: 7\n\nDouble-checked.", ["no_reasoning_tags"]),
                     id="no-tags-answer-then-more"),
        pytest.param("Work.\n\nThe final answer is 9.", None,
                     ("Work.", "The final answer is 9.", ["no_reasoning_tags"]),
                     id="no-tags-final-answer-is"),
        pytest.param("\\boxed{1} first try.\n\nNo wait.\n\n\\fbox{2}", None,
                     ("\\boxed{1} first try.\n\nNo wait.", "\\fbox{2}", ["no_reasoning_tags"]),
                     id="no-tags-last-box"),
        pytest.param("Answer: 5", None, ("", "Answer: 5", ["no_reasoning_tags"]), id="no-tags-answer-only"),
        pytest.param("Just musing about it.", None, ("Just musing about it.", "", ["no_reasoning_tags"]),
                     id="no-tags-no-statement"),
        pytest.param("", None, ("", "", ["empty_completion"]), id="empty"),
        pytest.param("  \n ", None, ("", "", ["empty_completion"]), id="whitespace"),
        pytest.param("", "only thought", ("only thought", "", []), id="empty-completion-server-reasoning"),
    ],
)
def test_split_reasoning(completion, reasoning, expected):
    assert split_reasoning(completion, reasoning, OPEN, CLOSE) == expected


def test_split_reasoning_custom_tags():
    assert split_reasoning("[R]x[/R] y", None, "[R]", "[/R]") == ("x", "y", [])


@pytest.mark.parametrize(
    ("text", "answer_type", "choices", "expected"),
    [
        pytest.param("$\\boxed{42}$", "math", None, "42", id="boxed"),
        pytest.param("\\boxed{\\frac{1}{2}}", "math", None, "\\frac{1}{2}", id="nested-boxed"),
        pytest.param("\\boxed{\\{1,2\\}}", "math", None, "\\{1,2\\}", id="escaped-braces"),
        pytest.param("\\boxed{1} then \\boxed{ 2 }", "math", None, "2", id="last-boxed-wins"),
        pytest.param("\\fbox{x^2}", None, None, "x^2", id="fbox"),
        pytest.param("so $\\boxed 5$.", "numeric", None, "5", id="boxed-space-form"),
        pytest.param("\\boxed{1} and then \\boxed{2", "math", None, None, id="truncated-last-box"),
        pytest.param("\\boxed{}", "math", None, None, id="empty-box"),
        pytest.param("Answer: 17.", "numeric", None, "17", id="answer-line"),
        pytest.param("Answer: 1\nAnswer: 2", "numeric", None, "2", id="last-answer-line"),
        pytest.param("final answer: $x+1$", "math", None, "x+1", id="final-answer-dollars"),
        pytest.param("**Answer:** 12", "numeric", None, "12", id="markdown-answer"),
        pytest.param("**Final Answer**: **7**", "numeric", None, "7", id="markdown-final-answer"),
        pytest.param("**Answer:**\n\n42", "numeric", None, "42", id="answer-on-next-line"),
        pytest.param("The final answer is 3.5.", "numeric", None, "3.5", id="final-answer-is"),
        pytest.param("Final Answer: The final answer is $5$. I hope it is correct.", "math", None, "5",
                     id="minerva"),
        pytest.param("Answer: the area is $\\boxed{9}$.", "math", None, "9", id="boxed-in-answer-line"),
        pytest.param("\\boxed{3}\n\nAnswer: 4", "numeric", None, "4", id="later-line-beats-box"),
        pytest.param("Answer: Paris", "text", None, "Paris", id="text"),
        pytest.param("It costs $5", "numeric", None, None, id="no-statement"),
        pytest.param("", "math", None, None, id="empty"),
        # choice
        pytest.param("\\boxed{B}", "choice", ["1", "2", "3", "4"], "B", id="choice-boxed"),
        pytest.param("$\\boxed{(B)}$", "choice", ["1", "2", "3", "4"], "B", id="choice-boxed-parens"),
        pytest.param("\\boxed{\\text{C}}", "choice", ["1", "2", "3", "4"], "C", id="choice-boxed-text"),
        pytest.param("Answer: (C)", "choice", ["1", "2", "3"], "C", id="choice-answer-line"),
        pytest.param("Answer: (b)", "choice", ["1", "2", "3"], "B", id="choice-lowercase-parens"),
        pytest.param("**Answer: D) 4**", "choice", ["1", "2", "3", "4"], "D", id="choice-letter-with-text"),
        pytest.param("So the answer is D.", "choice", ["1", "2", "3", "4"], "D", id="choice-answer-is"),
        pytest.param("the correct option is (A), since", "choice", ["x", "y"], "A", id="choice-option-is"),
        pytest.param("Reasoning here.\nB.", "choice", ["1", "2"], "B", id="choice-bare-line"),
        pytest.param("Thinking.\n**C**", "choice", ["1", "2", "3"], "C", id="choice-bare-bold"),
        pytest.param("Answer: Mitochondria", "choice", ["Nucleus", "mitochondria", "Ribosome"], "B",
                     id="choice-option-text"),
        pytest.param("\\boxed{42}", "choice", ["41", "42"], "B", id="choice-boxed-option-text"),
        pytest.param("Answer: same", "choice", ["same", "Same"], None, id="choice-ambiguous-option-text"),
        pytest.param("Answer: E", "choice", ["1", "2", "3", "4"], None, id="choice-letter-out-of-range"),
        pytest.param("\\boxed{C}", "choice", ["1", "2"], None, id="choice-boxed-out-of-range"),
        pytest.param("Answer: E", "choice", None, "E", id="choice-without-choices"),
        pytest.param("A. 1\nB. 2", "choice", ["1", "2"], None, id="choice-listed-options-not-an-answer"),
        pytest.param("The answer is A function of x", "choice", ["1", "2"], None, id="choice-article-a"),
        # code
        pytest.param("Here:\n```python\ndef f():\n    return 1\n```\n", "code", None,
                     "def f():\n    return 1", id="code-python"),
        pytest.param("```\nprint(1)\n```", "code", None, "print(1)", id="code-no-language"),
        pytest.param("```py\nx = 1\n```\nbetter:\n```python\nx = 2\n```", "code", None, "x = 2",
                     id="code-last-block"),
        pytest.param("```python\nx = 1\n```\n```python\nunfinished", "code", None, "x = 1",
                     id="code-unclosed-last"),
        pytest.param("def f(): return 1", "code", None, None, id="code-no-fence"),
    ],
)
def test_extract_final_answer(text, answer_type, choices, expected):
    assert extract_final_answer(text, answer_type, choices) == expected


def test_config_rejects_unknown_flags_and_keys():
    assert ParseConfig().reject == []
    with pytest.raises(ValidationError):
        ParseConfig(reject=["no_reasoning_tags"])
    with pytest.raises(ValidationError):
        ParseConfig(think_tag="<t>")


def trace(trace_id: str, completion: str | None, problem_id: str = "p-math", **fields) -> dict:
    row = {name: None for name in TRACES.names}
    row.update(trace_id=trace_id, problem_id=problem_id, variant="original", sample_index=0,
               teacher={"backend": "vllm", "model": "m", "revision": None, "sampling_params": "{}",
                        "seed": 1, "prompt_template_hash": "h"},
               completion=completion, finish_reason="stop", prompt_tokens=10, completion_tokens=50)
    row.update(fields)
    return row


def problem(problem_id: str, answer_type: str, choices: list[str] | None = None) -> dict:
    row = {name: None for name in PROBLEMS.names}
    row.update(problem_id=problem_id, question="q", answer="a", answer_type=answer_type, choices=choices)
    return row


PROBLEM_TABLE = pa.Table.from_pylist(
    [problem("p-math", "math"), problem("p-choice", "choice", ["red", "green", "blue"]),
     problem("p-code", "code")],
    schema=PROBLEMS,
)

ROWS = [
    trace("t-ok", "<think>two plus two</think>\n\nSo $\\boxed{4}$."),
    trace("t-long", "<think>going on and on", finish_reason="length", completion_tokens=1024),
    trace("t-choice", "<think>hmm</think>The answer is green.", problem_id="p-choice"),
    trace("t-code", "I will write it.\n```python\nprint(1)\n```", problem_id="p-code"),
    trace("t-none", "", flags=["from_ingest"]),
    trace("t-unknown", "Answer: B", problem_id="p-missing"),
    trace("t-server", "Answer: 9", reasoning="three squared"),
    trace("t-noanswer", "<think>a</think>I am not sure."),
]


def run(rows: list[dict], config: ParseConfig, schema: pa.Schema = TRACES):
    return parse(pa.Table.from_pylist(rows, schema=schema), config, CTX, PROBLEM_TABLE)


def by_id(table: pa.Table) -> dict[str, dict]:
    return {r["trace_id"]: r for r in table.to_pylist()}


def test_parse_keeps_every_row_flagged_by_default():
    result = run(ROWS, ParseConfig())
    assert result.rows.schema == TRACES
    assert result.rejected.num_rows == 0
    rows = by_id(result.rows)
    assert list(rows) == [r["trace_id"] for r in ROWS]

    ok = rows["t-ok"]
    assert (ok["reasoning"], ok["answer"], ok["final_answer"], ok["flags"]) == \
        ("two plus two", "So $\\boxed{4}$.", "4", [])
    assert (ok["reasoning_tokens"], ok["answer_tokens"]) == (3, 2)
    assert ok["teacher"]["model"] == "m" and ok["completion_tokens"] == 50

    assert rows["t-long"]["flags"] == ["empty_answer", "truncated", "unclosed_reasoning"]
    assert rows["t-long"]["final_answer"] is None and rows["t-long"]["answer_tokens"] == 0
    assert rows["t-choice"]["final_answer"] == "B" and rows["t-choice"]["flags"] == []
    # No tags: the split finds no statement, so the code is looked for in the whole completion.
    assert rows["t-code"]["final_answer"] == "print(1)"
    assert rows["t-code"]["flags"] == ["no_reasoning_tags"]
    assert rows["t-none"]["flags"] == ["empty_answer", "empty_completion", "from_ingest"]
    assert rows["t-unknown"]["final_answer"] == "B"  # unknown problem: no answer type, plain extraction
    assert (rows["t-server"]["reasoning"], rows["t-server"]["final_answer"]) == ("three squared", "9")
    assert rows["t-noanswer"]["flags"] == ["empty_answer"]


def test_parse_rejects_configured_flags_and_accounts_for_every_row():
    config = ParseConfig(reject=["truncated", "empty_answer"])
    result = run(ROWS, config)
    assert result.rows.num_rows + result.rejected.num_rows == len(ROWS)
    assert set(by_id(result.rows)) == {"t-ok", "t-choice", "t-code", "t-unknown", "t-server"}
    rejected = {r["trace_id"]: r for r in result.rejected.to_pylist()}
    assert {k: r["reason"] for k, r in rejected.items()} == \
        {"t-long": "truncated", "t-none": "empty_answer", "t-noanswer": "empty_answer"}
    long = rejected["t-long"]
    assert long["table"] == "traces" and long["problem_id"] == "p-math"
    assert long["detail"] == "finish_reason=length after 1024 completion tokens"
    stored = json.loads(long["row"])
    assert stored["flags"] == ["empty_answer", "truncated", "unclosed_reasoning"]
    assert stored["reasoning"] == "going on and on" and stored["reasoning_tokens"] == 4


def test_reject_reason_follows_config_order():
    result = run([ROWS[1]], ParseConfig(reject=["unclosed_reasoning", "truncated"]))
    assert result.rows.num_rows == 0
    assert result.rejected.to_pylist()[0]["reason"] == "unclosed_reasoning"


def test_extra_columns_and_existing_flags_survive():
    schema = TRACES.append(pa.field("score", pa.float64()))
    rows = [{**trace("t1", "x</think>Answer: 3", flags=["dup", "audit"]), "score": 0.5}]
    result = run(rows, ParseConfig(), schema)
    assert result.rows.schema == schema
    row = result.rows.to_pylist()[0]
    assert row["score"] == 0.5
    assert row["flags"] == ["audit", "dup"]
    assert (row["reasoning"], row["final_answer"]) == ("x", "3")


def test_existing_final_answer_is_kept_when_none_is_found():
    rows = [trace("t1", "<think>a</think>I think it's seven", final_answer="7"),
            trace("t2", "<think>a</think>\\boxed{8}", final_answer="7")]
    result = by_id(run(rows, ParseConfig()).rows)
    assert (result["t1"]["final_answer"], result["t1"]["flags"]) == ("7", [])
    assert result["t2"]["final_answer"] == "8"


def test_pre_split_ingested_trace_is_parsed_from_its_fields():
    rows = [trace("t1", None, reasoning="think hard", answer="Answer: 11")]
    row = run(rows, ParseConfig()).rows.to_pylist()[0]
    assert (row["reasoning"], row["answer"], row["final_answer"], row["flags"]) == \
        ("think hard", "Answer: 11", "11", [])


def test_reference_trace_answer_is_not_the_whole_solution():
    solution = "Add the numbers: 2 + 2 = 4."
    rows = [trace("t1", f"{solution}\n\nThe final answer is $\\boxed{{4}}$.", reasoning=solution)]
    row = run(rows, ParseConfig()).rows.to_pylist()[0]
    assert (row["reasoning"], row["answer"], row["final_answer"]) == \
        (solution, "The final answer is $\\boxed{4}$.", "4")


def test_tokenizer_is_called_once_per_column():
    calls = []

    def count(texts):
        calls.append(list(texts))
        return [len(t.split()) for t in texts]

    ctx = SimpleNamespace(tokenizer=SimpleNamespace(count=count))
    parse(pa.Table.from_pylist(ROWS, schema=TRACES), ParseConfig(), ctx, PROBLEM_TABLE)
    assert len(calls) == 2 and all(len(c) == len(ROWS) for c in calls)


def test_empty_batch():
    result = run([], ParseConfig(reject=["truncated"]))
    assert (result.rows.num_rows, result.rejected.num_rows) == (0, 0)
    assert result.rows.schema == TRACES
