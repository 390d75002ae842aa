"""The ``ingest`` stage through the real local runner: JSONL, Parquet, CSV, globs, the Hub
(a local dataset folder), the built-in generator, sampling, ids and the ``rejected`` table.

Every test writes its own small source files under ``tmp_path``, builds a one-stage recipe from
YAML text and reads back what the runner committed: the problem parts, the rejected parts and the
manifest.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import yaml

from pipelines.recipe import parse_recipe
from pipelines.runner import Options, StageFailed, run
from schemas.ids import normalise_question, problem_id
from schemas.tables import PROBLEMS, REJECTED

# --- helpers ---


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    """One line per item: dicts and lists as JSON, strings written as they are (bad lines, blanks)."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def files_source(*paths: Path | str, **extra: Any) -> dict[str, Any]:
    return {"kind": "files", "paths": [str(p) for p in paths], **extra}


def recipe_text(sources: list[dict[str, Any]], seed: int = 0, **config: Any) -> str:
    stage = {"name": "ingest", "uses": "ingest", "sources": sources, **config}
    return yaml.safe_dump({"name": "t", "seed": seed, "tokenizer": "embedded", "stages": [stage]})


def read_parts(folder: Path, schema: pa.Schema) -> pa.Table:
    parts = sorted(folder.glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(p) for p in parts]) if parts else schema.empty_table()


def run_ingest(run_dir: Path, sources: list[dict[str, Any]], *, sample: int | None = None, seed: int = 0,
               **config: Any) -> tuple[pa.Table, pa.Table, dict[str, Any]]:
    """Run a one-stage ingest recipe; return (problems, rejected, manifest)."""
    recipe = parse_recipe(recipe_text(sources, seed, **config), path="t.yaml")
    run(recipe, str(run_dir), Options(workers=1, progress=False, sample=sample))
    stage = run_dir / "ingest"
    manifest = json.loads((stage / "_manifest.json").read_text())
    problems, rejected = read_parts(stage, PROBLEMS), read_parts(stage / "rejected", REJECTED)
    assert manifest["rows_in"] == manifest["rows_out"] + manifest["rows_rejected"]
    assert (problems.num_rows, rejected.num_rows) == (manifest["rows_out"], manifest["rows_rejected"])
    return problems, rejected, manifest


def column(table: pa.Table, name: str) -> list[Any]:
    return table.column(name).to_pylist()


def source_field(table: pa.Table, field: str) -> list[Any]:
    return [s[field] for s in column(table, "source")]


def ids(table: pa.Table) -> list[str]:
    return column(table, "problem_id")


def numbered(n: int, prefix: str = "Question") -> list[dict[str, Any]]:
    return [{"question": f"{prefix} number {i}?", "answer": str(i)} for i in range(n)]


# --- JSONL: every kind of bad row is rejected with its location, and nothing is lost ---

GOOD_FIRST = {"question": "What is 1 + 1?", "answer": "2", "topic": "arithmetic"}
BAD_JSON = '{"question": "Is this line closed?"'
ARRAY_LINE = '[1, 2, 3]'
# (line content, reason, field named in the detail or None); line numbers are 1-based positions
PLANTED: list[tuple[Any, str | None, str | None]] = [
    (GOOD_FIRST, None, None),                                             # line 1
    ({"answer": "5"}, "missing_question", "question"),                    # line 2
    ({"question": None, "answer": "1"}, "missing_question", "question"),  # line 3
    ({"question": "  \t  "}, "empty_question", "question"),               # line 4
    ({"question": 42}, "wrong_type", "question"),                         # line 5
    (BAD_JSON, "unreadable", None),                                       # line 6
    (ARRAY_LINE, "unreadable", None),                                     # line 7
    ({"question": "Why? " * 20}, "oversized", "question"),                # line 8
    ({"question": "What is 1 + 1?", "answer": "2"}, "duplicate_id", None),  # line 9
    ({"question": "How many sides has a triangle?", "answer": 3}, None, None),  # line 10
    ({"question": "What is half of six?", "answer": 3.0}, None, None),    # line 11
    ("", None, None),                                                     # line 12: blank, no row
    ({"question": "What is 5 / 2?", "answer": 2.5}, None, None),          # line 13
    ({"question": "Spell it out?", "answer": "y" * 30}, "oversized", "answer"),  # line 14
    ({"question": "Is a bool an answer?", "answer": True}, "wrong_type", "answer"),  # line 15
]


