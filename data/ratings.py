"""Explicit-rating data for the recsys task (TCD, Co-Attack, GCoAttack): MovieLens `u.data`, the NCF-style
splits of the TCD reference code (`X.train.rating`, `X.test.rating`, `X.test.negative`) and raw FilmTrust.

Everything is read into a :class:`RatingData` of 0-indexed integer ids and ratings in rating units (1..R).
Models train on ratings divided by ``max_rating`` (TCD Sec. 4: MF on normalised ratings). FilmTrust's
0.5..4 half-star ratings are multiplied by ``scale`` = 2 to the 1..8 grid, as the reference does. A bad
line (wrong column count, a non-number, a negative id, an empty file) stops with an error naming the file
and the line number.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.errors import UserError
from common.files import require_file

HOW_TO_GET_TCD = (
    "the NCF-style splits are in greensun0830/TCD Data/ (https://github.com/greensun0830/TCD); "
    "put them under <data root>/recsys/tcd/"
)
HOW_TO_GET_ML100K = "download https://files.grouplens.org/datasets/movielens/ml-100k.zip and unzip it under <data root>/recsys/"


@dataclass
class RatingData:
    """Ratings as parallel arrays (0-indexed ids, ratings in rating units) plus the evaluation splits."""

    name: str
    n_users: int
    n_items: int
    max_rating: float
    train: tuple[np.ndarray, np.ndarray, np.ndarray]  # users, items, ratings
    test: tuple[np.ndarray, np.ndarray, np.ndarray]  # held-out ratings (one per user in NCF splits)
    test_negatives: np.ndarray | None = None  # [n_test, 99] sampled unrated items per test rating
    info: dict = field(default_factory=dict)

    def train_matrix(self) -> np.ndarray:
        """Dense [n_users, n_items] matrix in rating units, 0 = unrated (ML-100K is 1.6 M cells)."""
        matrix = np.zeros((self.n_users, self.n_items), dtype=np.float32)
        users, items, ratings = self.train
        matrix[users, items] = ratings
        return matrix


def _parse_rows(path: Path, columns: tuple[int, ...], sep: str | None) -> np.ndarray:
    """Numeric rows of a whitespace/tab separated file; `columns` lists the allowed column counts."""
    rows = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            parts = line.strip().split(sep)
            if len(parts) not in columns:
                raise UserError(
                    f"{path}:{number}: expected {' or '.join(map(str, columns))} columns, found {len(parts)}: {line.strip()[:60]!r}"
                )
            try:
                rows.append([float(x) for x in parts[:3]])
            except ValueError:
                raise UserError(f"{path}:{number}: non-numeric value in {line.strip()[:60]!r}") from None
    if not rows:
        raise UserError(f"{path}: the file is empty; expected lines 'user item rating [timestamp]'")
    array = np.asarray(rows, dtype=np.float64)
    return array


def _check_ids(path: Path, ids: np.ndarray, what: str, upper: int | None = None) -> None:
    bad = np.flatnonzero((ids < 0) | (ids != np.round(ids)) | ((ids >= upper) if upper is not None else False))
    if bad.size:
        raise UserError(
            f"{path}:{bad[0] + 1}: {what} id {ids[bad[0]]:g} is not an integer in [0, {upper if upper is not None else 'inf'})"
        )


def read_rating_file(
    path: str | Path, one_indexed: bool = False, scale: float = 1.0, sep: str | None = None, max_rating: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users, items, ratings) of a `user item rating [timestamp]` file; ids become 0-indexed."""
    path = require_file(path, HOW_TO_GET_TCD)
    rows = _parse_rows(path, (3, 4), sep)
    users, items, ratings = rows[:, 0] - one_indexed, rows[:, 1] - one_indexed, rows[:, 2] * scale
    _check_ids(path, users, "user")
    _check_ids(path, items, "item")
    if max_rating is not None:
        bad = np.flatnonzero((ratings <= 0) | (ratings > max_rating + 1e-6))
        if bad.size:
            raise UserError(f"{path}:{bad[0] + 1}: rating {rows[bad[0], 2]:g} (x{scale:g}) is outside (0, {max_rating:g}]")
    return users.astype(np.int64), items.astype(np.int64), ratings.astype(np.float32)


