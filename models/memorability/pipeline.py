"""The crop pipeline on one clip's frames, and the paper's summary of score changes by initial score.

Pure functions on arrays (no files, no configs): experiments/tasks/memorability/task.py reads the clips and
writes the results. Timings are wall-clock seconds so the task can report frames/s per crop.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from models.memorability.cropping import Cropper, apply_crop
from models.memorability.saliency import SaliencyModel


@dataclass
class CroppedClip:
    """One crop of one clip: per-frame boxes, the cropped frames (all one size), and its cost."""

    name: str
    boxes: np.ndarray
    frames: list[np.ndarray]
    seconds: float  # box computation + cropping (saliency time is counted separately)


@dataclass
class ClipCrops:
    saliency_seconds: float
    maps: np.ndarray
    crops: dict[str, CroppedClip] = field(default_factory=dict)


def crop_clip(
    frames: Sequence[np.ndarray], saliency: SaliencyModel, croppers: Mapping[str, Cropper], fps: float | None = None
) -> ClipCrops:
    """Saliency once per frame, then every cropper's boxes and cropped frames. `fps` is the rate of the
    frames given (lower than the source's when the clip was thinned): smoothing in seconds needs it."""
    height, width = frames[0].shape[:2]
    start = time.perf_counter()
    maps = saliency.maps(frames)
    result = ClipCrops(time.perf_counter() - start, maps)
    for name, cropper in croppers.items():
        start = time.perf_counter()
        boxes = cropper.boxes(maps, width, height, fps)
        size = cropper.output_size(width, height)
        cropped = [apply_crop(frame, box, size) for frame, box in zip(frames, boxes)]
        result.crops[name] = CroppedClip(name, boxes, cropped, time.perf_counter() - start)
    return result


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