def test_jsonl_bad_rows_are_rejected_with_location_reason_and_original_row(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "mixed.jsonl", [line for line, _, _ in PLANTED])
    problems, rejected, manifest = run_ingest(
        tmp_path / "run", [files_source(data, name="mydata")], max_question_chars=40, max_answer_chars=10)

    assert manifest["rows_in"] == 14  # the blank line holds no row
    assert manifest["rows_out"] == 4
    assert manifest["rejected_by_reason"] == {
        "duplicate_id": 1, "empty_question": 1, "missing_question": 2, "oversized": 2, "unreadable": 2,
        "wrong_type": 2,
    }

    # kept rows, in file order, numbers as exact text, unmapped columns in metadata
    assert column(problems, "question") == ["What is 1 + 1?", "How many sides has a triangle?",
                                            "What is half of six?", "What is 5 / 2?"]
    assert column(problems, "answer") == ["2", "3", "3", "2.5"]
    assert source_field(problems, "row") == [0, 9, 10, 12]
    assert set(source_field(problems, "dataset")) == {"mydata"}
    assert column(problems, "answer_type") == ["math"] * 4
    assert json.loads(column(problems, "metadata")[0]) == {"topic": "arithmetic"}
    assert column(problems, "metadata")[1:] == [None, None, None]
    assert len(set(ids(problems))) == 4

    # every rejected row: reason, where (file and 1-based line), which field, and the row itself
    expected = [(n, line, reason, field) for n, (line, reason, field) in enumerate(PLANTED, start=1)
                if reason is not None]
    assert column(rejected, "reason") == [reason for _, _, reason, _ in expected]
    assert set(column(rejected, "stage")) == {"ingest"}
    assert set(column(rejected, "stage_type")) == {"ingest"}
    assert set(column(rejected, "table")) == {"source"}
    for (n, line, _, field), got in zip(expected, rejected.to_pylist(), strict=True):
        assert got["detail"].startswith(f"{data} line {n}: "), got["detail"]
        if field is not None:
            assert f"'{field}'" in got["detail"], got["detail"]
        assert got["source"]["row"] == n - 1
        assert got["source"]["dataset"] == "mydata"
        if isinstance(line, str):  # unparsable: the exact text of the line
            assert got["row"] == line
        else:  # parsed: the same JSON object
            assert json.loads(got["row"]) == line

    unreadable = [d for r, d in zip(column(rejected, "reason"), column(rejected, "detail"), strict=True)
                  if r == "unreadable"]
    assert "invalid JSON" in unreadable[0]
    assert "JSON object" in unreadable[1]

    dup = rejected.filter(pa.compute.equal(rejected["reason"], "duplicate_id")).to_pylist()[0]
    assert dup["related_id"] == ids(problems)[0]
    assert dup["detail"] == f"{data} line 9: same question as {data} line 1"
    others = rejected.filter(pa.compute.not_equal(rejected["reason"], "duplicate_id"))
    assert set(column(others, "related_id")) == {None}


def test_jsonl_invalid_utf8_rejects_one_line_not_the_file(tmp_path: Path) -> None:
    data = tmp_path / "bytes.jsonl"
    data.write_bytes(b'{"question": "Fine?"}\n{"question": "Bad \xff byte?"}\r\n{"question": "Also fine?"}\n')
    problems, rejected, manifest = run_ingest(tmp_path / "run", [files_source(data, name="b")])

    assert column(problems, "question") == ["Fine?", "Also fine?"]
    assert manifest["rejected_by_reason"] == {"unreadable": 1}
    bad = rejected.to_pylist()[0]
    assert bad["detail"].startswith(f"{data} line 2: ")
    assert "UTF-8" in bad["detail"]
    assert bad["row"] == '{"question": "Bad \\xff byte?"}'  # kept, bad byte escaped, no line ending
    assert bad["source"]["row"] == 1


