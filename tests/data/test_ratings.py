"""Rating readers: NCF splits, MovieLens u.data, raw FilmTrust scaling, and errors naming file and line."""

from pathlib import Path

import numpy as np
import pytest

from common.errors import UserError
from data.ratings import load_filmtrust_raw, load_movielens_udata, load_ncf_split, read_negatives, read_rating_file


def write_split(root: Path, prefix: str = "toy") -> Path:
    folder = root / "recsys" / "tcd"
    folder.mkdir(parents=True)
    (folder / f"{prefix}.train.rating").write_text("0\t1\t5\t100\n0\t2\t3\t101\n1\t0\t4\t102\n2\t3\t2\t103\n2\t4\t1\t104\n")
    (folder / f"{prefix}.test.rating").write_text("0\t3\t4\n1\t2\t1\n2\t0\t5\n")
    (folder / f"{prefix}.test.negative").write_text("(0,3)\t0\t4\n(1,2)\t1\t3\n(2,0)\t1\t2\n")
    return folder


def test_ncf_split(tmp_path) -> None:
    write_split(tmp_path)
    data = load_ncf_split(str(tmp_path), "toy", 5.0, "toy", targets={"a": [1]})
    assert (data.n_users, data.n_items) == (3, 5)
    assert data.train[2].tolist() == [5, 3, 4, 2, 1]
    assert data.test_negatives.tolist() == [[0, 4], [1, 3], [1, 2]]
    matrix = data.train_matrix()
    assert matrix[0, 1] == 5 and matrix[2, 3] == 2 and matrix.sum() == 15
    assert data.info["targets"] == {"a": [1]}


@pytest.mark.parametrize(
    "content, message",
    [
        ("0\t1\n", "train.rating:1: expected 3 or 4 columns, found 2"),
        ("0\t1\t5\n0\tx\t3\n", "train.rating:2: non-numeric"),
        ("0\t-1\t5\n", "train.rating:1: item id -1"),
        ("", "train.rating: the file is empty"),
        ("0\t1\t9\n", "train.rating:1: rating 9"),
    ],
)
def test_bad_rating_files_name_file_and_line(tmp_path, content, message) -> None:
    write_split(tmp_path)
    (tmp_path / "recsys" / "tcd" / "toy.train.rating").write_text(content)
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        load_ncf_split(str(tmp_path), "toy", 5.0, "toy")


def test_negatives_out_of_range_and_mismatched(tmp_path) -> None:
    folder = write_split(tmp_path)
    (folder / "toy.test.negative").write_text("(0,3)\t0\t5\n")
    with pytest.raises(UserError, match="test.negative:1: item id out of range"):
        read_negatives(folder / "toy.test.negative", 5)
    (folder / "toy.test.negative").write_text("(0,3)\t0\t4\n(1,2)\t1\t3\n")
    with pytest.raises(UserError, match="no negatives for test rating"):
        load_ncf_split(str(tmp_path), "toy", 5.0, "toy")


def test_missing_file_names_path(tmp_path) -> None:
    with pytest.raises(UserError, match="missing data file .*toy.train.rating"):
        load_ncf_split(str(tmp_path), "toy", 5.0, "toy")


def test_movielens_udata_leave_one_out(tmp_path) -> None:
    folder = tmp_path / "recsys" / "ml-100k"
    folder.mkdir(parents=True)
    rows = [(1, 1, 5, 10), (1, 2, 3, 30), (1, 3, 4, 20), (2, 1, 2, 5), (2, 4, 1, 7)]
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    data = load_movielens_udata(str(tmp_path))
    assert (data.n_users, data.n_items) == (2, 4)
    assert sorted(zip(data.test[0].tolist(), data.test[1].tolist())) == [(0, 1), (1, 3)]  # latest per user, 0-indexed
    assert len(data.train[0]) == 3
    for u, negatives in zip(data.test[0], data.test_negatives):  # negatives never rated by the user
        rated = {i - 1 for uu, i, _, _ in rows if uu - 1 == u}
        assert not set(negatives.tolist()) & rated
    (folder / "u.data").write_text("1\t1\t5\n")
    with pytest.raises(UserError, match="u.data:1: expected 4 columns"):
        load_movielens_udata(str(tmp_path))


def test_filmtrust_raw_is_scaled_to_one_to_eight(tmp_path) -> None:
    folder = tmp_path / "recsys" / "tcd"
    folder.mkdir(parents=True)
    (folder / "filmtrust_ratings.txt").write_text("1 1 0.5\n1 2 4\n1 3 2.5\n2 1 3\n2 3 1\n2 4 1\n")
    data = load_filmtrust_raw(str(tmp_path))
    assert data.max_rating == 8.0
    assert sorted(np.concatenate([data.train[2], data.test[2]]).tolist()) == [1, 2, 2, 5, 6, 8]


def test_real_tcd_splits(data_dir) -> None:
    ml = load_ncf_split(str(data_dir), "ml-100k", 5.0, "ml100k")
    assert (ml.n_users, ml.n_items, len(ml.train[0])) == (943, 1682, 99057)
    assert ml.test_negatives.shape == (943, 99)
    ft = load_ncf_split(str(data_dir), "filmtrust", 8.0, "filmtrust")
    assert (ft.n_users, ft.n_items) == (796, 2011) and set(np.unique(ft.train[2])) == set(range(1, 9))
    users, _, _ = read_rating_file(data_dir / "recsys" / "tcd" / "ml-100k.test.rating")
    assert sorted(users.tolist()) == list(range(943))
