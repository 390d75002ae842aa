"""Curating traces a team already has: ingest them, link them to problems, emit them."""

from __future__ import annotations

import json

import datasets
import polars as pl

from pipelines.recipe import parse_recipe
from pipelines.runner import Options, run
from pipelines.store import RunDir

RECIPE = """\
name: curate
stages:
  - name: problems
    uses: ingest
    sources: [{{kind: files, paths: ["{problems}"], name: mine, columns: {{question: prompt, answer: gold}}}}]
  - name: traces
    uses: ingest_traces
    sources:
      - {{kind: files, paths: ["{traces}"], name: mine, columns: {{question: prompt, completion: output}}}}
  - name: emit
    uses: emit
    inputs: [traces, problems]
    test_size: 0
"""


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_existing_traces_are_linked_to_their_problems_and_emitted(tmp_path):
    problems = write(tmp_path / "problems.jsonl", [{"prompt": "What is 2+2?", "gold": 4},
                                                    {"prompt": "What is 3*3?", "gold": "9"}])
    traces = write(tmp_path / "traces.jsonl", [
        {"prompt": "What is 2+2?", "output": "2+2 is 4. \\boxed{4}", "model": "my-teacher"},
        {"prompt": "What is  2+2?", "output": "Four."},  # same problem: whitespace does not matter
        {"prompt": "What is 3*3?", "output": "   "},  # nothing to learn from
        {"prompt": "What is 5-1?", "output": "4"},  # its problem was never ingested
    ])
    recipe = parse_recipe(RECIPE.format(problems=problems, traces=traces))
    run(recipe, str(tmp_path / "run"), Options(workers=1, progress=False))
    store = RunDir(str(tmp_path / "run"))

    ingested = store.manifest("traces")
    assert (ingested["rows_in"], ingested["rows_out"], ingested["rejected_by_reason"]) == \
        (4, 3, {"empty_trace": 1})
    rows = pl.read_parquet(tmp_path / "run" / "traces" / "part-*.parquet").to_dicts()
    assert [r["teacher"]["model"] for r in rows] == ["my-teacher", "mine", "mine"]
    assert len({r["trace_id"] for r in rows}) == 3

    emitted = store.manifest("emit")
    assert (emitted["rows_in"], emitted["rows_out"], emitted["rejected_by_reason"]) == \
        (3, 2, {"unknown_problem": 1})
    rejected = pl.read_parquet(tmp_path / "run" / "emit" / "rejected" / "*.parquet").to_dicts()
    assert json.loads(rejected[0]["row"])["completion"] == "4"

    sft = datasets.load_dataset("parquet", data_files=str(tmp_path / "run/emit/data/sft/train-*.parquet"))
    contents = sorted(m[-1]["content"] for m in sft["train"]["messages"])
    assert contents == ["2+2 is 4. \\boxed{4}", "Four."]  # unparsed completions go out as they are
    rl = datasets.load_dataset("parquet", data_files=str(tmp_path / "run/emit/data/rl/train-*.parquet"))
    assert rl["train"]["ground_truth"] == ["4"]
