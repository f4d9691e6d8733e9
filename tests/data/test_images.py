"""Specifications for the image readers, the ImageDataModule and the epoch-seeded sampler.

Every dataset here is written into ``tmp_path`` in its exact on-disk format; nothing is downloaded.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from common.errors import UserError
from data.image_readers import load_images, read_idx
from data.images import ImageDataModule
from data.samplers import EpochSeededSampler

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------ file writers
def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in IDX format (gzip when the name ends in .gz)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def write_mnist_folder(root: Path, n_train: int = 200, n_test: int = 100, size: int = 8) -> None:
    """An MNIST-layout folder whose images are all distinct (index encoded in the first two pixels)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
        images[:, 0, 0], images[:, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))


def write_cifar_batch(path: Path, data: np.ndarray, labels: list[int]) -> None:
    """A CIFAR-10 python batch: pickled dict with b"data" (N, 3072) and b"labels"."""
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"test", b"data": data, b"labels": labels}, f)


def write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)


@pytest.fixture
def mnist_root(tmp_path: Path) -> Path:
    root = tmp_path / "mnist"
    write_mnist_folder(root)
    return root


def image_bytes(loader: torch.utils.data.DataLoader) -> set[bytes]:
    return {x.numpy().tobytes() for batch, _ in loader for x in batch}


# ------------------------------------------------------------------------------------------ readers
def test_idx_round_trip_gz_and_raw(tmp_path: Path) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("x-idx3-ubyte.gz", "x-idx3-ubyte"):
        write_idx(tmp_path / name, images)
        back = read_idx(tmp_path / name)
        assert back.dtype == np.uint8 and back.shape == (2, 3, 4)
        np.testing.assert_array_equal(back, images)


def test_idx_pair_reads_known_pixels_and_labels(mnist_root: Path) -> None:
    images, labels = load_images("mnist", mnist_root, "test")
    assert images.shape == (100, 8, 8) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert images[37, 0, 0] == 37


def test_truncated_idx_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte.gz"
    write_idx(path, np.zeros((5, 4, 4), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-10])  # cut the gzip stream
    with pytest.raises(UserError, match="train-images-idx3-ubyte.gz"):
        read_idx(path)
    raw = tmp_path / "short-idx3-ubyte"
    write_idx(raw, np.zeros((5, 4, 4), dtype=np.uint8))
    raw.write_bytes(raw.read_bytes()[:-3])  # fewer data bytes than the header promises
    with pytest.raises(UserError, match="short-idx3-ubyte"):
        read_idx(raw)


def test_missing_split_names_file_and_url(tmp_path: Path) -> None:
    root = tmp_path / "mnist-test-only"
    write_mnist_folder(root)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (root / name).unlink()
    load_images("mnist", root, "test")  # the split that is there still loads
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte\.gz.*ossci-datasets.*download=true"):
        load_images("mnist", root, "train")


def test_cifar_pixel_lands_at_row_col_channel(tmp_path: Path) -> None:
    batch_dir = tmp_path / "cifar-10-batches-py"
    batch_dir.mkdir()
    for i in range(1, 6):
        data = np.zeros((2, 3072), dtype=np.uint8)
        if i == 1:
            data[0, 2 * 1024 + 5 * 32 + 7] = 200  # channel 2 (blue), row 5, column 7 in row-major CHW
        write_cifar_batch(batch_dir / f"data_batch_{i}", data, [i, 9])
    write_cifar_batch(batch_dir / "test_batch", np.zeros((3, 3072), dtype=np.uint8), [0, 1, 2])
    for root in (tmp_path, batch_dir):  # the parent folder or the batch folder itself
        images, labels = load_images("cifar10", root, "train")
        assert images.shape == (10, 32, 32, 3) and images.dtype == np.uint8
        assert images[0, 5, 7, 2] == 200 and images.sum() == 200
        assert labels.tolist() == [1, 9, 2, 9, 3, 9, 4, 9, 5, 9]
    assert load_images("cifar10", tmp_path, "test")[0].shape == (3, 32, 32, 3)


def test_corrupt_cifar_pickle_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "test_batch").write_bytes(b"\x80\x04not a pickle at all")
    with pytest.raises(UserError, match="test_batch"):
        load_images("cifar10", tmp_path, "test")


