"""Shared fixtures. Tests that need a pipeline run share one session-scoped laptop run and one request
cache: the embedded teacher is slow, so nothing is generated twice in a session."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from importlib.resources import files
from pathlib import Path

import pytest

from pipelines.recipe import Recipe, parse_recipe
from pipelines.runner import Options, Report, run

# Tests never reach the internet.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

LAPTOP = str(files("pipelines.recipes") / "laptop.yaml")
SAMPLE = 16
MAX_TOKENS = 32  # small: the tests check plumbing, and every token costs CI time


def laptop_text() -> str:
    """The shipped laptop recipe with short completions and a test split that a small sample fills."""
    text = Path(LAPTOP).read_text()
    assert "max_tokens: 128" in text and "test_size: 0.1" in text, "laptop.yaml changed: update conftest"
    return text.replace("max_tokens: 128", f"max_tokens: {MAX_TOKENS}").replace("test_size: 0.1",
                                                                                "test_size: 0.25")


@dataclass(frozen=True)
class LaptopRun:
    recipe: Recipe
    text: str
    run_dir: Path
    reports: list[Report]
    sample: int
    request_cache: str

    def options(self, **changes) -> Options:
        """Options of the session run (same sample, same request cache), with changes."""
        base = Options(sample=self.sample, progress=False, request_cache=self.request_cache)
        return replace(base, **changes)


@pytest.fixture(scope="session")
def request_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("request_cache"))


@pytest.fixture(scope="session")
def laptop_run(tmp_path_factory: pytest.TempPathFactory, request_cache: str) -> LaptopRun:
    """The laptop recipe (embedded teacher), run once for the whole session on a small sample."""
    run_dir = tmp_path_factory.mktemp("laptop") / "run"
    text = laptop_text()
    recipe = parse_recipe(text, LAPTOP)
    options = Options(sample=SAMPLE, progress=False, request_cache=request_cache)
    reports = run(recipe, str(run_dir), options)
    return LaptopRun(recipe, text, run_dir, reports, SAMPLE, request_cache)
