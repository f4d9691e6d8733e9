"""Saliency backends: maps are distributions, the bright object is where the mass is, motion sees motion."""

from __future__ import annotations

import importlib.machinery
import sys
import types
from pathlib import Path

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


WEIGHTS_URL = "https://example.invalid/releases/deepgaze_stub.pth"


class _StubDeepGazeIIE(torch.nn.Module):
    """Stands in for deepgaze_pytorch.DeepGazeIIE: loads its weights through torch.hub as the real one does,
    records every batch it sees, and returns a log density from the first (red in RGB) channel plus the
    centre bias, so a backend that passed BGR would look at the blue spot instead."""

    batches: list[tuple[int, ...]] = []

    def __init__(self, pretrained: bool = True) -> None:
        super().__init__()
        assert pretrained
        self.gain = torch.hub.load_state_dict_from_url(WEIGHTS_URL, map_location="cpu")["gain"]

    def forward(self, image: torch.Tensor, centerbias: torch.Tensor) -> torch.Tensor:
        assert image.ndim == 4 and image.shape[1] == 3 and centerbias.shape == (image.shape[0], *image.shape[2:])
        assert image.dtype == torch.float32 and image.max() > 1  # 0-255: the real model normalises itself
        type(self).batches.append(tuple(image.shape))
        logits = self.gain * image[:, :1] / 40.0 + centerbias[:, None]
        return logits - torch.logsumexp(logits.flatten(1), dim=1).view(-1, 1, 1, 1)


@pytest.fixture
def deepgaze(monkeypatch, tmp_path):
    """A stub deepgaze_pytorch package and an empty torch.hub cache in tmp_path; returns the weights file
    the stub loads (absent until a test puts it there)."""
    fake = types.ModuleType("deepgaze_pytorch")
    fake.__spec__ = importlib.machinery.ModuleSpec("deepgaze_pytorch", None)
    fake.DeepGazeIIE = _StubDeepGazeIIE
    monkeypatch.setitem(sys.modules, "deepgaze_pytorch", fake)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    _StubDeepGazeIIE.batches = []
    return tmp_path / "hub" / "checkpoints" / "deepgaze_stub.pth"


def _weights(path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"gain": torch.tensor(1.0)}, path)


def _spots(height: int = 90, width: int = 160) -> np.ndarray:
    frame = np.zeros((height, width, 3), np.uint8)
    frame[height // 2 - 5 : height // 2 + 5, width // 16 : width // 16 + 10] = (0, 0, 255)  # red in BGR, on the left
    frame[height // 2 - 5 : height // 2 + 5, -width // 16 - 10 : -width // 16] = (255, 0, 0)  # blue in BGR, on the right
    return frame


def test_deepgaze_without_its_weights_refuses_in_one_line_and_downloads_nothing(deepgaze, monkeypatch) -> None:
    fetched = []
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda url, dst, *a, **k: fetched.append(url))
    with pytest.raises(UserError) as refused:
        DeepGazeIIESaliency()
    message = str(refused.value)
    assert "weights are not present" in message and "deepgaze_stub.pth" in message and WEIGHTS_URL in message
    assert "saliency.model.download=true" in message and "\n" not in message
    assert fetched == []  # nothing was fetched
    assert torch.hub.download_url_to_file.__name__ == "<lambda>"  # the guard put torch.hub back as it was


def test_deepgaze_loads_weights_already_in_the_cache_and_fetches_only_when_allowed(deepgaze, monkeypatch) -> None:
    fetched = []

    def download(url, dst, *args, **kwargs):
        fetched.append(url)
        _weights(Path(dst))

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    DeepGazeIIESaliency(download=True)
    assert fetched == [WEIGHTS_URL] and deepgaze.is_file()
    DeepGazeIIESaliency()  # now in the cache: loads offline
    assert fetched == [WEIGHTS_URL]


def test_deepgaze_runs_at_its_training_resolution_in_batches(deepgaze) -> None:
    _weights(deepgaze)
    backend = DeepGazeIIESaliency(work_width=160, batch_size=4)
    frames = [np.roll(_spots(144, 176), 3 * k, axis=1) for k in range(10)]  # carphone's size: upscaled
    maps = backend.maps(frames)
    assert _StubDeepGazeIIE.batches == [(4, 3, 838, 1024), (4, 3, 838, 1024), (2, 3, 838, 1024)]  # longer side 1024
    assert maps.shape == (10, 131, 160) and np.allclose(maps.sum(axis=(1, 2)), 1.0, atol=1e-4)
    one_by_one = DeepGazeIIESaliency(work_width=160, batch_size=1)
    assert np.allclose(maps, np.stack([one_by_one(f) for f in frames]), atol=1e-6)  # batching changes nothing
    _StubDeepGazeIIE.batches = []
    backend.maps([_spots(720, 1280)])  # a large frame is downscaled to the same longer side
    assert _StubDeepGazeIIE.batches == [(1, 3, 576, 1024)]
    x, _ = centroids(maps[:1])[0]
    assert x < 0.3  # the red spot: the model saw RGB
    with pytest.raises(UserError, match="batch_size=0"):
        DeepGazeIIESaliency(batch_size=0)
    with pytest.raises(UserError, match="input_long_side=8"):
        DeepGazeIIESaliency(input_long_side=8)


def test_a_centre_bias_template_pulls_the_map_to_the_centre(deepgaze, tmp_path) -> None:
    _weights(deepgaze)
    ys, xs = np.mgrid[0:64, 0:64]
    template = -((xs - 31.5) ** 2 + (ys - 31.5) ** 2) / (2 * 6.0**2)  # a log density peaked at the centre
    np.save(tmp_path / "centerbias.npy", template)
    frame = _spots()
    uniform = DeepGazeIIESaliency()(frame)
    biased = DeepGazeIIESaliency(centerbias=str(tmp_path / "centerbias.npy"))(frame)
    x_uniform, x_biased = centroids(uniform[None])[0, 0], centroids(biased[None])[0, 0]
    assert x_uniform < 0.3 and abs(x_biased - 0.5) < abs(x_uniform - 0.5) - 0.1
    with pytest.raises(UserError, match="saliency.model.centerbias=.*absent.npy: not a readable .npy"):
        DeepGazeIIESaliency(centerbias=str(tmp_path / "absent.npy"))


def test_deepgaze_that_fails_to_load_is_a_user_error(monkeypatch) -> None:
    fake = types.ModuleType("deepgaze_pytorch")
    fake.__spec__ = importlib.machinery.ModuleSpec("deepgaze_pytorch", None)

    def broken(pretrained: bool = True):
        raise RuntimeError("torchvision does not import")

    fake.DeepGazeIIE = broken
    monkeypatch.setitem(sys.modules, "deepgaze_pytorch", fake)
    with pytest.raises(UserError, match="could not be loaded.*torchvision does not import"):
        DeepGazeIIESaliency()
