"""The CMU-MOSI reader: videos as one-speaker dialogues in utterance order, a validation split by video,
and one line naming the file and row for every malformed input."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from common.errors import UserError
from data.mosi import read_mosi

DIMS = {"text": 3, "audio": 2, "video": 4}


def write_csv(path: Path, rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        csv.writer(handle, quoting=csv.QUOTE_ALL).writerows(rows)


def make_mosi(root: Path, videos: dict[str, tuple[str, list[int]]]) -> dict[str, np.ndarray]:
    """A MOSI folder in the release's layout. videos: id -> (split, labels by position n = 1..).
    transcripts.csv lists utterances in a shuffled order and each split file in another, as the release does;
    feature value = a code of (video, n) so a test can tell which row landed where."""
    utterances = [(v, n + 1, label) for v, (_, labels) in videos.items() for n, label in enumerate(labels)]
    order = np.random.default_rng(0).permutation(len(utterances))
    transcripts = [utterances[i] for i in order]
    write_csv(root / "transcripts.csv", [[f"{v}_{n}", f"words {v} {n}", len(videos), label] for v, n, label in transcripts])
    codes = {}
    for split in ("train", "test"):
        rows = [i for i, (v, _, _) in enumerate(transcripts) if videos[v][0] == split][::-1]
        write_csv(root / f"text_{split}.csv", [[i, 0.5, 0.5] for i in rows])
        for modality, dim in DIMS.items():
            feats = []
            for i in rows:
                v, n, label = transcripts[i]
                code = list(videos).index(v) * 100 + n
                codes[(modality, v, n)] = code
                feats.append([code + d / 10 for d in range(dim)] + [label])
            write_csv(root / "features" / f"{modality}_{split}0.csv", feats)
    return codes


VIDEOS = {
    "vidA": ("train", [1, 0, 1]),
    "vidB": ("train", [0, 0]),
    "vidC": ("train", [1, 1, 1, 0]),
    "vidD": ("train", [0]),
    "vidE": ("test", [1, 0]),
    "vidF": ("test", [0, 1, 1]),
}


@pytest.fixture
def mosi(tmp_path: Path) -> Path:
    make_mosi(tmp_path / "mosi", VIDEOS)
    return tmp_path / "mosi"


def test_each_video_is_one_dialogue_in_utterance_order(mosi: Path) -> None:
    corpus = read_mosi(mosi, valid_videos=1, split_seed=0)
    dialogues = {d.id: d for split in corpus.splits.values() for d in split}
    assert set(dialogues) == set(VIDEOS)
    for video, (_, labels) in VIDEOS.items():
        d = dialogues[video]
        assert d.labels.tolist() == labels
        assert d.utterance_ids == [f"{video}_{n}" for n in range(1, len(labels) + 1)]
        assert d.speakers.tolist() == [0] * len(labels)
        index = list(VIDEOS).index(video)
        for modality, dim in DIMS.items():
            assert d.features[modality].shape == (len(labels), dim)
            np.testing.assert_allclose(d.features[modality][:, 0], [index * 100 + n for n in range(1, len(labels) + 1)])
    assert corpus.label_names == ["negative", "positive"] and corpus.num_speakers == 1


def test_validation_videos_are_carved_from_train_by_video_with_a_seed(mosi: Path) -> None:
    corpus = read_mosi(mosi, valid_videos=2, split_seed=3)
    ids = {split: {d.id for d in dialogues} for split, dialogues in corpus.splits.items()}
    assert ids["test"] == {"vidE", "vidF"}
    assert len(ids["valid"]) == 2 and ids["valid"] | ids["train"] == {"vidA", "vidB", "vidC", "vidD"}
    assert not ids["valid"] & ids["train"]
    again = read_mosi(mosi, valid_videos=2, split_seed=3)
    assert {d.id for d in again.splits["valid"]} == ids["valid"]
    draws = {frozenset(d.id for d in read_mosi(mosi, valid_videos=2, split_seed=s).splits["valid"]) for s in range(8)}
    assert len(draws) > 1  # the seed chooses the videos


def test_a_subset_of_modalities(mosi: Path) -> None:
    corpus = read_mosi(mosi, modalities=["audio"], valid_videos=1)
    assert corpus.modality_dims == {"audio": 2}


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("short_row", r"audio_train0.csv row 2: 2 columns, but row 1 has 3"),
        ("label", r"transcripts.csv row 1: label '2' is not 0 or 1"),
        ("feature_label", r"video_test0.csv row 1: label .* differs from transcripts.csv's"),
        ("index", r"text_train.csv row 1: utterance index '99' is not a row of transcripts.csv"),
        ("missing_rows", r"text_test0.csv: 4 rows, but text_test.csv lists 5 utterances"),
        ("not_a_number", r"audio_train0.csv row 1: a feature is not a number"),
        ("missing_file", r"missing data file .*video_train0.csv"),
    ],
)
def test_bad_input_names_the_file_and_row(mosi: Path, damage: str, message: str) -> None:
    def edit(name: str, change) -> None:
        path = mosi / name
        rows = list(csv.reader(open(path)))
        change(rows)
        write_csv(path, rows)

    if damage == "short_row":
        edit("features/audio_train0.csv", lambda rows: rows[1].pop(0))
    elif damage == "label":
        edit("transcripts.csv", lambda rows: rows[0].__setitem__(3, "2"))
    elif damage == "feature_label":
        edit("features/video_test0.csv", lambda rows: rows[0].__setitem__(-1, str(1 - int(rows[0][-1]))))
    elif damage == "index":
        edit("text_train.csv", lambda rows: rows[0].__setitem__(0, "99"))
    elif damage == "missing_rows":
        edit("features/text_test0.csv", lambda rows: rows.pop())
    elif damage == "not_a_number":
        edit("features/audio_train0.csv", lambda rows: rows[0].__setitem__(0, "abc"))
    elif damage == "missing_file":
        (mosi / "features" / "video_train0.csv").unlink()
    with pytest.raises(UserError, match=message):
        read_mosi(mosi, valid_videos=1)


def test_an_unknown_modality_or_too_many_validation_videos_is_refused(mosi: Path) -> None:
    with pytest.raises(UserError, match=r"dataset.corpus.modalities=\['visual'\]"):
        read_mosi(mosi, modalities=["visual"])
    with pytest.raises(UserError, match=r"dataset.corpus.valid_videos=4 must be in \[1, 3\]"):
        read_mosi(mosi, valid_videos=4)


def test_the_real_release(data_dir: Path) -> None:
    root = data_dir / "erc" / "mosi"
    if not root.is_dir():
        pytest.skip(f"no CMU-MOSI release at {root}")
    corpus = read_mosi(root, valid_videos=6, split_seed=0)
    videos = {split: len(d) for split, d in corpus.splits.items()}
    utterances = {split: sum(len(x.labels) for x in d) for split, d in corpus.splits.items()}
    assert videos == {"train": 56, "valid": 6, "test": 31}
    assert utterances["train"] + utterances["valid"] == 1447 and utterances["test"] == 752
    assert corpus.modality_dims == {"text": 100, "audio": 73, "video": 100}
    test_labels = np.concatenate([d.labels for d in corpus.splits["test"]])
    assert (test_labels == 0).sum() == 285 and (test_labels == 1).sum() == 467  # the release's counts