def test_image_folder_labels_follow_sorted_class_names(tmp_path: Path) -> None:
    red_bgr = np.zeros((6, 5, 3), dtype=np.uint8)
    red_bgr[..., 2] = 255
    write_png(tmp_path / "train" / "zebra" / "a.png", red_bgr)
    write_png(tmp_path / "train" / "ant" / "a.png", np.zeros((6, 5, 3), dtype=np.uint8))
    write_png(tmp_path / "train" / "ant" / "b.png", np.zeros((6, 5, 3), dtype=np.uint8))
    images, labels = load_images("image_folder", tmp_path, "train")
    assert images.shape == (3, 6, 5, 3)
    assert labels.tolist() == [0, 0, 1]  # "ant" < "zebra"
    assert images[2, 0, 0].tolist() == [255, 0, 0]  # stored BGR, returned RGB


def test_image_folder_with_two_sizes_is_rejected(tmp_path: Path) -> None:
    write_png(tmp_path / "train" / "a" / "1.png", np.zeros((4, 4), dtype=np.uint8))
    write_png(tmp_path / "train" / "b" / "1.png", np.zeros((5, 5), dtype=np.uint8))
    with pytest.raises(UserError, match="one size"):
        load_images("image_folder", tmp_path, "train")


def test_empty_image_folder_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(UserError, match="no images"):
        load_images("image_folder", tmp_path, "train")


def test_unknown_dataset_lists_valid_names(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="fashion_mnist.*image_folder"):
        load_images("imagenet", tmp_path, "train")


def test_digits_split_is_fixed_80_20(tmp_path: Path) -> None:
    train_x, train_y = load_images("digits", tmp_path, "train")
    test_x, _ = load_images("digits", tmp_path, "test")
    assert len(train_x) + len(test_x) == 1797 and len(test_x) == 359
    assert train_x.shape[1:] == (8, 8) and train_x.max() == 255 and set(train_y.tolist()) == set(range(10))
    np.testing.assert_array_equal(load_images("digits", tmp_path, "test")[0], test_x)


# ------------------------------------------------------------------------------------------ DataModule
def make_dm(root: Path, **kwargs) -> ImageDataModule:
    dm = ImageDataModule("mnist", str(root), **{"n_val": 30, **kwargs})
    dm.setup("fit")
    return dm


def test_tiny_subset_covers_every_class(mnist_root: Path) -> None:
    dm = make_dm(mnist_root, n_train=20)
    labels = torch.cat([y for _, y in dm.train_dataloader()])
    assert len(labels) == 20 and torch.bincount(labels, minlength=10).tolist() == [2] * 10
    assert dm.num_classes == 10 and dm.in_channels == 1 and dm.image_size == 8


def test_adjacent_pools_are_disjoint(mnist_root: Path) -> None:
    first = image_bytes(make_dm(mnist_root, pool=(0.0, 0.5)).train_dataloader())
    second = image_bytes(make_dm(mnist_root, pool=(0.5, 1.0)).train_dataloader())
    assert len(first) == len(second) == 100 and not first & second


def test_adjacent_pools_stay_disjoint_when_one_module_keeps_fewer_classes(mnist_root: Path) -> None:
    """The transfer source (classes 0-4, first half) and target (all classes, second half): the pool is cut
    from the unfiltered split, so no image is in both (cutting after the class filter mixed them)."""
    source = make_dm(mnist_root, pool=(0.0, 0.5), classes=[0, 1, 2, 3, 4])
    target = make_dm(mnist_root, pool=(0.5, 1.0))
    first, second = image_bytes(source.train_dataloader()), image_bytes(target.train_dataloader())
    assert first and second and not first & second
    assert not set(source.prepared.train_rows.tolist()) & set(target.prepared.train_rows.tolist())
    everything = make_dm(mnist_root, pool=(0.0, 1.0), classes=[0, 1, 2, 3, 4])
    assert set(source.prepared.train_rows.tolist()) < set(everything.prepared.train_rows.tolist())


def test_subset_depends_only_on_subset_seed(mnist_root: Path) -> None:
    a = image_bytes(make_dm(mnist_root, n_train=30, subset_seed=1).train_dataloader())
    b = image_bytes(make_dm(mnist_root, n_train=30, subset_seed=1).train_dataloader())
    c = image_bytes(make_dm(mnist_root, n_train=30, subset_seed=2).train_dataloader())
    assert a == b and a != c


