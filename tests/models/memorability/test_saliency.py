"""Saliency backends: maps are distributions, the bright object is where the mass is, motion sees motion."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import UserError
from models.memorability.cropping import centroids
from models.memorability.saliency import (
    DeepGazeIIESaliency,
    FineGrainedSaliency,
    MotionSaliency,
    SpectralResidualSaliency,
)
from tests.models.memorability.synthetic import moving_square


@pytest.mark.parametrize("backend", [SpectralResidualSaliency, FineGrainedSaliency])
def test_static_backends_put_the_mass_on_the_bright_square(backend) -> None:
    frames, xs = moving_square(frames=3, width=320, height=180, side=24)
    model = backend(work_width=160)
    maps = model.maps(frames)
    assert maps.shape == (3, 90, 160)  # working resolution, aspect kept
    assert np.allclose(maps.sum(axis=(1, 2)), 1.0, atol=1e-4) and (maps >= 0).all()
    cx = centroids(maps)[:, 0] * 320
    assert np.all(np.diff(cx) > 0)  # the centroid moves with the square
    assert abs(cx[0] - xs[0]) < abs(160 - xs[0])  # nearer the square than the frame centre


def test_motion_backend_tracks_the_moving_square_from_the_second_frame() -> None:
    frames, xs = moving_square(frames=30, width=160, height=90)
    maps = MotionSaliency(work_width=160).maps(frames)
    cx = centroids(maps)[:, 0] * 160
    assert np.allclose(maps[0], 1.0 / maps[0].size)  # no motion yet: uniform, centroid = centre
    assert np.corrcoef(cx[1:], xs[1:])[0, 1] > 0.95
    assert np.abs(cx[1:] - xs[1:]).max() < 20  # near the square (its trail lags behind it a little)
    still = MotionSaliency(work_width=160, static_mix=0.5).maps([frames[0]] * 5)
    assert np.allclose(still[-1], SpectralResidualSaliency(160)(frames[0]), atol=1e-6)  # no motion: the static part


def test_binwang_motion_warm_up_counts_as_no_information() -> None:
    frames, _ = moving_square(frames=5, width=64, height=36)
    maps = MotionSaliency(work_width=64, method="binwang").maps(frames)
    assert np.allclose(maps, 1.0 / maps[0].size)


def test_black_frame_gives_a_uniform_map() -> None:
    saliency = SpectralResidualSaliency(work_width=32)(np.zeros((20, 32, 3), np.uint8))
    assert np.allclose(saliency, 1.0 / saliency.size)


def test_bad_settings_and_missing_deepgaze_are_user_errors() -> None:
    with pytest.raises(UserError, match="work_width"):
        SpectralResidualSaliency(work_width=4)
    with pytest.raises(UserError, match="method"):
        MotionSaliency(method="optical_flow")
    with pytest.raises(UserError, match="static_mix"):
        MotionSaliency(static_mix=1.5)
    import importlib.util

    if importlib.util.find_spec("deepgaze_pytorch") is None:
        with pytest.raises(UserError, match="deepgaze"):
            DeepGazeIIESaliency()