def test_crlf_jsonl_keeps_line_numbers_and_clean_raw_text(tmp_path: Path) -> None:
    data = tmp_path / "crlf.jsonl"
    data.write_bytes(b'{"question": "One?"}\r\nnot json\r\n\r\n{"question": "Four?"}\r\n')
    problems, rejected, _ = run_ingest(tmp_path / "run", [files_source(data, name="c")])

    assert column(problems, "question") == ["One?", "Four?"]
    assert source_field(problems, "row") == [0, 3]
    assert column(rejected, "row") == ["not json"]
    assert column(rejected, "detail")[0].startswith(f"{data} line 2: invalid JSON")


def test_gzipped_jsonl(tmp_path: Path) -> None:
    data = tmp_path / "packed.jsonl.gz"
    lines = [*(json.dumps(r) for r in numbered(3)), "oops"]
    data.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    problems, rejected, _ = run_ingest(tmp_path / "run", [files_source(data, name="gz")])

    assert column(problems, "question") == [f"Question number {i}?" for i in range(3)]
    assert column(rejected, "row") == ["oops"]
    assert column(rejected, "detail")[0].startswith(f"{data} line 4: invalid JSON")


# --- Parquet and CSV: column mappings, metadata, missing columns ---


def test_parquet_with_column_mapping_and_metadata(tmp_path: Path) -> None:
    data = tmp_path / "probs.parquet"
    pq.write_table(pa.table({
        "prompt": ["Add 2 and 3.", "Multiply 4 by 5.", None],
        "gold": [5, 20, 1],
        "difficulty": ["easy", "medium", "hard"],
        "tags": [["add"], ["mul", "x"], []],
        "origin_id": [101, 102, 103],
    }), data)
    mapping = {"question": "prompt", "answer": "gold", "level": "difficulty"}
    source = files_source(data, name="pq", columns=mapping)
    problems, rejected, manifest = run_ingest(tmp_path / "run", [source])

    assert column(problems, "question") == ["Add 2 and 3.", "Multiply 4 by 5."]
    assert column(problems, "answer") == ["5", "20"]
    assert column(problems, "level") == ["easy", "medium"]
    assert [json.loads(m) for m in column(problems, "metadata")] == [
        {"tags": ["add"], "origin_id": 101}, {"tags": ["mul", "x"], "origin_id": 102}]
    assert source_field(problems, "row") == [0, 1]
    assert manifest["rejected_by_reason"] == {"missing_question": 1}
    bad = rejected.to_pylist()[0]
    assert str(data) in bad["detail"] and "'question'" in bad["detail"]
    assert bad["source"]["row"] == 2
    assert json.loads(bad["row"])["origin_id"] == 103  # the whole source row, unmapped columns included

    # keep_metadata: false drops the unmapped columns
    problems, _, _ = run_ingest(tmp_path / "run2", [source], keep_metadata=False)
    assert column(problems, "metadata") == [None, None]


