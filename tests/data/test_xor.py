"""XOR-5D generator and its stacked per-seed batches."""

from __future__ import annotations

import pytest
import torch

from common.errors import UserError
from data.xor import StackedBatchSampler, XorDataModule, make_xor


def test_geometry_and_labels_match_the_paper() -> None:
    x, y = make_xor(4001, torch.Generator().manual_seed(0), distractors=3, gap=0.05)
    assert x.shape == (4001, 5) and y.shape == (4001,)
    informative = x[:, :2]
    negative, positive = informative < 0, informative >= 0
    assert torch.all(informative[negative] >= -1.0)
    assert torch.all((informative[positive] >= 0.05) & (informative[positive] < 1.05))  # the gap is empty
    assert torch.equal(y, (negative[:, 0] == negative[:, 1]).float())  # 1 when x1, x2 share a sign
    distractors = x[:, 2:]
    assert abs(distractors.mean().item() - 1.0) < 0.05 and abs(distractors.std().item() - 1.0) < 0.05


def test_quadrants_are_balanced() -> None:
    x, _ = make_xor(1002, torch.Generator().manual_seed(1))
    quadrant = (x[:, 0] >= 0).long() * 2 + (x[:, 1] >= 0).long()
    counts = torch.bincount(quadrant, minlength=4)
    assert counts.min() >= 250 and counts.max() <= 251 and counts.sum() == 1002


def test_each_seed_gets_its_own_draw_and_the_same_seed_the_same_one() -> None:
    a, b = XorDataModule(seeds=[3, 4], n_train=20), XorDataModule(seeds=[3], n_train=20)
    a.setup(), b.setup()
    assert torch.equal(a.train.x[0], b.train.x[0])
    assert not torch.equal(a.train.x[0], a.train.x[1])


def test_batches_are_stacked_per_seed_and_cover_each_seed_once_per_epoch() -> None:
    dm = XorDataModule(seeds=[0, 1, 2], n_train=70, batch_size=32)
    dm.setup()
    loader = dm.train_dataloader()
    batches = list(loader)
    assert [tuple(b[0].shape) for b in batches] == [(3, 32, 5), (3, 32, 5), (3, 6, 5)]
    seen = torch.cat([b[0] for b in batches], dim=1)
    for s in range(3):
        assert torch.equal(seen[s].sort(0).values, dm.train.x[s].sort(0).values)


def test_shuffle_depends_only_on_seed_and_epoch() -> None:
    sampler = StackedBatchSampler(num_seeds=2, num_items=50, batch_size=10, shuffle=True, seed=5)
    sampler.set_epoch(3)
    first = torch.cat(list(sampler), 1)
    sampler.set_epoch(4)
    other = torch.cat(list(sampler), 1)
    sampler.set_epoch(3)
    assert torch.equal(first, torch.cat(list(sampler), 1))
    assert not torch.equal(first, other)


def test_bad_sizes_are_user_errors() -> None:
    with pytest.raises(UserError, match="n_train=0"):
        XorDataModule(n_train=0)


def test_a_fixed_data_seed_gives_every_run_the_same_draw_and_null_one_per_seed() -> None:
    fixed = XorDataModule(seeds=[3, 4, 5], n_train=20, n_val=30, data_seed=7)
    per_seed = XorDataModule(seeds=[3, 4, 5], n_train=20, n_val=30, data_seed=None)
    fixed.setup(), per_seed.setup()
    for s in (1, 2):
        assert torch.equal(fixed.train.x[s], fixed.train.x[0]) and torch.equal(fixed.val.y[s], fixed.val.y[0])
        assert not torch.equal(per_seed.train.x[s], per_seed.train.x[0])
    other = XorDataModule(seeds=[3], n_train=20, n_val=30, data_seed=8)
    other.setup()
    assert not torch.equal(other.train.x[0], fixed.train.x[0])  # the data seed chooses the draw
    # batch order is still shuffled per run seed
    order = next(iter(fixed._loader(fixed.train, 8, shuffle=True).sampler))
    assert not torch.equal(order[0], order[1])


def test_xor_experiments_default_to_the_reference_one_draw_per_job(make_config) -> None:
    for experiment in ("polarity_xor", "polarity_xor_sweep", "polarity_nonneg_xor"):
        cfg = make_config(f"experiment={experiment}", "seed=3")
        assert cfg.dataset.data_seed == 3
    assert make_config("dataset.data_seed=null").dataset.data_seed is None
