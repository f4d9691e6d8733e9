"""Image classification data: index selection (classes, pools, stratified subsets, validation points)
and the Lightning DataModule. File readers live in `data.image_readers`.

The DataModule fixes every random choice that should not vary between conditions (pool permutation,
validation points) with constant seeds, and varies only the training subset and its order with
``subset_seed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from common.errors import UserError
from data.image_readers import READERS, SPLITS, Arrays, load_images
from data.samplers import shuffled

_POOL_SEED = 12345  # fixed: the pool split must not move when subset_seed changes
_VAL_SEED = 0  # fixed: every run validates on the same test-split points


# ------------------------------------------------------------------------------------------ index choices
def filter_classes(images: np.ndarray, labels: np.ndarray, classes: Sequence[int] | None, key: str = "dataset") -> Arrays:
    """Keep only ``classes`` and relabel them 0..k-1 in the order given."""
    if classes is None:
        return images, labels
    classes = [int(c) for c in classes]
    present = set(np.unique(labels).tolist())
    if len(set(classes)) != len(classes) or not set(classes) <= present:
        raise UserError(f"{key}.classes={classes} must be distinct labels from {sorted(present)}")
    lookup = np.full(max(present) + 1, -1, dtype=np.int64)
    lookup[classes] = np.arange(len(classes))
    keep = np.isin(labels, classes)
    return images[keep], lookup[labels[keep]]


def pool_indices(n: int, pool: tuple[float, float], key: str = "dataset") -> np.ndarray:
    """Indices in the fraction range ``pool`` of a fixed permutation, so adjacent ranges are disjoint.
    ``n`` is the size of the whole official split (before any class filter), so that pools of modules
    with different ``classes`` are ranges of the same permutation and stay disjoint image for image."""
    low, high = pool
    if not 0.0 <= low < high <= 1.0:
        raise UserError(f"{key}.pool={list(pool)} must satisfy 0 <= low < high <= 1")
    order = np.random.default_rng(_POOL_SEED).permutation(n)
    return order[round(low * n) : round(high * n)]


def stratified_subset(labels: np.ndarray, n: int | None, seed: int, key: str = "dataset") -> np.ndarray:
    """Positions of ``n`` items taken round-robin over classes of a seeded shuffle (all classes if n allows).

    Subsets with the same seed are nested: the first ``n`` picks do not depend on the requested size.
    """
    if n is None:
        return np.arange(len(labels))
    if not 0 < n <= len(labels):
        raise UserError(
            f"{key}.n_train={n} must be between 1 and the training pool size {len(labels)}: "
            f"lower {key}.n_train or widen {key}.pool"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    class_order = rng.permutation(np.unique(labels))
    rank = np.empty(len(labels), dtype=np.int64)
    slot = np.empty(len(labels), dtype=np.int64)
    for i, c in enumerate(class_order):
        members = order[labels[order] == c]
        rank[members] = np.arange(len(members))
        slot[members] = i
    picks = np.argsort(rank * len(class_order) + slot, kind="stable")[:n]
    return np.sort(picks)


def eval_split(n: int, n_val: int, key: str = "dataset") -> tuple[np.ndarray, np.ndarray]:
    """(validation, test) positions: ``n_val`` fixed-seed picks and the rest."""
    if not 0 <= n_val <= n:
        raise UserError(f"{key}.n_val={n_val} must be between 0 and the test split size {n}")
    order = np.random.default_rng(_VAL_SEED).permutation(n)
    return np.sort(order[:n_val]), np.sort(order[n_val:])


# ------------------------------------------------------------------------------------------ tensors
def to_nchw(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, C) array -> contiguous uint8 (N, C, H, W) tensor."""
    chw = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(chw))


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean/std of uint8 (N, C, H, W) images scaled to [0, 1], in chunks to bound memory."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].to(torch.float64) / 255.0
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
    count = max(images.numel() // images.shape[1], 1)
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0.0).sqrt()
    std = torch.where(std > 1e-8, std, torch.ones_like(std))  # constant channel: leave its scale alone
    return mean.float(), std.float()


