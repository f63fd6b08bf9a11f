"""Robust statistics on short host-side series (numpy; called at reductions, never per step)."""

from __future__ import annotations

import functools

import numpy as np

MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation


def median_mad(values: np.ndarray) -> tuple[float, float]:
    med = float(np.median(values))
    return med, float(np.median(np.abs(values - med)))


@functools.lru_cache(maxsize=8)
def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The index pairs (i < j) of n points: built once per length (the series keep a handful of lengths)."""
    return np.triu_indices(n, k=1)


def theil_sen(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(slope, Kendall tau) of y against x: the median pairwise slope, and how consistently y rises with x.

    Both ignore a few wild points, which is why they suit memory samples and noisy losses.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    i, j = _pairs(len(x))
    dx, dy = x[j] - x[i], y[j] - y[i]
    keep = dx != 0
    if not keep.any():
        return 0.0, 0.0
    slope = float(np.median(dy[keep] / dx[keep]))
    tau = float(np.mean(np.sign(dx[keep]) * np.sign(dy[keep])))
    return slope, tau
