"""Image classification data: file readers for the supported datasets and a Lightning DataModule.

Readers return ``images`` as uint8 (N, H, W) for grey or (N, H, W, 3) RGB for colour, and ``labels`` as
int64, so every dataset meets the DataModule in one shape convention. The DataModule fixes every random
choice that should not vary between conditions (pool permutation, validation points) with constant seeds,
and varies only the training subset and its order with ``subset_seed``.
"""
from __future__ import annotations

import gzip
import pickle
import struct
import tarfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from data.samplers import EpochSeededSampler
from experiments.errors import UserError, missing_file

Arrays = tuple[np.ndarray, np.ndarray]

FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
_POOL_SEED = 12345  # fixed: the pool split must not move when subset_seed changes
_VAL_SEED = 0  # fixed: every run validates on the same test-split points
_DIGITS_SEED = 0


# ----------------------------------------------------------------------------------------------- readers
def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX uint8 array (the MNIST file format); gzip-compressed when the name ends in ``.gz``."""
    path = Path(path)
    if not path.is_file():
        raise missing_file(path, "check the path")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"corrupt IDX file {path} ({e}): delete it and download it again") from e
    return _parse_idx(raw, path)


def _parse_idx(raw: bytes, path: Path) -> np.ndarray:
    """Decode IDX bytes: 2 zero bytes, dtype code 0x08 (uint8), ndim, big-endian int32 dims, data."""
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise UserError(f"corrupt IDX file {path}: bad header (expected uint8 IDX); delete it and download it again")
    ndim = raw[3]
    offset = 4 + 4 * ndim
    if len(raw) < offset:
        raise UserError(f"corrupt IDX file {path}: truncated header; delete it and download it again")
    dims = struct.unpack(f">{ndim}i", raw[4:offset])
    if len(raw) - offset != int(np.prod(dims, dtype=np.int64)):
        raise UserError(f"corrupt IDX file {path}: {len(raw) - offset} data bytes for shape {dims} "
                        "(truncated?); delete it and download it again")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims).copy()


def _download(url: str, dest: Path) -> None:
    """Fetch ``url`` to ``dest`` through a temporary name, so an interrupted download leaves no bad file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        urllib.request.urlretrieve(url, tmp)
    except (urllib.error.URLError, OSError) as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"could not download {url} to {dest} ({e}): download it by hand") from e
    tmp.replace(dest)


def _ensure_file(path: Path, url: str, download: bool) -> None:
    """Download a missing file when allowed, else say where to get it."""
    if path.is_file():
        return
    if not download:
        raise missing_file(path, f"download it from {url} or set dataset.download=true")
    _download(url, path)


def _read_idx_pair(root: Path, split: str, download: bool, url: str) -> Arrays:
    """Read one split of an MNIST-layout folder (four ``*-ubyte.gz`` files)."""
    image_path, label_path = (root / name for name in _IDX_FILES[split])
    for path in (image_path, label_path):
        _ensure_file(path, url + path.name, download)
    images, labels = read_idx(image_path), read_idx(label_path).astype(np.int64)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(f"{image_path} and {label_path} do not match (shapes {images.shape}, {labels.shape}): "
                        "delete them and download them again")
    return images, labels


def _cifar_batch_dir(root: Path) -> Path | None:
    """The folder holding CIFAR-10 batches: ``root/cifar-10-batches-py`` or ``root`` itself."""
    for candidate in (root / _CIFAR_DIR, root):
        if (candidate / "test_batch").is_file() or (candidate / "data_batch_1").is_file():
            return candidate
    return None


def _read_cifar_batch(path: Path) -> Arrays:
    """Unpickle one CIFAR-10 python batch into (N, 32, 32, 3) uint8 images and int64 labels."""
    if not path.is_file():
        raise missing_file(path, f"download and extract {CIFAR10_URL} or set dataset.download=true")
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except Exception as e:  # any unpickling/format failure means the same thing: the file is bad
        raise UserError(f"corrupt CIFAR-10 batch {path} ({type(e).__name__}): delete it and extract it again") from e
    if len(data) != len(labels):
        raise UserError(f"corrupt CIFAR-10 batch {path}: {len(data)} images but {len(labels)} labels")
    return data.transpose(0, 2, 3, 1).copy(), labels


def _download_cifar10(root: Path) -> None:
    """Download the CIFAR-10 python archive into ``root`` and extract ``cifar-10-batches-py/``."""
    archive = root / Path(CIFAR10_URL).name
    _ensure_file(archive, CIFAR10_URL, download=True)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UserError(f"corrupt archive {archive} ({e}): delete it and download it again") from e


