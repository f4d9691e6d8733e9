"""Control crops and their statistics: same size per frame as the saliency crop, the centre one centred,
random ones seeded; delta_vs_control, its bootstrap interval and signed-rank p against hand-computed
answers; and, on synthetic scores with no effect at all, the raw tercile "finding" that the controls remove."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from common.errors import UserError
from models.memorability.controls import (
    ControlSpec,
    anchored_boxes,
    bootstrap_mean_ci,
    delta_vs_control,
    min_wilcoxon_p,
    summarize_controls,
    wilcoxon_p,
)
from models.memorability.cropping import DynamicSizeCropper
from models.memorability.pipeline import summarize_deltas

WIDTH, HEIGHT = 641, 273  # odd sides: centring cannot always be exact


@pytest.fixture(scope="module")
def sized_boxes() -> np.ndarray:
    """Dynamic-size boxes whose size changes from frame to frame (saliency spreading over the clip)."""
    maps = np.full((40, 30, 60), 1e-6)
    for t in range(40):
        half = 2 + t // 3
        maps[t, 15 - half : 15 + half, 30 - 2 * half : 30 + 2 * half] = 1.0
    boxes = DynamicSizeCropper(0.75, mass=0.9, min_alpha=0.2, ema_seconds=0, max_scale_speed=None).boxes(maps, WIDTH, HEIGHT)
    assert len(np.unique(boxes[:, 2])) > 5  # the sizes really vary
    return boxes


def test_every_control_has_the_saliency_crops_size_in_every_frame(sized_boxes: np.ndarray) -> None:
    for anchor in ControlSpec(random_draws=20).anchors("clip"):
        boxes = anchored_boxes(sized_boxes, WIDTH, HEIGHT, anchor.u, anchor.v)
        assert np.array_equal(boxes[:, 2:], sized_boxes[:, 2:])
        x, y, w, h = boxes.T
        assert (x >= 0).all() and (y >= 0).all() and (x + w <= WIDTH).all() and (y + h <= HEIGHT).all()


def test_the_centre_control_is_centred_to_half_a_pixel(sized_boxes: np.ndarray) -> None:
    (centre,) = ControlSpec(centre=True, random_draws=0).anchors("clip")
    assert centre.kind == "centre" and centre.draw is None
    x, y, w, h = anchored_boxes(sized_boxes, WIDTH, HEIGHT, centre.u, centre.v).T
    assert np.abs(x + w / 2 - WIDTH / 2).max() <= 0.5 and np.abs(y + h / 2 - HEIGHT / 2).max() <= 0.5
    assert anchored_boxes(np.array([[7, 3, 100, 50]]), 200, 100, 0.5, 0.5).tolist() == [[50, 25, 100, 50]]


def test_random_draws_differ_repeat_with_the_seed_and_cover_where_the_box_fits() -> None:
    spec = ControlSpec(centre=False, random_draws=5, seed=0)
    draws = [(a.u, a.v) for a in spec.anchors("bikes")]
    assert [a.kind for a in spec.anchors("bikes")] == ["random"] * 5 and [a.draw for a in spec.anchors("bikes")] == list(range(5))
    assert len(set(draws)) == 5  # every draw a different position
    assert draws == [(a.u, a.v) for a in ControlSpec(centre=False, random_draws=5, seed=0).anchors("bikes")]  # reproducible
    assert draws != [(a.u, a.v) for a in ControlSpec(centre=False, random_draws=5, seed=1).anchors("bikes")]  # the seed matters
    assert draws != [(a.u, a.v) for a in spec.anchors("bigbuckbunny")]  # each clip its own draws
    assert draws == [(a.u, a.v) for a in ControlSpec(centre=True, random_draws=8).anchors("bikes")[1:6]]  # more draws extend
    many = np.array([(a.u, a.v) for a in ControlSpec(centre=False, random_draws=2000).anchors("x")])
    x = anchored_boxes(np.tile([0, 0, 100, 50], (len(many), 1)), 200, 100, many[:, 0], many[:, 1])[:, 0]
    assert x.min() <= 2 and x.max() >= 98 and abs(x.mean() - 50) < 2  # uniform over the 0..100 free range


def test_delta_vs_control_is_the_crop_minus_its_controls_mean() -> None:
    """Clip 1: (0.55 - 0.50) - mean(0.52 - 0.50, 0.50 - 0.50) = 0.04; clip 2: (0.58 - 0.60) - mean(0.01, 0.05) = -0.05."""
    initial, cropped = np.array([0.50, 0.60]), np.array([0.55, 0.58])
    controls = np.array([[0.52, 0.50], [0.61, 0.65]])
    assert delta_vs_control(initial, cropped, controls) == pytest.approx([0.04, -0.05])


def test_signed_rank_p_against_the_enumerated_sign_patterns() -> None:
    """Differences 1, -2, 3, 4: ranks 1..4, positive-rank sum 8. Of the 16 sign patterns, 3 have a sum >= 8
    ({}, {1}, {2} negative) and 3 have a sum <= 2, so p = 6/16. All four positive: 2/16, the minimum."""
    assert wilcoxon_p(np.array([1.0, -2.0, 3.0, 4.0])) == pytest.approx(6 / 16)
    assert wilcoxon_p(np.array([0.4, 0.1, 0.3, 0.2])) == pytest.approx(0.125) == min_wilcoxon_p(4)
    assert wilcoxon_p(-np.arange(1.0, 6.0)) == pytest.approx(0.0625) == min_wilcoxon_p(5)
    assert math.isnan(wilcoxon_p(np.zeros(4))) and math.isnan(wilcoxon_p(np.array([])))


def test_bootstrap_interval_against_the_enumerated_resamples() -> None:
    """Values 0, 3, 9: the 27 equally likely resamples give means whose CDF is 1/27 at 0, 4/27 at 1, 26/27
    at 7 and 1 at 9; so the 95 % interval is [0, 9] and the 80 % one [1, 7]."""
    values = np.array([0.0, 3.0, 9.0])
    assert bootstrap_mean_ci(values, 10_000, 0.95, seed=0) == (0.0, 9.0)
    assert bootstrap_mean_ci(values, 10_000, 0.80, seed=0) == (1.0, 7.0)
    assert bootstrap_mean_ci(np.full(4, 0.3), 100) == pytest.approx((0.3, 0.3))
    assert all(math.isnan(v) for v in bootstrap_mean_ci(np.array([])))


def test_the_bootstrap_interval_contains_the_mean_and_is_seeded() -> None:
    values = np.random.default_rng(3).lognormal(size=25)  # skewed
    low, high = bootstrap_mean_ci(values, seed=0)
    assert low < values.mean() < high and high - low < np.ptp(values)
    assert bootstrap_mean_ci(values, seed=0) == (low, high) and bootstrap_mean_ci(values, seed=1) != (low, high)


def test_summary_thirds_are_by_original_score() -> None:
    """6 clips: the low third is the two lowest ORIGINAL scores (clips 4 and 1), the high third clips 2 and 0."""
    initial = np.array([0.9, 0.2, 0.8, 0.5, 0.1, 0.6])
    cropped = initial + np.array([0.01, 0.02, 0.03, 0.04, 0.05, 0.06])
    controls = np.column_stack([initial, initial + 0.02])  # the controls' mean: original + 0.01
    summary = summarize_controls(initial, cropped, controls, resamples=1000)
    assert summary["delta_vs_control_mean"] == pytest.approx(0.025)
    assert summary["delta_vs_control_low_third_mean"] == pytest.approx((0.04 + 0.01) / 2)
    assert summary["delta_vs_control_high_third_mean"] == pytest.approx((0.0 + 0.02) / 2)
    assert summary["delta_vs_control_ci_low"] < 0.025 < summary["delta_vs_control_ci_high"]
    assert summary["delta_vs_control_p"] == pytest.approx(wilcoxon_p(np.array([0.0, 0.01, 0.02, 0.03, 0.04, 0.05])))


def test_with_no_true_effect_the_tercile_effect_appears_raw_and_vanishes_against_controls() -> None:
    """300 clips, score = clip effect + independent noise for EVERY version (original, crop, 6 controls):
    no crop does anything. Split by the original score, the low third still "gains" and the high third
    "loses" (the original's own noise put them there: regression to the mean); relative to the controls
    both thirds are near 0."""
    rng = np.random.default_rng(0)
    clips, noise = 300, 0.03
    effect = rng.normal(0.8, 0.03, clips)
    initial, cropped = effect + rng.normal(0, noise, clips), effect + rng.normal(0, noise, clips)
    controls = effect[:, None] + rng.normal(0, noise, (clips, 6))
    raw = summarize_deltas(initial, cropped)
    relative = summarize_controls(initial, cropped, controls, resamples=2000)
    assert raw["delta_low_third_mean"] > 0.015 and raw["delta_high_third_mean"] < -0.015  # clearly apart
    # within ~2 standard errors of 0 (noise x sqrt(1 + 1/6) / sqrt(100) = 0.0032), a third of the raw size
    assert abs(relative["delta_vs_control_low_third_mean"]) < 0.006
    assert abs(relative["delta_vs_control_high_third_mean"]) < 0.006
    assert relative["delta_vs_control_ci_low"] < 0 < relative["delta_vs_control_ci_high"]
    assert relative["delta_vs_control_p"] > 0.05
    controls_alone = summarize_deltas(initial, controls.mean(axis=1))  # the controls show the same raw pattern
    assert controls_alone["delta_low_third_mean"] > 0.015 and controls_alone["delta_high_third_mean"] < -0.015


def test_spec_from_config_and_null_means_no_controls() -> None:
    spec = ControlSpec.from_config({"centre": True, "random_draws": 3, "seed": 2, "resamples": 500, "level": 0.9})
    assert (spec.centre, spec.random_draws, spec.seed, spec.resamples, spec.level) == (True, 3, 2, 500, 0.9)
    assert [a.label for a in spec.anchors("c")] == ["centre", "random_0", "random_1", "random_2"]
    assert not ControlSpec.from_config(None).enabled and not ControlSpec.from_config({"centre": False, "random_draws": 0}).enabled


@pytest.mark.parametrize(
    "node, message",
    [
        ({"random_draws": -1}, "task.controls.random_draws=-1 must be an integer >= 0"),
        ({"random_draws": 2.5}, "task.controls.random_draws=2.5 must be an integer >= 0"),
        ({"centre": "yes"}, "task.controls.centre='yes' must be true or false"),
        ({"level": 1.5}, "task.controls.level=1.5 must be in (0, 1)"),
        ({"resamples": 0}, "task.controls.resamples=0 must be an integer >= 1"),
        ({"draws": 5}, "task.controls.draws: unknown key; known: centre, random_draws, seed, resamples, level"),
    ],
)
def test_bad_controls_settings_are_user_errors_naming_the_key(node: dict, message: str) -> None:
    with pytest.raises(UserError, match=re.escape(message)):
        ControlSpec.from_config(node)