def read_negatives(path: str | Path, n_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NCF `X.test.negative`: "(u,i)" then the sampled negative item ids; returns users, items, [n, k] negatives."""
    path = require_file(path, HOW_TO_GET_TCD)
    users, items, negatives = [], [], []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            head, *rest = line.strip().split("\t")
            try:
                u, i = head.strip("()").split(",")
                users.append(int(u))
                items.append(int(i))
                negatives.append([int(x) for x in rest])
            except ValueError:
                raise UserError(f"{path}:{number}: expected '(user,item)' then item ids separated by tabs") from None
            if len(negatives[-1]) != len(negatives[0]):
                raise UserError(f"{path}:{number}: {len(negatives[-1])} negatives, the first line has {len(negatives[0])}")
            if max(negatives[-1], default=0) >= n_items or items[-1] >= n_items:
                raise UserError(f"{path}:{number}: item id out of range [0, {n_items})")
    if not users:
        raise UserError(f"{path}: the file is empty")
    return np.asarray(users), np.asarray(items), np.asarray(negatives, dtype=np.int64)


def load_ncf_split(
    data_dir: str,
    prefix: str,
    max_rating: float,
    name: str,
    scale: float = 1.0,
    folder: str = "recsys/tcd",
    targets: dict[str, list[int]] | None = None,
) -> RatingData:
    """The TCD reference split: `<prefix>.train.rating`, `.test.rating` (one per user), `.test.negative` (99 each).

    FilmTrust's files there are already on the 1..8 grid (`scale` 1); `scale` multiplies raw ratings.
    """
    root = Path(data_dir) / folder
    train = read_rating_file(root / f"{prefix}.train.rating", scale=scale, max_rating=max_rating)
    test = read_rating_file(root / f"{prefix}.test.rating", scale=scale, max_rating=max_rating)
    n_users = int(max(train[0].max(), test[0].max())) + 1
    n_items = int(max(train[1].max(), test[1].max())) + 1
    neg_path = root / f"{prefix}.test.negative"
    t_users, t_items, negatives = read_negatives(neg_path, n_items)
    order = {(int(u), int(i)): k for k, (u, i) in enumerate(zip(t_users, t_items))}
    missing = [(int(u), int(i)) for u, i in zip(test[0], test[1]) if (int(u), int(i)) not in order]
    if missing:
        raise UserError(
            f"{neg_path}: no negatives for test rating (user, item) = {missing[0]}; the files are from different splits"
        )
    negatives = negatives[[order[(int(u), int(i))] for u, i in zip(test[0], test[1])]]
    return RatingData(name, n_users, n_items, float(max_rating), train, test, negatives, {"targets": dict(targets or {})})


def leave_one_out(
    name: str,
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    order: np.ndarray,
    max_rating: float,
    n_negatives: int = 99,
    seed: int = 0,
) -> RatingData:
    """NCF protocol on raw ratings: each user's latest rating (largest `order`) is the test rating, and
    `n_negatives` items the user never rated are sampled for leave-one-out HR (seeded, reproducible)."""
    n_users, n_items = int(users.max()) + 1, int(items.max()) + 1
    key = np.lexsort((order, users))  # by user, then time
    last = np.r_[users[key][1:] != users[key][:-1], True]
    test_idx, train_idx = key[last], key[~last]
    rng = np.random.default_rng(seed)
    rated = np.zeros((n_users, n_items), dtype=bool)
    rated[users, items] = True
    negatives = np.empty((len(test_idx), n_negatives), dtype=np.int64)
    for row, u in enumerate(users[test_idx]):
        pool = np.flatnonzero(~rated[u])
        if pool.size == 0:  # a user who rated everything (tiny data only)
            pool = np.flatnonzero(np.arange(n_items) != items[test_idx[row]])
        negatives[row] = rng.choice(pool, size=n_negatives, replace=len(pool) < n_negatives)
    pick = lambda idx: (users[idx], items[idx], ratings[idx])  # noqa: E731
    return RatingData(name, n_users, n_items, float(max_rating), pick(train_idx), pick(test_idx), negatives)


def load_movielens_udata(
    data_dir: str,
    name: str = "ml100k",
    folder: str = "recsys/ml-100k",
    max_rating: float = 5.0,
    seed: int = 0,
    targets: dict[str, list[int]] | None = None,
) -> RatingData:
    """MovieLens-100K raw `u.data` (user \\t item \\t rating \\t timestamp, 1-indexed) with a leave-one-out split."""
    path = require_file(Path(data_dir) / folder / "u.data", HOW_TO_GET_ML100K)
    try:
        rows = np.loadtxt(path, dtype=np.int64, ndmin=2) if path.stat().st_size else np.empty((0, 0))
    except ValueError:
        rows = np.empty((0, 0))
    if rows.shape[0] == 0 or rows.shape[1] != 4:
        # Re-read line by line for an error that names the line (np.loadtxt's message does not).
        rows = _parse_rows(path, (4,), None)
        raise UserError(f"{path}: expected integer lines 'user item rating timestamp'")
    users, items = rows[:, 0] - 1, rows[:, 1] - 1
    _check_ids(path, users, "user")
    _check_ids(path, items, "item")
    data = leave_one_out(name, users, items, rows[:, 2].astype(np.float32), rows[:, 3], max_rating, seed=seed)
    data.info["targets"] = dict(targets or {})
    return data


def ncf_split_item_ids(users: np.ndarray, items: np.ndarray, min_user_ratings: int) -> np.ndarray:
    """The raw item id of each item id of the TCD reference's NCF split of the same ratings: the split keeps
    the users with at least `min_user_ratings` rating lines and numbers the items they rated in raw-id order.
    (For FilmTrust, 15 reproduces all 30,880 ratings of `filmtrust.{train,test}.rating`.)"""
    ids, counts = np.unique(users, return_counts=True)
    return np.unique(items[np.isin(users, ids[counts >= min_user_ratings])])


def split_targets_to_raw(
    path: Path, targets: dict[str, list[int]], users: np.ndarray, items: np.ndarray, min_user_ratings: int
) -> dict[str, list[int]]:
    """Target sets given in the NCF split's item ids, as this file's (0-indexed) item ids."""
    raw = ncf_split_item_ids(users, items, min_user_ratings)
    out = {}
    for name, ids in targets.items():
        if bad := [int(i) for i in ids if not 0 <= int(i) < len(raw)]:
            raise UserError(
                f"{path}: target set {name!r} names split item ids {bad}, but the split of this file "
                f"(users with >= {min_user_ratings} ratings) has {len(raw)} items"
            )
        out[name] = [int(raw[int(i)]) for i in ids]
    return out


def load_filmtrust_raw(
    data_dir: str,
    name: str = "filmtrust",
    folder: str = "recsys/tcd",
    file: str = "filmtrust_ratings.txt",
    scale: float = 2.0,
    seed: int = 0,
    targets: dict[str, list[int]] | None = None,
    split_min_user_ratings: int | None = None,
) -> RatingData:
    """Raw FilmTrust (`user item rating`, 1-indexed, 0.5..4 half stars) scaled x2 to 1..8, leave-one-out split.

    The raw file numbers items otherwise than the reference split (2,071 items against 2,011): with
    `split_min_user_ratings`, the named `targets` sets are split item ids (the reference's target sets) and
    are mapped to the same items here, so `task.targets=unpopular` names the same films on both data sets.
    A list of ids given as `task.targets` is always in this file's ids."""
    path = Path(data_dir) / folder / file
    users, items, ratings = read_rating_file(path, one_indexed=True, scale=scale, max_rating=4.0 * scale)
    data = leave_one_out(name, users, items, ratings, np.arange(len(users)), 4.0 * scale, seed=seed)
    targets = dict(targets or {})
    if split_min_user_ratings is not None:
        targets = split_targets_to_raw(path, targets, users, items, split_min_user_ratings)
    data.info["targets"] = targets
    return data