def _read_cifar10(root: Path, split: str, download: bool) -> Arrays:
    """CIFAR-10 from python batches, or from an image-folder layout ``root/<split>/<class>/`` if present."""
    batch_dir = _cifar_batch_dir(root)
    if batch_dir is None and (root / split).is_dir():
        return _read_image_folder(root, split, download)
    if batch_dir is None:
        if not download:
            raise missing_file(root / _CIFAR_DIR, f"download and extract {CIFAR10_URL} there or set dataset.download=true")
        _download_cifar10(root)
        batch_dir = root / _CIFAR_DIR
    parts = [_read_cifar_batch(batch_dir / name) for name in _CIFAR_BATCHES[split]]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _read_image(path: Path) -> np.ndarray:
    """One image file as uint8 (H, W) grey or (H, W, 3) RGB."""
    import cv2  # imported here: only image folders need OpenCV

    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None or image.dtype != np.uint8:
        raise UserError(f"cannot read {path} as an 8-bit image: replace or remove it")
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    if image.ndim == 3:
        code = cv2.COLOR_BGRA2RGB if image.shape[2] == 4 else cv2.COLOR_BGR2RGB
        return cv2.cvtColor(image, code)
    return image


def _stack_images(images: list[np.ndarray], folder: Path) -> np.ndarray:
    """Stack images into one array, promoting grey to RGB if the folder mixes both; sizes must agree."""
    if any(im.ndim == 3 for im in images):
        images = [np.repeat(im[:, :, None], 3, axis=2) if im.ndim == 2 else im for im in images]
    shapes = sorted({im.shape for im in images})
    if len(shapes) > 1:
        raise UserError(f"images under {folder} have different sizes {shapes[:3]}: resize them to one size")
    return np.stack(images)


def _read_image_folder(root: Path, split: str, download: bool = False) -> Arrays:
    """Read ``root/<split>/<class_name>/*.png|jpg``; labels index the sorted class names."""
    folder = root / split
    if not folder.is_dir():
        raise missing_file(folder, "expected the layout <root>/<split>/<class_name>/*.png")
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir())
    images, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        images += [_read_image(p) for p in files]
        labels += [label] * len(files)
    if not images:
        raise UserError(f"no images under {folder}: expected <root>/<split>/<class_name>/*.png or *.jpg")
    return _stack_images(images, folder), np.asarray(labels, dtype=np.int64)


