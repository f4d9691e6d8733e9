"""Crops: inside the frame, aspect kept, fixed vs dynamic on a moving object, bounded jitter, alpha checks,
and smoothing set in seconds (the same crop motion per second at any frame rate)."""

from __future__ import annotations

import re

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
    ema_weight,
    smooth,
    window_frames,
)
from models.memorability.saliency import SpectralResidualSaliency
from tests.models.memorability.synthetic import moving_square

CROPPERS = {
    "fixed": lambda a: FixedCropper(a),
    "dynamic_position": lambda a: DynamicPositionCropper(a, ema_seconds=0.06, max_speed=1.25),
    "dynamic_size": lambda a: DynamicSizeCropper(a, mass=0.5, min_alpha=min(a, 0.3), ema_seconds=0.06),
}


@pytest.mark.parametrize("name", sorted(CROPPERS))
@pytest.mark.parametrize("alpha", [0.1, 0.5, 0.75, 1.0])
@pytest.mark.parametrize("size", [(640, 272), (176, 144), (91, 301)])
def test_boxes_stay_inside_the_frame_and_keep_its_aspect(name: str, alpha: float, size: tuple[int, int]) -> None:
    width, height = size
    rng = np.random.default_rng(7)
    maps = rng.random((12, 30, 40)) ** 8  # peaky, and corners get mass too
    maps[3, 0, 0] = maps[4, -1, -1] = 1e3  # pull towards the corners: clamping must hold
    boxes = CROPPERS[name](alpha).boxes(maps, width, height, fps=25)
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
    fixed = FixedCropper(0.5).boxes(maps, width, height, fps=25)
    dynamic = DynamicPositionCropper(0.5, ema_seconds=0.04, max_speed=2.5).boxes(maps, width, height, fps=25)
    sized = DynamicSizeCropper(0.5, mass=0.3, min_alpha=0.3, ema_seconds=0.04, max_speed=2.5).boxes(maps, width, height, 25)
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
    boxes = DynamicPositionCropper(0.5, ema_seconds=0, max_speed=0.25).boxes(maps, 400, 400, fps=25)
    assert np.abs(np.diff(boxes[:, :2], axis=0)).max() <= 0.25 / 25 * 400 + 1
    raw = DynamicPositionCropper(0.5, smoothing="none", max_speed=None).boxes(maps, 400, 400, fps=25)
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
    cropper = DynamicSizeCropper(0.75, mass=0.8, min_alpha=0.3, ema_seconds=0, max_scale_speed=None)
    small = cropper.boxes(concentrated, 400, 400, fps=25)
    large = cropper.boxes(spread, 400, 400, fps=25)
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
    chunked = cropper.frame_scales(maps, path, chunk=5)  # a long clip goes in chunks of frames: the same scales
    assert np.array_equal(chunked, cropper.frame_scales(maps, path)) and len(chunked) == 12


def _jump_maps(seconds: float, fps: float, jump_at: float = 0.5) -> np.ndarray:
    """Saliency maps sampled at `fps`: one hot pixel at x = 0.1 of the frame, jumping to x = 0.9 at `jump_at` s."""
    times = np.arange(round(seconds * fps)) / fps
    maps = np.zeros((len(times), 10, 50))
    maps[times < jump_at, 5, 5] = 1.0
    maps[times >= jump_at, 5, 45] = 1.0
    return maps


