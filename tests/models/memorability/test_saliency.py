"""Saliency backends: maps are distributions, the bright object is where the mass is, motion sees motion."""

from __future__ import annotations

import importlib.machinery
import sys
import types

import numpy as np
import pytest
import torch

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


class _FakeDeepGazeIIE(torch.nn.Module):
    """Stands in for deepgaze_pytorch.DeepGazeIIE: log-density from the first (red in RGB) channel, so a
    backend that passed BGR would look at the blue spot instead."""

    def __init__(self, pretrained: bool = True) -> None:
        super().__init__()
        assert pretrained

    def forward(self, image: torch.Tensor, centerbias: torch.Tensor) -> torch.Tensor:
        assert image.shape[0] == 1 and image.shape[1] == 3 and centerbias.shape == (1, *image.shape[2:])
        logits = image[:, :1] / 10.0 + centerbias[:, None]
        return logits - torch.logsumexp(logits.flatten(1), dim=1).view(-1, 1, 1, 1)


def test_deepgaze_backend_feeds_rgb_and_returns_a_normalised_map(monkeypatch) -> None:
    fake = types.ModuleType("deepgaze_pytorch")
    fake.__spec__ = importlib.machinery.ModuleSpec("deepgaze_pytorch", None)
    fake.DeepGazeIIE = _FakeDeepGazeIIE
    monkeypatch.setitem(sys.modules, "deepgaze_pytorch", fake)
    frame = np.zeros((90, 160, 3), np.uint8)
    frame[40:50, 10:20] = (0, 0, 255)  # red in BGR, on the left
    frame[40:50, 140:150] = (255, 0, 0)  # blue in BGR, on the right
    backend = DeepGazeIIESaliency(work_width=160)
    saliency = backend(frame)
    assert saliency.shape == (90, 160) and np.isclose(saliency.sum(), 1.0, atol=1e-4)
    x, _ = centroids(saliency[None])[0]
    assert x < 0.3  # the red spot: the model saw RGB


def test_deepgaze_that_fails_to_load_is_a_user_error(monkeypatch) -> None:
    fake = types.ModuleType("deepgaze_pytorch")
    fake.__spec__ = importlib.machinery.ModuleSpec("deepgaze_pytorch", None)

    def broken(pretrained: bool = True):
        raise RuntimeError("weights could not be downloaded")

    fake.DeepGazeIIE = broken
    monkeypatch.setitem(sys.modules, "deepgaze_pytorch", fake)
    with pytest.raises(UserError, match="could not be loaded.*weights could not be downloaded"):
        DeepGazeIIESaliency()
