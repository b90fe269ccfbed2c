"""Paired bootstrap confidence intervals for the difference between two models on the same items.

Both models speak the same items, so the question "is B worse than A?" is answered on the
per-item differences d_i = b_i - a_i: resample items with replacement, take the mean of d
over the resample, repeat, and read the 2.5th and 97.5th percentiles. Pairing removes the
item-to-item spread (some sentences are hard for every model), which is most of the
variance, so the interval is much tighter than one built from two independent means.
"""
from __future__ import annotations

import numpy as np


def paired_bootstrap(a, b, resamples: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean of ``b - a`` and its percentile bootstrap interval over items.

    ``a`` and ``b`` are per-item scores of two models on the same items, in the same order.
    Items where either value is None or NaN are left out (``n`` says how many remained).
    Returns ``{"delta", "ci95": [lo, hi], "n"}``; with fewer than 2 items the interval is
    the point itself. Deterministic for a given ``seed``.
    """
    if len(a) != len(b):
        raise ValueError(f"paired bootstrap needs the same items for both models: got {len(a)} and {len(b)} scores")
    if not 0 < level < 1:
        raise ValueError(f"level={level} must be in (0, 1), e.g. 0.95")
    if resamples < 1:
        raise ValueError(f"resamples={resamples} must be at least 1 (2000 is usual)")
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None and np.isfinite(x) and np.isfinite(y)]
    if not pairs:
        return {"delta": None, "ci95": [None, None], "n": 0}
    d = np.array([y - x for x, y in pairs], dtype=np.float64)
    delta = float(d.mean())
    if len(d) < 2:
        return {"delta": delta, "ci95": [delta, delta], "n": len(d)}
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    step = max(1, 2_000_000 // len(d))  # bound memory: at most ~2M indices at once
    for s in range(0, resamples, step):
        k = min(step, resamples - s)
        means[s : s + k] = d[rng.integers(0, len(d), size=(k, len(d)))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return {"delta": delta, "ci95": [float(lo), float(hi)], "n": len(d)}
