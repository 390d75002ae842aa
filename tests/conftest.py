"""Shared fixtures. Tests that need a pipeline run share one session-scoped laptop run."""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import pytest

from pipelines.recipe import Recipe, load_recipe
from pipelines.runner import Options, Report, run

# Tests never reach the internet.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

LAPTOP = str(files("pipelines.recipes") / "laptop.yaml")
SAMPLE = 60


@dataclass(frozen=True)
class LaptopRun:
    recipe: Recipe
    run_dir: Path
    reports: list[Report]
    sample: int


@pytest.fixture(scope="session")
def laptop_run(tmp_path_factory: pytest.TempPathFactory) -> LaptopRun:
    """The laptop recipe, run once for the whole session on a small sample."""
    run_dir = tmp_path_factory.mktemp("laptop") / "run"
    recipe = load_recipe(LAPTOP)
    reports = run(recipe, str(run_dir), Options(sample=SAMPLE, progress=False))
    return LaptopRun(recipe, run_dir, reports, SAMPLE)
