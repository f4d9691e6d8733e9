"""The paper's summary of score changes by initial score, and which frames a predictor scores.

Pure functions on arrays (no files, no configs): experiments/tasks/memorability/video.py runs the crop
pipeline on a clip (streamed, in two decoding passes) and task.py writes the results.
"""

from __future__ import annotations

import numpy as np


def tercile_masks(initial: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the lowest and highest third of clips by initial score (at least one clip each;
    ties broken by order). The paper's finding: gains concentrate in the low third."""
    initial = np.asarray(initial, float)
    k = max(1, len(initial) // 3)
    order = np.argsort(initial, kind="stable")
    low, high = np.zeros(len(initial), bool), np.zeros(len(initial), bool)
    low[order[:k]], high[order[-k:]] = True, True
    return low, high


def summarize_deltas(initial: np.ndarray, cropped: np.ndarray) -> dict[str, float]:
    """score_mean, delta_mean and the mean delta of the low / high initial-score terciles."""
    initial, cropped = np.asarray(initial, float), np.asarray(cropped, float)
    delta = cropped - initial
    low, high = tercile_masks(initial)
    return {
        "score_mean": float(cropped.mean()),
        "delta_mean": float(delta.mean()),
        "delta_low_third_mean": float(delta[low].mean()),
        "delta_high_third_mean": float(delta[high].mean()),
    }


def evenly_spaced(count: int, k: int) -> list[int]:
    """`k` indices spread over `count` frames (all when k >= count), the frames a predictor scores."""
    if k >= count:
        return list(range(count))
    return sorted(set(np.linspace(0, count - 1, k + 2)[1:-1].round().astype(int).tolist()))