def test_csv_with_column_mapping_and_metadata(tmp_path: Path) -> None:
    data = tmp_path / "probs.csv"
    data.write_text(
        "problem,worked,answer,url\n"
        "What is 3 times 4?,3 x 4 = 12,12,https://example.org/1\n"
        ",nothing,0,https://example.org/2\n"
        "What is 10 halved?,10 / 2 = 5,5,https://example.org/3\n",
        encoding="utf-8",
    )
    source = files_source(data, name="csv", columns={"question": "problem", "solution": "worked"},
                          domain="arithmetic")
    problems, rejected, manifest = run_ingest(tmp_path / "run", [source])

    assert column(problems, "question") == ["What is 3 times 4?", "What is 10 halved?"]
    assert column(problems, "solution") == ["3 x 4 = 12", "10 / 2 = 5"]
    assert column(problems, "answer") == ["12", "5"]  # same-name column, numbers as text
    assert column(problems, "domain") == ["arithmetic", "arithmetic"]
    assert [json.loads(m) for m in column(problems, "metadata")] == [
        {"url": "https://example.org/1"}, {"url": "https://example.org/3"}]
    assert source_field(problems, "row") == [0, 2]
    assert manifest["rejected_by_reason"] == {"empty_question": 1}
    bad = rejected.to_pylist()[0]
    assert str(data) in bad["detail"] and "'question'" in bad["detail"]
    assert bad["source"]["row"] == 1
    assert json.loads(bad["row"])["url"] == "https://example.org/2"


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_mapped_column_missing_from_a_columnar_file_fails_naming_file_and_column(
        tmp_path: Path, fmt: str) -> None:
    data = tmp_path / f"nogold.{fmt}"
    table = pa.table({"prompt": ["What is 1 + 1?"], "answer": ["2"]})
    pq.write_table(table, data) if fmt == "parquet" else pacsv.write_csv(table, data)
    source = files_source(data, columns={"question": "prompt", "answer": "gold"})
    recipe = parse_recipe(recipe_text([source]), path="t.yaml")

    with pytest.raises(StageFailed) as exc:
        run(recipe, str(tmp_path / "run"), Options(workers=1, progress=False))
    assert str(data) in str(exc.value)
    assert "gold" in str(exc.value)
    assert not (tmp_path / "run" / "ingest" / "_manifest.json").exists()  # nothing committed


# --- globs ---


def test_glob_reads_matched_files_in_sorted_order(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "b.jsonl", numbered(2, "B"))  # written first, read second
    write_jsonl(folder / "a.jsonl", [*numbered(3, "A"), {"question": "B number 1?"}])
    (folder / "notes.txt").write_text("not matched")
    problems, rejected, _ = run_ingest(tmp_path / "run", [files_source(f"{folder}/*.jsonl", name="g")])

    assert column(problems, "question") == ["A number 0?", "A number 1?", "A number 2?", "B number 1?",
                                            "B number 0?"]
    assert source_field(problems, "row") == [0, 1, 2, 3, 0]  # row indices restart in each file
    # b.jsonl's line 2 repeats a.jsonl's line 4: a.jsonl was read first, and the detail names both
    a, b = folder / "a.jsonl", folder / "b.jsonl"
    assert column(rejected, "detail") == [f"{b} line 2: same question as {a} line 4"]


@pytest.mark.parametrize("pattern", ["nothing-*.jsonl", "missing.jsonl"])
def test_path_matching_nothing_fails_naming_it(tmp_path: Path, pattern: str) -> None:
    recipe = parse_recipe(recipe_text([files_source(tmp_path / pattern)]), path="t.yaml")
    with pytest.raises(StageFailed) as exc:
        run(recipe, str(tmp_path / "run"), Options(workers=1, progress=False))
    assert str(tmp_path / pattern) in str(exc.value)


def test_unknown_file_extension_asks_for_format(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "problems.txt", numbered(2))
    recipe = parse_recipe(recipe_text([files_source(data)]), path="t.yaml")
    with pytest.raises(StageFailed, match="format") as exc:
        run(recipe, str(tmp_path / "run"), Options(workers=1, progress=False))
    assert str(data) in str(exc.value)

    problems, _, _ = run_ingest(tmp_path / "run2", [files_source(data, format="jsonl")])
    assert problems.num_rows == 2


# --- sampling ---


