"""Small, NaN-tolerant statistics for summarising repeated runs.

Runs that never reached a cutoff (or failed a metric) report NaN; every helper here ignores NaN so one
bad seed does not poison a whole group, and returns NaN rather than raising when there is too little
data, so a summary table can always be written.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from scipy.stats import mannwhitneyu


def _finite(values: Iterable[float | None]) -> np.ndarray:
    """Values as floats with None and NaN removed (None is how JSON spells a missing metric)."""
    arr = np.asarray([math.nan if v is None else float(v) for v in values], dtype=float)
    return arr[~np.isnan(arr)]


def median_iqr(values: Iterable[float | None]) -> tuple[float, float, float]:
    """(median, q25, q75) ignoring NaN; robust to the skewed, outlier-prone spread of seeds."""
    arr = _finite(values)
    if arr.size == 0:
        return math.nan, math.nan, math.nan
    median, q25, q75 = np.percentile(arr, [50, 25, 75])
    return float(median), float(q25), float(q75)


def mann_whitney(a: Iterable[float | None], b: Iterable[float | None]) -> float:
    """Two-sided Mann–Whitney U p-value ignoring NaN; NaN when the test is meaningless.

    A rank test is used because per-seed metrics are rarely normal and samples are small.
    """
    xa, xb = _finite(a), _finite(b)
    if xa.size < 2 or xb.size < 2:
        return math.nan
    if np.unique(np.concatenate([xa, xb])).size == 1:
        return math.nan
    return float(mannwhitneyu(xa, xb, alternative="two-sided").pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (monotone, capped at 1); NaN entries pass through uncounted.

    Controls the family-wise error over all comparisons in one table without Bonferroni's loss of power.
    """
    valid = [(p, i) for i, p in enumerate(pvalues) if not math.isnan(p)]
    valid.sort()
    m = len(valid)
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(valid):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted
