"""ResMem rebuilt in plain torch: the package's checkpoint loads strictly and scores a frame, and
frames reach it exactly as the package's own transform prepares them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from common.errors import UserError
from models.memorability.resmem import ResMem, load_resmem, preprocess, resmem_checkpoint_path
from tests.models.memorability.data.make_resmem_transform import synthetic_rgb

EXPECTED = Path(__file__).parent / "data" / "resmem_transform.npz"


@pytest.fixture(scope="module")
def resmem() -> ResMem:
    return load_resmem()  # strict=True inside: any missing or unexpected parameter name fails here


def test_checkpoint_keys_and_shapes_match_the_architecture_exactly(resmem: ResMem) -> None:
    state = torch.load(resmem_checkpoint_path(), map_location="cpu", weights_only=True)
    mine = resmem.state_dict()
    assert set(state) == set(mine) and len(mine) == 956
    assert all(state[k].shape == mine[k].shape for k in state)
    assert torch.equal(mine["features.layer3.35.conv3.weight"], state["features.layer3.35.conv3.weight"])


def test_one_frame_scores_in_unit_interval_and_embeds_256(resmem: ResMem) -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, size=(120, 160, 3), dtype=np.uint8)
    x = preprocess([frame])
    assert x.shape == (1, 3, 227, 227) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    with torch.inference_mode():
        score = float(resmem(x))
        hidden = resmem.embed(x)
        from_hidden = float(torch.sigmoid(resmem.fc12(hidden))[0, 0])
    assert 0.0 < score < 1.0
    assert hidden.shape == (1, 256)
    assert abs(from_hidden - score) < 1e-6


def test_preprocess_is_resize_then_centre_crop_rgb() -> None:
    frame = np.zeros((256, 256, 3), np.uint8)
    frame[:, :, 2] = 255  # BGR red
    frame[:14, :] = 0  # rows above the 14-pixel crop offset are cut away
    x = preprocess([frame])
    assert torch.all(x[0, 0] == 1.0) and torch.all(x[0, 1:] == 0.0)


def test_preprocess_equals_the_package_transform_pixel_for_pixel() -> None:
    """`resmem.transformer` (Resize((256, 256)) on a PIL image, CenterCrop(227), ToTensor) was run once on
    `synthetic_rgb()` by data/make_resmem_transform.py and its output stored as uint8 (= output x 255,
    exactly). Ours must equal it bit for bit: an OpenCV resize differs by up to tens of grey levels."""
    stored = np.load(EXPECTED)
    image = synthetic_rgb()
    assert hashlib.sha256(image.tobytes()).hexdigest() == str(stored["input_sha256"])  # same input as stored
    expected = torch.from_numpy(stored["expected"]).float() / 255.0
    ours = preprocess([cv2.cvtColor(image, cv2.COLOR_RGB2BGR)])
    assert ours.shape == (1, 3, 227, 227) and ours.dtype == torch.float32
    assert torch.equal(ours[0], expected)


def test_wrong_input_size_and_bad_checkpoint_are_clear(tmp_path) -> None:
    with pytest.raises(ValueError, match="227"):
        ResMem(blocks=(1, 1, 1, 1)).embed(torch.zeros(1, 3, 100, 100))
    bad = tmp_path / "model.pt"
    bad.write_text("version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(UserError, match="not a readable torch state dict"):
        load_resmem(bad)
    with pytest.raises(UserError, match="no such file"):
        load_resmem(tmp_path / "absent.pt")