def test_sample_is_exact_and_seeded(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "fifty.jsonl", numbered(50))
    source = [files_source(data, name="fifty")]
    everything = set(ids(run_ingest(tmp_path / "all", source)[0]))
    assert len(everything) == 50

    first, _, manifest = run_ingest(tmp_path / "s0a", source, sample=10, seed=0)
    again, _, _ = run_ingest(tmp_path / "s0b", source, sample=10, seed=0)
    other, _, _ = run_ingest(tmp_path / "s1", source, sample=10, seed=1)

    assert first.num_rows == again.num_rows == other.num_rows == 10
    assert manifest["rows_in"] == 10 and manifest["sample"] == 10
    assert set(ids(first)) == set(ids(again))
    assert set(ids(first)) != set(ids(other))
    assert set(ids(first)) | set(ids(other)) <= everything
    rows = source_field(first, "row")
    assert rows == sorted(rows)  # a sample keeps source order

    bigger, _, _ = run_ingest(tmp_path / "big", source, sample=500)
    assert set(ids(bigger)) == everything


def test_sample_counts_rows_not_lines_when_jsonl_has_blank_lines(tmp_path: Path) -> None:
    rows: list[Any] = []
    for r in numbered(20):
        rows += [r, ""]
    data = write_jsonl(tmp_path / "spaced.jsonl", rows)
    problems, _, _ = run_ingest(tmp_path / "run", [files_source(data)], sample=15, seed=3)
    assert problems.num_rows == 15
    assert all(r % 2 == 0 for r in source_field(problems, "row"))  # source.row is still line - 1


