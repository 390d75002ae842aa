"""Deterministic sampling for laptop dry runs: the same seed picks the same rows on every machine."""

from __future__ import annotations

import numpy as np


def choose(total: int, n: int, seed: int) -> list[int]:
    """A seeded sample of row indices, in source order (stable reading, stable ids)."""
    if n >= total:
        return list(range(total))
    picked = np.random.default_rng(seed).choice(total, size=n, replace=False)
    return sorted(int(i) for i in picked)