class IndexedImages(Dataset):
    """A view of some rows of a uint8 image tensor; items are (uint8 CHW image, label)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, indices: np.ndarray) -> None:
        self.images, self.labels = images, labels
        self.indices = torch.as_tensor(indices, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = self.indices[i]
        return self.images[row], self.labels[row]


class NormaliseCollate:
    """Batch uint8 images to float in [0, 1], normalise per channel, resize per batch (bounds memory)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, resize: int | None) -> None:
        self.mean, self.std, self.resize = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1), resize

    def __call__(self, items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.stack([item[0] for item in items]).float().div_(255.0)
        x = (x - self.mean) / self.std
        if self.resize is not None:
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        return x, torch.stack([item[1] for item in items])


@dataclass
class _Prepared:
    """Everything ``setup`` computes once."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    train_idx: np.ndarray
    train_rows: np.ndarray  # rows of the training subset in the official, unfiltered training split
    test_images: torch.Tensor
    test_labels: torch.Tensor
    val_idx: np.ndarray
    test_idx: np.ndarray
    collate: NormaliseCollate
    num_classes: int


# ------------------------------------------------------------------------------------------ DataModule
class ImageDataModule(L.LightningDataModule):
    """Image classification data with a fixed pool split, a seeded training subset and fixed validation."""

    config_key: str = "dataset"  # the config node this module was built from: errors name its keys

    def __init__(
        self,
        name: str,
        root: str,
        n_train: int | None = None,
        n_val: int = 2000,
        classes: list[int] | None = None,
        pool: tuple[float, float] = (0.0, 1.0),
        subset_seed: int = 0,
        batch_size: int = 32,
        eval_batch_size: int = 1000,
        resize: int | None = None,
        num_workers: int = 0,
        download: bool = False,
        config_key: str = "dataset",
    ) -> None:
        super().__init__()
        self.config_key = config_key
        if name not in READERS:
            raise UserError(f"unknown image dataset {config_key}.name={name!r}: use one of {', '.join(sorted(READERS))}")
        for key, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if int(value) < 1:
                raise UserError(f"{config_key}.{key}={value} must be >= 1")
        if resize is not None and int(resize) < 1:
            raise UserError(f"{config_key}.resize={resize} must be >= 1 or null")
        self.name, self.root = name, Path(root).expanduser()
        self.n_train = None if n_train is None else int(n_train)
        self.n_val = int(n_val)
        self.classes = None if classes is None else [int(c) for c in classes]
        self.pool = (float(pool[0]), float(pool[1]))
        self.subset_seed, self.batch_size = int(subset_seed), int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.resize = None if resize is None else int(resize)
        self.num_workers, self.download = int(num_workers), bool(download)
        self._raw: dict[str, Arrays] = {}
        self._rows: dict[str, tuple[np.ndarray, int]] = {}  # kept rows of the official split, its full size
        self._data: _Prepared | None = None

    def _split(self, split: str) -> Arrays:
        """One official split, filtered to ``classes``; read once per instance."""
        if split not in self._raw:
            images, labels = load_images(self.name, self.root, split, download=self.download)
            self._raw[split] = filter_classes(images, labels, self.classes, self.config_key)
            kept = np.arange(len(labels)) if self.classes is None else np.nonzero(np.isin(labels, self.classes))[0]
            self._rows[split] = (kept, len(labels))
        return self._raw[split]

    def prepare_data(self) -> None:
        """Download missing files (only when ``download=True``)."""
        if self.download:
            for split in SPLITS:
                self._split(split)

    def setup(self, stage: str | None = None) -> None:
        """Read both splits and fix the pool, subset, validation points and normalisation (once)."""
        if self._data is not None:
            return
        train_x, train_y = self._split("train")
        test_x, test_y = self._split("test")
        train_images, test_images = to_nchw(train_x), to_nchw(test_x)
        pool = self._pool_positions()
        train_idx = pool[stratified_subset(train_y[pool], self.n_train, self.subset_seed, self.config_key)]
        mean, std = channel_stats(train_images[torch.from_numpy(np.sort(pool))])
        val_idx, test_idx = eval_split(len(test_y), self.n_val, self.config_key)
        num_classes = len(self.classes) if self.classes else int(max(train_y.max(), test_y.max())) + 1
        self._data = _Prepared(
            train_images,
            torch.from_numpy(train_y),
            train_idx,
            self._rows["train"][0][train_idx],
            test_images,
            torch.from_numpy(test_y),
            val_idx,
            test_idx,
            NormaliseCollate(mean, std, self.resize),
            num_classes,
        )

    def _pool_positions(self) -> np.ndarray:
        """Positions (in the class-filtered training arrays) of the images in ``pool``. The pool is cut from
        the unfiltered split and then filtered, so a source on classes 0-4 from [0, 0.5] and a target on
        all classes from [0.5, 1] never share an image (cutting after filtering would mix them)."""
        kept, total = self._rows["train"]
        position = np.full(total, -1, dtype=np.int64)
        position[kept] = np.arange(len(kept))
        pool = position[pool_indices(total, self.pool, self.config_key)]
        return pool[pool >= 0]

    @property
    def prepared(self) -> _Prepared:
        """The arrays fixed by ``setup``; a clear error if it has not run yet."""
        if self._data is None:
            raise RuntimeError("ImageDataModule.setup() must run before its data or properties are used")
        return self._data

    @property
    def num_classes(self) -> int:
        return self.prepared.num_classes

    @property
    def in_channels(self) -> int:
        return int(self.prepared.train_images.shape[1])

    @property
    def image_shape(self) -> tuple[int, int]:
        """(height, width) of the images the loaders yield (after ``resize``)."""
        if self.resize is not None:
            return self.resize, self.resize
        height, width = self.prepared.train_images.shape[2:]
        return int(height), int(width)

    @property
    def image_size(self) -> int:
        """Side length of the (square) images the loaders yield (after ``resize``)."""
        height, width = self.image_shape
        if height != width:
            raise UserError(f"images under {self.root} are {height}x{width}, not square: set {self.config_key}.resize")
        return height

    @property
    def network_kwargs(self) -> dict[str, int]:
        """Sizes a network needs to fit this data."""
        return {"in_channels": self.in_channels, "num_classes": self.num_classes, "image_size": self.image_size}

    def _loader(self, images: torch.Tensor, labels: torch.Tensor, idx: np.ndarray, train: bool) -> DataLoader:
        dataset = IndexedImages(images, labels, idx)
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            **(shuffled(len(dataset), seed=self.subset_seed) if train else {}),
            drop_last=False,
            num_workers=self.num_workers,
            collate_fn=self.prepared.collate,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        d = self.prepared
        return self._loader(d.train_images, d.train_labels, d.train_idx, train=True)

    def val_dataloader(self) -> DataLoader:
        d = self.prepared
        return self._loader(d.test_images, d.test_labels, d.val_idx, train=False)

    def test_dataloader(self) -> DataLoader:
        d = self.prepared
        return self._loader(d.test_images, d.test_labels, d.test_idx, train=False)