def test_validation_is_fixed_and_disjoint_from_test(mnist_root: Path) -> None:
    dm1, dm2 = make_dm(mnist_root, subset_seed=1), make_dm(mnist_root, subset_seed=2)
    val = image_bytes(dm1.val_dataloader())
    assert val == image_bytes(dm2.val_dataloader()) and len(val) == 30
    test = image_bytes(dm1.test_dataloader())
    assert len(test) == 70 and not val & test


def test_classes_are_remapped_in_given_order(mnist_root: Path) -> None:
    dm = make_dm(mnist_root, classes=[5, 3], n_val=10, batch_size=64)
    x, y = next(iter(dm.train_dataloader()))  # the whole 40-image training set in one batch
    assert len(y) == 40 and set(y.tolist()) == {0, 1} and dm.num_classes == 2
    raw_x, raw_y = load_images("mnist", mnist_root, "train")
    mean, std = dm.prepared.collate.mean, dm.prepared.collate.std
    restored = ((x * std + mean) * 255).round().to(torch.uint8)[:, 0].numpy()
    fives = {im.tobytes() for im in raw_x[raw_y == 5]}
    assert [im.tobytes() in fives for im in restored] == (y == 0).tolist()  # 5 listed first -> label 0


def test_training_pool_is_normalised(mnist_root: Path) -> None:
    x = torch.cat([x for x, _ in make_dm(mnist_root).train_dataloader()])
    assert x.dtype == torch.float32 and x.shape == (200, 1, 8, 8)
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-2


def test_resize_happens_per_batch(mnist_root: Path) -> None:
    dm = make_dm(mnist_root, resize=16, batch_size=7)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (7, 1, 16, 16) and y.shape == (7,) and dm.image_size == 16
    assert dm.prepared.train_images.shape[2:] == (8, 8)  # stored at native size


def test_setup_twice_reuses_arrays(mnist_root: Path) -> None:
    dm = make_dm(mnist_root)
    images = dm.prepared.train_images
    dm.setup("test")
    assert dm.prepared.train_images is images


def test_bad_pool_and_too_many_train_images_are_user_errors(mnist_root: Path) -> None:
    with pytest.raises(UserError, match="dataset.pool"):
        make_dm(mnist_root, pool=(0.5, 0.5))
    with pytest.raises(UserError, match="dataset.n_train"):
        make_dm(mnist_root, n_train=101, pool=(0.0, 0.5))


# ------------------------------------------------------------------------------------------ sampler
def test_sampler_order_depends_on_seed_and_epoch_only() -> None:
    def order(seed: int, epoch: int) -> list[int]:
        sampler = EpochSeededSampler(50, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(3, 4) == order(3, 4)
    assert order(3, 4) != order(3, 5) and order(3, 4) != order(4, 4)
    assert sorted(order(3, 4)) == list(range(50)) and len(EpochSeededSampler(50, 3)) == 50


def test_train_loader_uses_epoch_seeded_sampler(mnist_root: Path) -> None:
    loader = make_dm(mnist_root, n_train=40, subset_seed=7).train_dataloader()
    assert isinstance(loader.sampler, EpochSeededSampler) and loader.sampler.seed == 7
    epoch0 = torch.cat([y for _, y in loader])
    loader.sampler.set_epoch(1)
    assert not torch.equal(epoch0, torch.cat([y for _, y in loader]))


# ------------------------------------------------------------------------------------------ real data
def test_real_fashion_mnist_files() -> None:
    data_dir = Path(os.environ.get("FIVEFOLD_DATA_DIR", REPO.parent / "shared" / "data"))
    root = data_dir / "images" / "fashion-mnist"
    if not root.is_dir():
        pytest.skip(f"no Fashion-MNIST files at {root}")
    train_x, train_y = load_images("fashion_mnist", root, "train")
    test_x, test_y = load_images("fashion_mnist", root, "test")
    assert train_x.shape == (60000, 28, 28) and test_x.shape == (10000, 28, 28)
    assert np.bincount(train_y).tolist() == [6000] * 10
    assert set(test_y.tolist()) == set(range(10))