@pytest.mark.parametrize("make", [DynamicPositionCropper, DynamicSizeCropper])
def test_the_speed_bound_is_per_second_at_any_frame_rate(make) -> None:
    """A clip sampled at 40 fps and the same clip thinned to 10 fps (every 4th frame): the box centre moves at
    max_speed frame sides per second in both, so it is at the same place at the same time (up to the one
    thinned frame the move starts earlier, as the jump is first seen a sample interval sooner)."""
    cropper = make(0.2, ema_seconds=0, max_speed=0.3)
    full = cropper.path(_jump_maps(2.0, 40), fps=40)[:, 0]
    thinned = cropper.path(_jump_maps(2.0, 10), fps=10)[:, 0]
    for path, fps in ((full, 40), (thinned, 10)):
        speed = np.abs(np.diff(path)) * fps  # frame sides per second
        assert speed.max() == pytest.approx(0.3)  # reached (the jump is faster) and never exceeded
    # 1 s after the first frame past the jump (t = 0.5 s): 0.3 of the frame further, at either rate
    assert full[60] - full[20] == pytest.approx(0.3) and thinned[15] - thinned[5] == pytest.approx(0.3)
    assert np.abs(full[::4] - thinned).max() <= 0.3 / 10 + 1e-12


def test_the_scale_speed_bound_is_per_second_at_any_frame_rate() -> None:
    """Saliency spreading over the whole frame at 0.5 s: the dynamic-size box grows at max_scale_speed
    frame sides per second, at 40 fps and thinned to 10 fps alike."""
    cropper = DynamicSizeCropper(0.4, mass=0.9, min_alpha=0.2, scales=81, ema_seconds=0, max_scale_speed=0.2)
    grown = {}
    for fps in (40, 10):
        times = np.arange(round(2 * fps)) / fps
        maps = np.full((len(times), 40, 40), 1e-9)
        maps[times < 0.5, 19:21, 19:21] = 1.0  # concentrated: the smallest box holds 90 %
        maps[times >= 0.5] = 1.0  # spread: only the whole frame does
        widths = cropper.boxes(maps, 400, 400, fps=fps)[:, 2] / 400
        assert np.abs(np.diff(widths)).max() * fps <= 0.2 + 1 / 400 * fps  # per second, up to a pixel
        grown[fps] = widths[round(1.5 * fps)] - widths[round(0.5 * fps)]  # growth over one second
    assert grown[40] == pytest.approx(0.2, abs=0.005) and grown[10] == pytest.approx(0.2, abs=0.005)


def test_the_ema_lag_is_a_time_constant_in_seconds() -> None:
    """A step input is followed by 1 - 1/e of its height after ema_seconds' worth of frames, at any rate."""
    for fps in (30.0, 10.0, 5.0):
        cropper = DynamicPositionCropper(0.2, ema_seconds=0.4, max_speed=None)
        path = cropper.path(_jump_maps(3.0, fps, jump_at=1.0), fps=fps)[:, 0]
        at = round(1.4 * fps) - 1  # 0.4 s of frames from the first one past the jump (which is updated already)
        assert (path[at] - 0.11) / (0.91 - 0.11) == pytest.approx(1 - np.exp(-1), abs=1e-9)
    assert ema_weight(0.18, 25) == pytest.approx(0.2, abs=0.001) and ema_weight(0, 25) == 1.0


def test_moving_average_window_is_a_span_in_seconds() -> None:
    cropper = DynamicPositionCropper(0.5, smoothing="moving_average", window_seconds=0.36)
    assert (cropper.window_frames(25), cropper.window_frames(100), cropper.window_frames(5)) == (9, 36, 2)
    assert window_frames(0.01, 5) == 1 and DynamicPositionCropper(0.5).window_frames(25) == 1  # EMA needs no window


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"ema_seconds": -0.1}, "cropping.ema_seconds=-0.1 must be >= 0"),
        ({"max_speed": 0}, "cropping.max_speed=0.0 must be > 0 (or null for no bound)"),
        ({"window_seconds": float("nan")}, "cropping.crops.dynamic_size.window_seconds=nan must be > 0"),
        ({"max_scale_speed": -1}, "cropping.crops.dynamic_size.max_scale_speed=-1.0 must be > 0"),
        ({"smoothing": "kalman"}, "cropping.crops.dynamic_size.smoothing='kalman' must be one of"),
    ],
)
def test_bad_smoothing_settings_are_user_errors_naming_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(UserError, match=re.escape(key)):
        DynamicSizeCropper(0.5, **kwargs)
