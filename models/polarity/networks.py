"""Networks for the polarity experiments.

`PopulationMLP` stacks R independent 5-H-1 MLPs into batched tensors so that every (condition, seed)
run of an XOR experiment trains in one pass: with a loss that sums the runs' own mean losses, each
run's gradient is exactly its own, and Adam (element-wise) keeps the runs independent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from common.errors import UserError


class PopulationLinear(nn.Module):
    """R independent Linear layers: x (R, B, in) -> (R, B, out); weight (R, out, in), bias (R, out)."""

    def __init__(self, num_runs: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_runs, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(num_runs, out_features))

    def forward(self, x: Tensor) -> Tensor:
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))


def _paper_init_(layer: PopulationLinear, run: int, generator: torch.Generator, kernel_std: float) -> None:
    """Keras settings of the reference code: kernel TruncatedNormal(0, std) cut at 2 std; bias
    Glorot-uniform, which for a 1-D bias of length n is U(-sqrt(3/n), sqrt(3/n))."""
    weight, bias = layer.weight[run], layer.bias[run]
    nn.init.trunc_normal_(weight, 0.0, kernel_std, -2 * kernel_std, 2 * kernel_std, generator=generator)
    limit = math.sqrt(3.0 / bias.numel())
    bias.uniform_(-limit, limit, generator=generator)


class PopulationMLP(nn.Module):
    """R MLPs in -> H (ReLU) -> out, trained side by side; returns logits (R, B, out).

    `init_seeds[r]` seeds run r's initial weights, so runs of different conditions that share a seed
    start from identical weights (the paper's Freeze vs Fluid pairing).
    """

    population = True  # tells the task to train all runs of a job in this one module

    def __init__(
        self,
        num_runs: int = 1,
        in_features: int = 5,
        hidden: int = 64,
        out_features: int = 1,
        kernel_std: float = 0.25,
        init_seeds: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if hidden < 1 or num_runs < 1:
            raise UserError(f"model.network.hidden={hidden} and num_runs={num_runs} must be >= 1")
        self.num_runs = num_runs
        self.hidden = PopulationLinear(num_runs, in_features, hidden)
        self.output = PopulationLinear(num_runs, hidden, out_features)
        seeds = list(init_seeds) if init_seeds is not None else list(range(num_runs))
        if len(seeds) != num_runs:
            raise ValueError(f"init_seeds has {len(seeds)} entries for {num_runs} runs")
        with torch.no_grad():
            for run, seed in enumerate(seeds):
                generator = torch.Generator().manual_seed(int(seed))
                _paper_init_(self.hidden, run, generator, kernel_std)
                _paper_init_(self.output, run, generator, kernel_std)

    def forward(self, x: Tensor) -> Tensor:
        return self.output(torch.relu(self.hidden(x)))


class SmallCNN(nn.Module):
    """conv(3x3)-ReLU-maxpool blocks, then fc-ReLU and a class head (PyTorch default init)."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
        channels: Sequence[int] = (16, 32),
        hidden: int = 128,
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        size, previous = image_size, in_channels
        for width in channels:
            blocks += [nn.Conv2d(previous, width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            previous, size = width, size // 2
        if size < 1:
            raise UserError(f"SmallCNN: {len(channels)} pooling stages need images of at least {2 ** len(channels)} px")
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(previous * size * size, hidden), nn.ReLU(inplace=True))
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.classifier(self.features(x)))


def _conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def alexnet_features(in_channels: int, c: list[int], first_padding: int) -> nn.Sequential:
    """AlexNet's five convolutions and three max-pools; the variants differ in widths `c` and conv1's padding."""
    return nn.Sequential(
        nn.Conv2d(in_channels, c[0], 11, stride=4, padding=first_padding),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(c[0], c[1], 5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(c[1], c[2], 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(c[2], c[3], 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(c[3], c[4], 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2),
    )


class AlexNetPaper(nn.Module):
    """AlexNet as in the paper's reference code (Keras, after Krizhevsky et al. 2012): conv 96-11/4 (valid),
    pool 3/2, conv 256-5, pool, conv 384-3, 384-3, 256-3, pool, fc6 4096, dropout, fc7 4096, dropout,
    fc8 1000 (ReLU), class head; widths x width_mult. Init as Keras there: conv kernels Glorot-normal
    (truncated at 2 std, Keras' GlorotNormal), fc6-8 Glorot-uniform, head TruncatedNormal(0, 0.25), all
    biases 0. At 227 px the last feature map is 6 x 6 (no adaptive pooling, no padding in conv1)."""

    MIN_SIZE = 67  # smallest input whose last pooling stage still has one pixel

    def __init__(
        self, in_channels: int = 3, num_classes: int = 10, image_size: int = 227, width_mult: float = 1.0, dropout: float = 0.5
    ) -> None:
        super().__init__()
        size = _conv_out(_conv_out(_conv_out(_conv_out(image_size, 11, 4), 3, 2), 3, 2), 3, 2)
        if size < 1:
            raise UserError(
                f"AlexNetPaper needs images of at least {self.MIN_SIZE} px, got {image_size}: "
                "set dataset.resize=227 (the paper's)"
            )
        c = [max(1, round(w * width_mult)) for w in (96, 256, 384, 384, 256)]
        fc = max(1, round(4096 * width_mult))
        self.features = alexnet_features(in_channels, c, first_padding=0)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c[4] * size * size, fc),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(fc, fc),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(fc, 1000),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(1000, num_classes)
        self._keras_init_()

    @torch.no_grad()
    def _keras_init_(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(module.weight)
                std = math.sqrt(2.0 / (fan_in + fan_out)) / 0.87962566103423978  # Keras: truncated-normal stddev
                nn.init.trunc_normal_(module.weight, 0.0, std, -2 * std, 2 * std)
            elif isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.head.weight, 0.0, 0.25, -0.5, 0.5)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.classifier(self.features(x)))


class AlexNetTorchvision(nn.Module):
    """AlexNet with torchvision's layout (NOT the paper's): widths 64/192/384/256/256, conv1 padding 2,
    adaptive 6 x 6 pooling, dropout before fc6 and fc7, PyTorch default init; plus fc 1000 and a class
    head as in the paper. Kept as `model=polarity_alexnet_tv` (smaller, accepts inputs from 63 px)."""

    MIN_SIZE = 63

    def __init__(
        self, in_channels: int = 3, num_classes: int = 10, image_size: int = 227, width_mult: float = 1.0, dropout: float = 0.5
    ) -> None:
        super().__init__()
        if image_size < self.MIN_SIZE:
            raise UserError(
                f"AlexNetTorchvision needs images of at least {self.MIN_SIZE} px, got {image_size}: set dataset.resize=227 (the paper's)"
            )
        c = [max(1, round(w * width_mult)) for w in (64, 192, 384, 256, 256)]
        fc = max(1, round(4096 * width_mult))
        self.features = alexnet_features(in_channels, c, first_padding=2)
        self.pool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(c[4] * 36, fc),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(fc, fc),
            nn.ReLU(inplace=True),
            nn.Linear(fc, 1000),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(1000, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.classifier(self.pool(self.features(x))))
