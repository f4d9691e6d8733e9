"""The recsys data sets name the reference's target items: filmtrust_raw numbers items otherwise than the NCF
split (filmtrust_tcd), so its target sets are mapped through the split's id mapping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate

from common.errors import UserError
from data.ratings import load_filmtrust_raw, ncf_split_item_ids


def write_raw(root: Path, lines: str) -> Path:
    folder = root / "recsys" / "tcd"
    folder.mkdir(parents=True)
    (folder / "filmtrust_ratings.txt").write_text(lines)
    return root


# raw ids (1-indexed): user 1 rates items 1, 2; users 2 and 3 rate 3 items each; user 4 rates item 6 once
RAW = "1 1 1\n1 2 2\n2 2 3\n2 4 4\n2 5 1\n3 3 2\n3 4 3\n3 5 4\n4 6 4\n"


def test_the_split_keeps_users_with_enough_ratings_and_numbers_their_items_in_raw_order() -> None:
    users = np.array([0, 0, 1, 1, 1, 2, 2, 2, 3])
    items = np.array([0, 1, 1, 3, 4, 2, 3, 4, 5])
    # users 1 and 2 have 3 ratings: their items 1, 2, 3, 4 (0-indexed raw) become split items 0..3
    assert ncf_split_item_ids(users, items, 3).tolist() == [1, 2, 3, 4]
    assert ncf_split_item_ids(users, items, 1).tolist() == [0, 1, 2, 3, 4, 5]


def test_named_target_sets_are_split_ids_mapped_to_the_raw_files_ids(tmp_path: Path) -> None:
    root = write_raw(tmp_path, RAW)
    data = load_filmtrust_raw(str(root), targets={"cold": [0, 3], "other": [2]}, split_min_user_ratings=3)
    assert data.info["targets"] == {"cold": [1, 4], "other": [3]}
    unmapped = load_filmtrust_raw(str(root), targets={"cold": [0, 3]})
    assert unmapped.info["targets"] == {"cold": [0, 3]}
    with pytest.raises(UserError, match=r"target set 'cold' names split item ids \[4\], but the split .* has 4 items"):
        load_filmtrust_raw(str(root), targets={"cold": [0, 4]}, split_min_user_ratings=3)


def target_ratings(data, item: int, user_ids: np.ndarray) -> set[tuple[int, float]]:
    """(user, rating) of every rating of `item`, train and test, with users renamed by `user_ids`."""
    users, items, ratings = (np.concatenate([a, b]) for a, b in zip(data.train, data.test))
    return {(int(user_ids[u]), float(r)) for u, r in zip(users[items == item], ratings[items == item])}


def test_filmtrust_raw_targets_are_the_items_of_the_reference_split(make_config, data_dir) -> None:
    """Each target of both sets is rated by the same users, with the same ratings, in the raw file as in the
    reference split (split users = the raw users with >= 15 rating lines, in raw-id order)."""
    if not (data_dir / "recsys" / "tcd" / "filmtrust_ratings.txt").is_file():
        pytest.skip("raw FilmTrust is absent from the data root")
    raw = instantiate(make_config("task=recsys", "dataset=filmtrust_raw").dataset)
    split = instantiate(make_config("task=recsys", "dataset=filmtrust_tcd").dataset)
    ids, counts = np.unique(np.concatenate([raw.train[0], raw.test[0]]), return_counts=True)
    split_users = ids[counts >= 15]
    kept = set(split_users.tolist())
    assert (raw.n_items, split.n_items, len(split_users)) == (2071, 2011, split.n_users)
    for name in ("unpopular", "random"):
        for raw_item, split_item in zip(raw.info["targets"][name], split.info["targets"][name], strict=True):
            in_raw = {(u, r) for u, r in target_ratings(raw, raw_item, np.arange(raw.n_users)) if u in kept}
            in_split = target_ratings(split, split_item, split_users)
            assert in_split and in_raw == in_split, (name, split_item, raw_item)