def test_sample_across_files_of_a_glob(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", numbered(10, "A"))
    write_jsonl(tmp_path / "b.jsonl", numbered(10, "B"))
    problems, _, _ = run_ingest(tmp_path / "run", [files_source(f"{tmp_path}/*.jsonl")], sample=12)
    questions = column(problems, "question")
    assert len(set(questions)) == 12
    assert {q[0] for q in questions} == {"A", "B"}  # 12 of 20 cannot all come from one file of 10


# --- Hub source on a local dataset folder ---


@pytest.fixture
def hub_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    folder = tmp_path / "hubdata"
    folder.mkdir()
    train = numbered(6, "Train")
    train[2] = {"question": "   ", "answer": "2"}
    write_jsonl(folder / "train.jsonl", train)
    write_jsonl(folder / "test.jsonl", numbered(3, "Test"))
    return folder


def hub_source(folder: Path, **extra: Any) -> dict[str, Any]:
    return {"kind": "hub", "path": str(folder), "name": "localhub", **extra}


def test_hub_local_folder_rows_and_provenance(tmp_path: Path, hub_folder: Path) -> None:
    problems, rejected, manifest = run_ingest(tmp_path / "run", [hub_source(hub_folder, split="train")])

    assert column(problems, "question") == [f"Train number {i}?" for i in (0, 1, 3, 4, 5)]
    assert column(problems, "answer") == ["0", "1", "3", "4", "5"]
    assert source_field(problems, "row") == [0, 1, 3, 4, 5]
    assert set(source_field(problems, "dataset")) == {"localhub"}
    assert set(source_field(problems, "split")) == {"train"}
    assert manifest["rejected_by_reason"] == {"empty_question": 1}
    bad = rejected.to_pylist()[0]
    assert bad["detail"].startswith(f"{hub_folder} [train] row 2: ") and "'question'" in bad["detail"]
    assert bad["source"]["split"] == "train" and bad["source"]["row"] == 2

    test_split, _, _ = run_ingest(tmp_path / "run-test", [hub_source(hub_folder, split="test")])
    assert column(test_split, "question") == [f"Test number {i}?" for i in range(3)]
    assert set(source_field(test_split, "split")) == {"test"}


def test_hub_streaming_gives_the_same_problems(tmp_path: Path, hub_folder: Path) -> None:
    plain, plain_rejected, _ = run_ingest(tmp_path / "plain", [hub_source(hub_folder)])
    streamed, streamed_rejected, _ = run_ingest(tmp_path / "stream", [hub_source(hub_folder, streaming=True)])

    assert plain.num_rows == 5
    assert ids(streamed) == ids(plain)
    assert column(streamed, "source") == column(plain, "source")
    assert column(streamed_rejected, "source") == column(plain_rejected, "source")


@pytest.mark.parametrize("streaming", [False, True])
def test_hub_sample(tmp_path: Path, hub_folder: Path, streaming: bool) -> None:
    source = [hub_source(hub_folder, split="test", streaming=streaming)]
    first, _, _ = run_ingest(tmp_path / "a", source, sample=2, seed=5)
    again, _, _ = run_ingest(tmp_path / "b", source, sample=2, seed=5)
    assert first.num_rows == 2
    assert ids(first) == ids(again)
    assert set(source_field(first, "row")) <= {0, 1, 2}


# --- problem ids ---


def test_problem_id_ignores_whitespace_but_not_the_dataset_name(tmp_path: Path) -> None:
    one = write_jsonl(tmp_path / "one.jsonl", [{"question": "What is  2 +\n 2?", "answer": "4"}])
    two = write_jsonl(tmp_path / "two.jsonl", [{"question": "  What is 2 + 2?\t", "answer": "4"}])

    same, rejected, _ = run_ingest(
        tmp_path / "same", [files_source(one, name="shared"), files_source(two, name="shared")])
    assert same.num_rows == 1
    assert column(rejected, "reason") == ["duplicate_id"]
    assert column(rejected, "related_id") == ids(same)
    assert column(rejected, "detail") == [f"{two} line 1: same question as {one} line 1"]
    assert ids(same) == [problem_id("What is 2 + 2?", "shared")]
    assert normalise_question("What is  2 +\n 2?") == "What is 2 + 2?"

    apart, rejected, _ = run_ingest(
        tmp_path / "apart", [files_source(one, name="alpha"), files_source(two, name="beta")])
    assert apart.num_rows == 2 and rejected.num_rows == 0
    assert len(set(ids(apart))) == 2
    assert ids(same)[0] not in ids(apart)

    again, _, _ = run_ingest(
        tmp_path / "again", [files_source(one, name="alpha"), files_source(two, name="beta")])
    assert ids(again) == ids(apart)  # same content, same ids, in any run directory


# --- the built-in generator ---


def test_synthetic_source(tmp_path: Path) -> None:
    from stages.sources.synthetic_problems import LEVELS

    problems, rejected, manifest = run_ingest(tmp_path / "run", [{"kind": "synthetic", "n": 30}])

    assert problems.num_rows == 30 and rejected.num_rows == 0
    assert manifest["rows_in"] == 30
    assert len(set(ids(problems))) == 30
    assert all(a and a.strip() for a in column(problems, "answer"))
    assert all(s and s.strip() for s in column(problems, "solution"))
    assert set(column(problems, "level")) <= set(LEVELS)
    assert set(column(problems, "domain")) == {"math"}
    assert source_field(problems, "row") == list(range(30))
    assert set(source_field(problems, "dataset")) == {"tracefoundry/synthetic"}
    assert set(source_field(problems, "config")) == {"seed=0"}
    assert all("family" in json.loads(m) for m in column(problems, "metadata"))

    # same recipe, same bytes; --sample takes the first N of the same stream
    _, _, _ = run_ingest(tmp_path / "again", [{"kind": "synthetic", "n": 30}])
    part = "ingest/part-00000.parquet"
    assert (tmp_path / "run" / part).read_bytes() == (tmp_path / "again" / part).read_bytes()
    sampled, _, _ = run_ingest(tmp_path / "sampled", [{"kind": "synthetic", "n": 30}], sample=10)
    assert ids(sampled) == ids(problems)[:10]


def test_rejection_names_the_mapped_source_column(tmp_path):
    data = write_jsonl(tmp_path / "mapped.jsonl", [{"prompt": "What is 1 + 1?"}, {"prompt": ""}])
    source = files_source(data, columns={"question": "prompt"})
    problems, rejected, _ = run_ingest(tmp_path / "run", [source])
    assert problems.num_rows == 1
    expected = f"{data} line 2: field 'question' is empty (source column 'prompt')"
    assert column(rejected, "detail") == [expected]