def _read_digits(root: Path, split: str, download: bool = False) -> Arrays:
    """scikit-learn's bundled 8x8 digits scaled to 0..255, with a fixed seeded 80/20 train/test split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    order = np.random.default_rng(_DIGITS_SEED).permutation(len(images))
    n_test = round(0.2 * len(images))
    chosen = np.sort(order[:n_test] if split == "test" else order[n_test:])
    return images[chosen], digits.target[chosen].astype(np.int64)


_READERS: dict[str, Callable[[Path, str, bool], Arrays]] = {
    "fashion_mnist": partial(_read_idx_pair, url=FASHION_MNIST_URL),
    "mnist": partial(_read_idx_pair, url=MNIST_URL),
    "cifar10": _read_cifar10,
    "image_folder": _read_image_folder,
    "digits": _read_digits,
}


def load_images(name: str, root: str | Path, split: str, download: bool = False) -> Arrays:
    """Load one split ("train" or "test") of dataset ``name`` from the folder ``root``."""
    if name not in _READERS:
        raise UserError(f"unknown image dataset {name!r}: use one of {', '.join(sorted(_READERS))}")
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r} for dataset {name!r}: use one of {', '.join(SPLITS)}")
    return _READERS[name](Path(root).expanduser(), split, download)


# ------------------------------------------------------------------------------------------ index choices
def filter_classes(images: np.ndarray, labels: np.ndarray, classes: Sequence[int] | None) -> Arrays:
    """Keep only ``classes`` and relabel them 0..k-1 in the order given."""
    if classes is None:
        return images, labels
    classes = [int(c) for c in classes]
    present = set(np.unique(labels).tolist())
    if len(set(classes)) != len(classes) or not set(classes) <= present:
        raise UserError(f"dataset.classes={classes} must be distinct labels from {sorted(present)}")
    lookup = np.full(max(present) + 1, -1, dtype=np.int64)
    lookup[classes] = np.arange(len(classes))
    keep = np.isin(labels, classes)
    return images[keep], lookup[labels[keep]]


def pool_indices(n: int, pool: tuple[float, float]) -> np.ndarray:
    """Indices in the fraction range ``pool`` of a fixed permutation, so adjacent ranges are disjoint."""
    low, high = pool
    if not 0.0 <= low < high <= 1.0:
        raise UserError(f"dataset.pool={list(pool)} must satisfy 0 <= low < high <= 1")
    order = np.random.default_rng(_POOL_SEED).permutation(n)
    return order[round(low * n):round(high * n)]


def stratified_subset(labels: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """Positions of ``n`` items taken round-robin over classes of a seeded shuffle (all classes if n allows).

    Subsets with the same seed are nested: the first ``n`` picks do not depend on the requested size.
    """
    if n is None:
        return np.arange(len(labels))
    if not 0 < n <= len(labels):
        raise UserError(f"dataset.n_train={n} must be between 1 and the training pool size {len(labels)}: "
                        "lower n_train or widen dataset.pool")
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


def eval_split(n: int, n_val: int) -> tuple[np.ndarray, np.ndarray]:
    """(validation, test) positions: ``n_val`` fixed-seed picks and the rest."""
    if not 0 <= n_val <= n:
        raise UserError(f"dataset.n_val={n_val} must be between 0 and the test split size {n}")
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
        x = images[start:start + chunk].to(torch.float64) / 255.0
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
    test_images: torch.Tensor
    test_labels: torch.Tensor
    val_idx: np.ndarray
    test_idx: np.ndarray
    collate: NormaliseCollate
    num_classes: int


# ------------------------------------------------------------------------------------------ DataModule
class ImageDataModule(L.LightningDataModule):
    """Image classification data with a fixed pool split, a seeded training subset and fixed validation."""

    def __init__(self, name: str, root: str, n_train: int | None = None, n_val: int = 2000,
                 classes: list[int] | None = None, pool: tuple[float, float] = (0.0, 1.0), subset_seed: int = 0,
                 batch_size: int = 32, eval_batch_size: int = 1000, resize: int | None = None,
                 num_workers: int = 0, download: bool = False) -> None:
        super().__init__()
        if name not in _READERS:
            raise UserError(f"unknown image dataset data.name={name!r}: use one of {', '.join(sorted(_READERS))}")
        for key, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if int(value) < 1:
                raise UserError(f"dataset.{key}={value} must be >= 1")
        if resize is not None and int(resize) < 1:
            raise UserError(f"dataset.resize={resize} must be >= 1 or null")
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
        self._data: _Prepared | None = None

    def _split(self, split: str) -> Arrays:
        """One official split, filtered to ``classes``; read once per instance."""
        if split not in self._raw:
            images, labels = load_images(self.name, self.root, split, download=self.download)
            self._raw[split] = filter_classes(images, labels, self.classes)
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
        pool = pool_indices(len(train_y), self.pool)
        train_idx = pool[stratified_subset(train_y[pool], self.n_train, self.subset_seed)]
        mean, std = channel_stats(train_images[torch.from_numpy(np.sort(pool))])
        val_idx, test_idx = eval_split(len(test_y), self.n_val)
        num_classes = len(self.classes) if self.classes else int(max(train_y.max(), test_y.max())) + 1
        self._data = _Prepared(train_images, torch.from_numpy(train_y), train_idx, test_images,
                               torch.from_numpy(test_y), val_idx, test_idx, NormaliseCollate(mean, std, self.resize),
                               num_classes)

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
            raise UserError(f"images under {self.root} are {height}x{width}, not square: set dataset.resize")
        return height

    @property
    def network_kwargs(self) -> dict[str, int]:
        """Sizes a network needs to fit this data."""
        return {"in_channels": self.in_channels, "num_classes": self.num_classes, "image_size": self.image_size}

    def _loader(self, images: torch.Tensor, labels: torch.Tensor, idx: np.ndarray, train: bool) -> DataLoader:
        dataset = IndexedImages(images, labels, idx)
        sampler = EpochSeededSampler(len(dataset), seed=self.subset_seed) if train else None
        return DataLoader(dataset, batch_size=self.batch_size if train else self.eval_batch_size, sampler=sampler,
                          shuffle=False, drop_last=False, num_workers=self.num_workers,
                          collate_fn=self.prepared.collate, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        d = self.prepared
        return self._loader(d.train_images, d.train_labels, d.train_idx, train=True)

    def val_dataloader(self) -> DataLoader:
        d = self.prepared
        return self._loader(d.test_images, d.test_labels, d.val_idx, train=False)

    def test_dataloader(self) -> DataLoader:
        d = self.prepared
        return self._loader(d.test_images, d.test_labels, d.test_idx, train=False)
