"""Readers for image classification files: IDX (MNIST family), CIFAR-10 python batches, image folders,
scikit-learn's digits.

Every reader returns ``images`` as uint8 (N, H, W) for grey or (N, H, W, 3) RGB for colour, and
``labels`` as int64, so every dataset meets the DataModule (`data.images`) in one shape convention.
A missing file is downloaded only when allowed (``dataset.download=true``); otherwise it stops with one
line naming the path and the official URL.
"""

from __future__ import annotations

import gzip
import pickle
import struct
import tarfile
import zlib
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from common.errors import UserError, missing_file
from common.files import ensure_file, require_file

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
_DIGITS_SEED = 0


# ----------------------------------------------------------------------------------------------- readers
def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX uint8 array (the MNIST file format); gzip-compressed when the name ends in ``.gz``."""
    path = require_file(path, "check the path")
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
        raise UserError(
            f"corrupt IDX file {path}: {len(raw) - offset} data bytes for shape {dims} "
            "(truncated?); delete it and download it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims).copy()


def _read_idx_pair(root: Path, split: str, download: bool, url: str) -> Arrays:
    """Read one split of an MNIST-layout folder (four ``*-ubyte.gz`` files)."""
    image_path, label_path = (root / name for name in _IDX_FILES[split])
    for path in (image_path, label_path):
        ensure_file(path, url + path.name, download)
    images, labels = read_idx(image_path), read_idx(label_path).astype(np.int64)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(
            f"{image_path} and {label_path} do not match (shapes {images.shape}, {labels.shape}): "
            "delete them and download them again"
        )
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
    ensure_file(archive, CIFAR10_URL, download=True)
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


READERS: dict[str, Callable[[Path, str, bool], Arrays]] = {
    "fashion_mnist": partial(_read_idx_pair, url=FASHION_MNIST_URL),
    "mnist": partial(_read_idx_pair, url=MNIST_URL),
    "cifar10": _read_cifar10,
    "image_folder": _read_image_folder,
    "digits": _read_digits,
}


def load_images(name: str, root: str | Path, split: str, download: bool = False) -> Arrays:
    """Load one split ("train" or "test") of dataset ``name`` from the folder ``root``."""
    if name not in READERS:
        raise UserError(f"unknown image dataset {name!r}: use one of {', '.join(sorted(READERS))}")
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r} for dataset {name!r}: use one of {', '.join(SPLITS)}")
    return READERS[name](Path(root).expanduser(), split, download)
