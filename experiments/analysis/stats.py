"""Small, NaN-tolerant statistics for summarising repeated runs.

Runs that never reached a cutoff (or failed a metric) report NaN; every helper here ignores NaN so one
bad seed does not poison a whole group, and returns NaN rather than raising when there is too little
data, so a summary table can always be written.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from scipy.stats import mannwhitneyu, wilcoxon


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


def wilcoxon_paired(a: dict[object, float | None], b: dict[object, float | None]) -> tuple[float, int]:
    """Two-sided Wilcoxon signed-rank p-value over the pairs (a[k], b[k]) that share a key (the seed) and
    are both finite, and the number of such pairs; NaN when fewer than 2 pairs or all differences are 0.

    For arms that share seed, init and data (Freeze vs Fluid): pairing removes the seed-to-seed spread
    that an unpaired test has to see through.
    """
    pairs = [(float(a[k]), float(b[k])) for k in a if k in b and a[k] is not None and b[k] is not None]
    pairs = [(x, y) for x, y in pairs if not (math.isnan(x) or math.isnan(y))]
    diffs = np.asarray([x - y for x, y in pairs])
    if diffs.size < 2 or not np.any(diffs != 0):
        return math.nan, len(pairs)
    return float(wilcoxon(diffs, zero_method="wilcox", alternative="two-sided").pvalue), len(pairs)


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
