"""Hugging Face datasets through ``datasets.load_dataset``: Hub ids, local dataset folders, streaming.

The revision is resolved to a commit before loading, so provenance names the exact data a run
read even when the recipe says "main" (or nothing).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stages.sources.sample import choose

log = logging.getLogger(__name__)

ROW_KEY = "__tracefoundry_row"


def resolve_revision(path: str, revision: str | None) -> str | None:
    """The commit sha of a Hub dataset; local folders and offline runs keep what the recipe said."""
    if Path(path).exists():
        return revision
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        return revision
    try:
        return HfApi().dataset_info(path, revision=revision).sha or revision
    except Exception as e:  # the load below reports real problems with a better message
        log.warning("could not resolve the revision of %s (%s); recording %r", path, e, revision)
        return revision


def iter_rows(path: str, config: str | None, split: str, revision: str | None, *, streaming: bool,
              sample: int | None, seed: int, data_files: list[str] | None = None,
              ) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (row index in the split, row). With ``sample``, a seeded sample of that many rows."""
    import datasets

    ds = datasets.load_dataset(path, name=config, split=split, revision=revision, streaming=streaming,
                               data_files=data_files)
    if streaming:
        ds = ds.map(lambda row, i: {ROW_KEY: i}, with_indices=True)
        if sample is not None:
            ds = ds.shuffle(seed=seed, buffer_size=10_000).take(sample)
        for row in ds:
            index = row.pop(ROW_KEY)
            yield index, row
        return
    if sample is None:
        yield from enumerate(ds)
        return
    indices = choose(len(ds), sample, seed)
    yield from zip(indices, ds.select(indices), strict=True)
