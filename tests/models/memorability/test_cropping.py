"""Crops: inside the frame, aspect kept, fixed vs dynamic on a moving object, bounded jitter, alpha checks."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import UserError
from models.memorability.cropping import (
    DynamicPositionCropper,
    DynamicSizeCropper,
    FixedCropper,
    apply_crop,
    box_at,
    boxes_at,
    centroids,
    smooth,
)
from models.memorability.saliency import SpectralResidualSaliency
from tests.models.memorability.synthetic import moving_square

CROPPERS = {
    "fixed": lambda a: FixedCropper(a),
    "dynamic_position": lambda a: DynamicPositionCropper(a, ema=0.5, max_step=0.05),
    "dynamic_size": lambda a: DynamicSizeCropper(a, mass=0.5, min_alpha=min(a, 0.3), ema=0.5),
}


@pytest.mark.parametrize("name", sorted(CROPPERS))
@pytest.mark.parametrize("alpha", [0.1, 0.5, 0.75, 1.0])
@pytest.mark.parametrize("size", [(640, 272), (176, 144), (91, 301)])
def test_boxes_stay_inside_the_frame_and_keep_its_aspect(name: str, alpha: float, size: tuple[int, int]) -> None:
    width, height = size
    rng = np.random.default_rng(7)
    maps = rng.random((12, 30, 40)) ** 8  # peaky, and corners get mass too
    maps[3, 0, 0] = maps[4, -1, -1] = 1e3  # pull towards the corners: clamping must hold
    boxes = CROPPERS[name](alpha).boxes(maps, width, height)
    assert boxes.shape == (12, 4) and boxes.dtype.kind == "i"
    x, y, w, h = boxes.T
    assert (x >= 0).all() and (y >= 0).all() and (x + w <= width).all() and (y + h <= height).all()
    assert np.all(np.abs(w / h - width / height) <= width / height * (1 / h + 1 / w) + 1e-9)  # one pixel of rounding
    if name != "dynamic_size":
        assert np.all(w == round(alpha * width))


def test_dynamic_crop_follows_a_moving_bright_object_and_fixed_does_not() -> None:
    frames, xs = moving_square(frames=30, width=200, height=90)
    maps = SpectralResidualSaliency(work_width=200).maps(frames)
    width, height = 200, 90
    fixed = FixedCropper(0.5).boxes(maps, width, height)
    dynamic = DynamicPositionCropper(0.5, ema=0.6, max_step=0.1).boxes(maps, width, height)
    sized = DynamicSizeCropper(0.5, mass=0.3, min_alpha=0.3, ema=0.6, max_step=0.1).boxes(maps, width, height)
    assert len(np.unique(fixed, axis=0)) == 1  # one box for the whole clip
    for boxes in (dynamic, sized):
        centres = boxes[:, 0] + boxes[:, 2] / 2
        assert np.corrcoef(centres, xs)[0, 1] > 0.95
        assert centres[-1] - centres[0] > 0.25 * width  # the box (half the frame) can move its centre by at most 0.5 * width
    # the object is inside the dynamic crop in most frames, but outside the fixed one at the ends
    inside = lambda b, x: b[0] <= x <= b[0] + b[2]
    assert np.mean([inside(b, x) for b, x in zip(dynamic, xs)]) >= 0.8
    assert not inside(fixed[0], xs[0]) or not inside(fixed[-1], xs[-1])


def test_smoothing_bounds_the_jitter_of_a_noisy_path() -> None:
    rng = np.random.default_rng(0)
    noisy = np.clip(0.5 + rng.normal(0, 0.2, size=(200, 2)), 0, 1)
    for method in ("ema", "moving_average"):
        path = smooth(noisy, method, ema=0.3, window=7, max_step=0.01)
        steps = np.abs(np.diff(path, axis=0))
        assert steps.max() <= 0.01 + 1e-12
        assert steps.mean() < 0.5 * np.abs(np.diff(noisy, axis=0)).mean()
    # boxes: the jitter bound in pixels holds through rounding (1 px)
    maps = rng.random((60, 20, 20)) ** 20
    boxes = DynamicPositionCropper(0.5, ema=1.0, max_step=0.01).boxes(maps, 400, 400)
    assert np.abs(np.diff(boxes[:, :2], axis=0)).max() <= 0.01 * 400 + 1
    raw = DynamicPositionCropper(0.5, smoothing="none", max_step=None).boxes(maps, 400, 400)
    assert np.abs(np.diff(raw[:, :2], axis=0)).max() > 20  # without smoothing the same maps jump


def test_ema_is_the_known_recursion() -> None:
    path = smooth(np.array([0.0, 1.0, 1.0]), "ema", ema=0.5)
    assert np.allclose(path, [0.0, 0.5, 0.75])
    assert np.allclose(smooth(np.array([0.0, 0.0, 3.0, 0.0, 0.0]), "moving_average", window=3), [0, 1, 1, 1, 0])


def test_centroid_and_box_known_answers() -> None:
    maps = np.zeros((1, 10, 20))
    maps[0, 2, 15] = 1.0
    assert np.allclose(centroids(maps)[0], [15.5 / 20, 2.5 / 10])
    assert box_at(np.array([0.5, 0.5]), 0.5, 200, 100) == (50, 25, 100, 50)
    assert box_at(np.array([1.0, 0.0]), 0.5, 200, 100) == (100, 0, 100, 50)  # clamped into the frame


def test_dynamic_size_shrinks_for_concentrated_saliency() -> None:
    concentrated = np.full((5, 40, 40), 1e-6)
    concentrated[:, 18:22, 18:22] = 1.0
    spread = np.ones((5, 40, 40))
    cropper = DynamicSizeCropper(0.75, mass=0.8, min_alpha=0.3, ema=1.0, max_scale_step=None)
    small = cropper.boxes(concentrated, 400, 400)
    large = cropper.boxes(spread, 400, 400)
    assert small[:, 2].max() <= 0.35 * 400
    assert large[:, 2].min() >= 0.85 * 400


@pytest.mark.parametrize("alpha", [0.0, -0.1, 1.01, 2])
def test_alpha_outside_unit_interval_is_a_user_error(alpha: float) -> None:
    for make in CROPPERS.values():
        with pytest.raises(UserError, match="alpha"):
            make(alpha)


def test_apply_crop_cuts_the_box_and_resizes() -> None:
    frame = np.arange(100 * 200 * 3, dtype=np.uint32).reshape(100, 200, 3).astype(np.uint8)
    assert np.array_equal(apply_crop(frame, (10, 20, 50, 25)), frame[20:45, 10:60])
    assert apply_crop(frame, (10, 20, 50, 25), (100, 50)).shape == (50, 100, 3)


def _box_by_hand(center, scale: float, width: int, height: int) -> tuple[int, int, int, int]:
    """The box rule written out per box with Python's round (half to even, as numpy's)."""
    w = min(max(round(scale * width), 1), width)
    h = min(max(round(w * height / width), 1), height)
    x = min(max(round(center[0] * width - w / 2), 0), width - w)
    y = min(max(round(center[1] * height - h / 2), 0), height - h)
    return x, y, w, h


def test_vectorised_boxes_equal_the_rule_box_by_box() -> None:
    rng = np.random.default_rng(0)
    centers, scales = rng.uniform(-0.2, 1.2, (500, 2)), rng.uniform(0.01, 1.0, 500)
    for width, height in ((640, 272), (176, 144), (33, 17)):
        expected = [_box_by_hand(c, float(s), width, height) for c, s in zip(centers, scales)]
        assert boxes_at(centers, scales, width, height).tolist() == [list(b) for b in expected]


def test_dynamic_size_scales_equal_a_per_frame_search() -> None:
    """The all-frames-at-once integral-image search picks, per frame, the smallest scale whose box holds `mass`."""
    maps = np.random.default_rng(1).random((12, 30, 50)) ** 6
    cropper = DynamicSizeCropper(0.7, mass=0.5, scales=9)
    path = cropper.path(maps)
    for t in range(len(maps)):
        total = maps[t].sum()
        held = [
            maps[t][y : y + h, x : x + w].sum() / total
            for x, y, w, h in (_box_by_hand(path[t], s, 50, 30) for s in cropper.scales)
        ]
        first = next((i for i, share in enumerate(held) if share >= 0.5), len(held) - 1)
        assert cropper.frame_scales(maps, path)[t] == cropper.scales[first]
