"""The command line: help, stage listing, clear errors with exit status 1, and inspect."""

from __future__ import annotations

import pytest

from pipelines.cli import main


def test_help_explains_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--run-dir", "--sample", "--from", "--until", "--force", "--workers"):
        assert flag in out


def test_stages_lists_each_type_with_its_tables(capsys):
    assert main(["stages"]) == 0
    out = capsys.readouterr().out
    for name in ("ingest", "reference_traces", "emit"):
        assert name in out
    assert "problems" in out and "traces" in out


def test_recipe_error_exits_1_with_file_and_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstages:\n  - name: a\n    uses: ingest\n    sourcez: []\n")
    assert main(["run", str(bad), "--run-dir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:5: stages[0].sourcez: unknown key" in err


def test_unknown_shipped_recipe_lists_the_shipped_ones(tmp_path, capsys):
    assert main(["run", "lapto", "--run-dir", str(tmp_path)]) == 1
    assert "laptop" in capsys.readouterr().err


def test_inspect_shows_stages_and_shards(laptop_run, capsys):
    assert main(["inspect", str(laptop_run.run_dir), "--samples", "1"]) == 0
    out = capsys.readouterr().out
    assert "generate" in out and "parse" in out and "emit/data/sft" in out and "emit/data/rl" in out


def test_inspect_of_an_empty_folder_is_an_error(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 1
    assert "no finished stage" in capsys.readouterr().err
