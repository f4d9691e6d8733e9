"""ResMem (Needell & Bainbridge 2022) in plain torch, loading the `resmem` package's weights strictly.

The package's own class builds torchvision's ResNet-152 (which does not import with the CPU torch
here), an AlexNet-like branch, and an MLP head on the concatenation of both (9216 + 1000 features).
The modules below carry the same parameter names (`features.layer3.35.conv2.weight`, `conv1`...
`fc12`) so `load_state_dict(strict=True)` proves the architecture matches. Preprocessing is the
package's transform, pixel for pixel: PIL's bilinear resize to 256x256 (antialiased when shrinking),
centre crop 227, RGB in [0, 1], no mean/std normalisation. The filter matters: OpenCV's resize moved
per-frame scores of the four sample clips by up to 0.026 (mean |change| 0.001-0.006 per clip), as
much as many crop deltas.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from common.errors import UserError

INPUT_SIZE, RESIZE = 227, 256
RESNET152_BLOCKS = (3, 8, 36, 3)


class Bottleneck(nn.Module):
    """torchvision's ResNet bottleneck (v1.5: the stride sits on the 3x3 conv)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNet(nn.Module):
    """ResNet with torchvision's parameter names; ResNet-152 by default, 1000 ImageNet logits out."""

    def __init__(self, blocks: tuple[int, ...] = RESNET152_BLOCKS, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for index, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
            stride = 1 if index == 1 else 2
            downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False), nn.BatchNorm2d(planes * 4))
            layers = [Bottleneck(inplanes, planes, stride, downsample)]
            inplanes = planes * 4
            layers += [Bottleneck(inplanes, planes) for _ in range(count - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*layers))
        self.fc = nn.Linear(512 * 4, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ResMem(nn.Module):
    """ResNet-152 logits + an AlexNet-style branch -> MLP -> sigmoid memorability in [0, 1]."""

    def __init__(self, cruise_altitude: int = 384, blocks: tuple[int, ...] = RESNET152_BLOCKS) -> None:
        super().__init__()
        self.features = ResNet(blocks)
        self.conv1 = nn.Conv2d(3, 48, kernel_size=11, stride=4)
        self.pool1 = nn.MaxPool2d(3, 2)
        self.lrn1 = nn.LocalResponseNorm(5)
        self.conv2 = nn.Conv2d(48, 256, kernel_size=5, padding=2, groups=2)
        self.pool2 = nn.MaxPool2d(3, 2)
        self.lrn2 = nn.LocalResponseNorm(5)
        self.conv3 = nn.Conv2d(256, cruise_altitude, 3, padding=1, groups=2)
        self.conv4 = nn.Conv2d(cruise_altitude, cruise_altitude, 3, padding=1, groups=2)
        self.conv5 = nn.Conv2d(cruise_altitude, 256, 3, padding=1, groups=2)
        self.pool5 = nn.MaxPool2d(3, 2)
        self.fc6 = nn.Linear(9216 + 1000, 4096)
        self.fc7 = nn.Linear(4096, 4096)
        self.fc8 = nn.Linear(4096, 2048)
        self.fc9 = nn.Linear(2048, 1024)
        self.fc10 = nn.Linear(1024, 512)
        self.fc11 = nn.Linear(512, 256)
        self.fc12 = nn.Linear(256, 1)
        self.dropout = nn.Dropout(0.5)  # no parameters: the package's drp6/drp7/drp8

    def embed(self, x: Tensor) -> Tensor:
        """The 256-d hidden layer before the output (features for a regressor on frames)."""
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"ResMem needs {INPUT_SIZE}x{INPUT_SIZE} inputs, got {tuple(x.shape[-2:])}")
        cnv = self.lrn1(self.pool1(F.relu(self.conv1(x))))
        cnv = self.lrn2(self.pool2(F.relu(self.conv2(cnv))))
        cnv = F.relu(self.conv5(F.relu(self.conv4(F.relu(self.conv3(cnv))))))
        feat = torch.flatten(self.pool5(cnv), 1)  # 256 x 6 x 6 = 9216
        hid = torch.cat((feat, self.features(x)), 1)
        hid = self.dropout(F.relu(self.fc6(hid)))
        hid = self.dropout(F.relu(self.fc7(hid)))  # the package applies drp8 here; both are p=0.5
        hid = F.relu(self.fc8(hid))
        hid = F.relu(self.fc10(F.relu(self.fc9(hid))))
        return F.relu(self.fc11(hid))

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.fc12(self.embed(x)))


def resmem_checkpoint_path() -> Path:
    """The `resmem` package's model.pt, found without importing the package (it imports torchvision)."""
    spec = importlib.util.find_spec("resmem")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "ResMem weights: the `resmem` package is not installed; pip install --no-deps resmem==1.1.6 "
            "(or set model.checkpoint to a model.pt)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model.pt"
    if not path.is_file():
        raise UserError(
            f"ResMem weights: {path} is missing; reinstall with pip install --no-deps --force-reinstall resmem==1.1.6"
        )
    return path


def load_resmem(checkpoint: str | Path | None = None) -> ResMem:
    """ResMem in eval mode with the published weights, loaded strictly."""
    path = Path(checkpoint) if checkpoint else resmem_checkpoint_path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"model.checkpoint={path}: no such file; pip install --no-deps resmem==1.1.6 ships it") from None
    except Exception as exc:
        raise UserError(
            f"model.checkpoint={path}: not a readable torch state dict ({exc.__class__.__name__}); "
            "if it is a Git LFS pointer, run git lfs pull"
        ) from None
    model = ResMem()
    model.load_state_dict(state, strict=True)
    return model.eval()


def preprocess(frames: list[np.ndarray]) -> Tensor:
    """BGR (or grey) uint8 frames -> (N, 3, 227, 227) float RGB in [0, 1], exactly as the package's
    `Resize((256, 256))`, `CenterCrop(227)`, `ToTensor()` on a PIL image: the weights were trained on
    that input, so the same filter (PIL bilinear, antialiased) and crop offset are used, without
    importing torchvision."""
    offset = int(round((RESIZE - INPUT_SIZE) / 2.0))  # torchvision's CenterCrop: round(14.5) = 14
    box = (offset, offset, offset + INPUT_SIZE, offset + INPUT_SIZE)
    batch = []
    for frame in frames:
        rgb = cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB if frame.ndim == 2 else cv2.COLOR_BGR2RGB)
        resized = Image.fromarray(rgb).resize((RESIZE, RESIZE), Image.Resampling.BILINEAR)
        batch.append(np.asarray(resized.crop(box)))
    return torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float().div_(255.0)
