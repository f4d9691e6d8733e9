"""Same-size control crops and the statistics that compare a saliency crop with them.

Why controls: split clips by their original score and the lowest third "gains" from any change while the
highest "loses" (regression to the mean: the original's own version-specific deviation is what put a
clip in a third). A crop's effect is therefore measured against crops of the same size per frame that
ignore saliency, scored on the same frames:

- centre: the box centred in the frame, every frame;
- random: per draw, one position drawn uniformly over where the box fits, as a fraction (u, v) of the
  free range, kept for the whole clip. For a fixed-size crop that is one static box; for dynamic size
  the box keeps that relative anchor while its size follows the saliency crop's. The random control
  does not move, so against dynamic position it controls for size and saliency-blind placement, not
  for motion. Draws are seeded by (task.controls.seed, clip name): every crop of a clip sees the same
  positions, and a rerun sees the same draws.

delta_vs_control = (crop - original) - mean over the clip's controls of (control - original), i.e. the
crop's score minus its controls' mean score: the original (and its deviation) cancels.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import wilcoxon

from common.errors import UserError
from models.memorability.pipeline import tercile_masks

CONTROL_KINDS = ("centre", "random")
CONTROL_KEYS = ("centre", "random_draws", "seed", "resamples", "level")


@dataclass(frozen=True)
class Anchor:
    """One control: its kind, its draw number (random only) and the box position as a fraction of the
    free range (0 = left / top edge, 1 = right / bottom edge)."""

    kind: str
    draw: int | None
    u: float
    v: float

    @property
    def label(self) -> str:
        return self.kind if self.draw is None else f"{self.kind}_{self.draw}"


def _int(node: Mapping[str, Any], key: str, default: int, minimum: int) -> int:
    value = node.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"task.controls.{key}={value!r} must be an integer >= {minimum}")
    return value


@dataclass(frozen=True)
class ControlSpec:
    """`task.controls`: which controls, how many random draws, and the seeded bootstrap's size and level."""

    centre: bool = True
    random_draws: int = 5
    seed: int = 0
    resamples: int = 10_000
    level: float = 0.95

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None) -> ControlSpec:
        """The spec from the config node (null: no controls); a bad value is a UserError naming its key."""
        if node is None:
            return cls(centre=False, random_draws=0)
        unknown = sorted(set(node) - set(CONTROL_KEYS))
        if unknown:
            raise UserError(f"task.controls.{unknown[0]}: unknown key; known: {', '.join(CONTROL_KEYS)}")
        centre = node.get("centre", cls.centre)
        if not isinstance(centre, bool):
            raise UserError(f"task.controls.centre={centre!r} must be true or false")
        level = node.get("level", cls.level)
        if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 < float(level) < 1.0:
            raise UserError(f"task.controls.level={level!r} must be in (0, 1), e.g. 0.95")
        return cls(
            centre=centre,
            random_draws=_int(node, "random_draws", cls.random_draws, 0),
            seed=_int(node, "seed", cls.seed, 0),
            resamples=_int(node, "resamples", cls.resamples, 1),
            level=float(level),
        )

    @property
    def enabled(self) -> bool:
        return self.centre or self.random_draws > 0

    def anchors(self, clip: str) -> list[Anchor]:
        """The clip's controls: the centre, then `random_draws` positions from a generator seeded by
        (seed, clip name), so the draws do not depend on which other clips or crops a run has."""
        out = [Anchor("centre", None, 0.5, 0.5)] if self.centre else []
        rng = np.random.default_rng([self.seed, zlib.crc32(clip.encode())])
        out += [Anchor("random", k, float(u), float(v)) for k, (u, v) in enumerate(rng.random((self.random_draws, 2)))]
        return out


def anchored_boxes(boxes: np.ndarray, width: int, height: int, u: float, v: float) -> np.ndarray:
    """Boxes with the same (w, h) per frame as `boxes`, placed at fraction (u, v) of the range where they
    fit: x = round(u (width - w)), y = round(v (height - h)). (0.5, 0.5) centres them to half a pixel."""
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    w, h = boxes[:, 2], boxes[:, 3]
    x = np.round(u * (width - w)).astype(np.int64)
    y = np.round(v * (height - h)).astype(np.int64)
    return np.stack([x, y, w, h], axis=1)


def delta_vs_control(initial: np.ndarray, cropped: np.ndarray, controls: np.ndarray) -> np.ndarray:
    """Per clip: (crop - original) - mean over the clip's controls (columns of `controls`, clips x
    controls) of (control - original)."""
    initial, cropped = np.asarray(initial, float), np.asarray(cropped, float)
    controls = np.asarray(controls, float).reshape(len(initial), -1)
    return (cropped - initial) - (controls - initial[:, None]).mean(axis=1)


def bootstrap_mean_ci(values: np.ndarray, resamples: int = 10_000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean: resample the values (clips) with replacement
    `resamples` times (seeded) and take the (1 - level) / 2 and (1 + level) / 2 quantiles of the means."""
    values = np.asarray(values, float)
    if values.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(int(resamples), values.size))].mean(axis=1)
    low, high = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def wilcoxon_p(differences: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p of paired differences (exact for small samples without ties);
    NaN when there is none or all are zero."""
    differences = np.asarray(differences, float)
    if differences.size == 0 or not np.any(differences != 0):
        return math.nan
    return float(wilcoxon(differences, zero_method="wilcox", alternative="two-sided").pvalue)


def min_wilcoxon_p(n: int) -> float:
    """The smallest two-sided p the exact signed-rank test can give with n pairs: every sign alike,
    2 of the 2^n equally likely sign patterns (0.125 for 4 clips)."""
    return min(1.0, 2.0 / 2.0**n) if n > 0 else math.nan


def summarize_controls(
    initial: np.ndarray, cropped: np.ndarray, controls: np.ndarray, resamples: int = 10_000, level: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """The crop against its controls over clips: mean per-clip delta_vs_control, its bootstrap interval,
    the signed-rank p (crop vs the controls' mean, paired by clip) and the means in the lowest / highest
    third of clips by ORIGINAL score (as `delta_low_third_mean`)."""
    per_clip = delta_vs_control(initial, cropped, controls)
    low, high = tercile_masks(initial)
    ci_low, ci_high = bootstrap_mean_ci(per_clip, resamples, level, seed)
    return {
        "delta_vs_control_mean": float(per_clip.mean()),
        "delta_vs_control_ci_low": ci_low,
        "delta_vs_control_ci_high": ci_high,
        "delta_vs_control_p": wilcoxon_p(per_clip),
        "delta_vs_control_low_third_mean": float(per_clip[low].mean()),
        "delta_vs_control_high_third_mean": float(per_clip[high].mean()),
    }
