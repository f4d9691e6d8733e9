"""CMU-MOSI with per-utterance text, audio and video features, as conversations of one speaker.

Layout (the ACL 2017 contextual-utterance release; Poria et al.'s speaker-independent split):
- `transcripts.csv`: one row per utterance, `"<video>_<n>","<transcript>","<count>","<label>"`, where n is
  the utterance's position in its video and the label is binary sentiment (0 negative, 1 positive);
- `text_{train,test}.csv`: column 0 of row k is the index (0-based row) into `transcripts.csv` of the
  k-th utterance of that split; the rest of the row is the text features again (ignored here);
- `features/{text,audio,video}_{train,test}0.csv`: row k holds that utterance's features, then its label.

Each video becomes one `Dialogue` (utterances ordered by n, one speaker). The release has train and test
only; a validation split of `valid_videos` training videos is carved out by video with a seeded draw, so
no video has utterances on both sides of a split.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.errors import UserError
from common.files import require_file
from data.conversations import Corpus, Dialogue, finish_corpus

MODALITIES = ("text", "audio", "video")
LABEL_NAMES = ("negative", "positive")
HOW_TO_GET = (
    "the CMU-MOSI feature release is the data/ folder of declare-lab/contextual-utterance-level-multimodal-sentiment-analysis"
)


def read_rows(path: Path) -> list[list[str]]:
    path = require_file(path, HOW_TO_GET)
    try:
        with open(path, newline="") as handle:
            return [row for row in csv.reader(handle) if row]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path}: not a readable CSV file ({exc.__class__.__name__}: {exc})") from None


def read_transcripts(path: Path) -> list[tuple[str, int, int]]:
    """(video id, position n, label) per row of transcripts.csv."""
    out = []
    for number, row in enumerate(read_rows(path), start=1):
        video, _, position = row[0].rpartition("_")
        if len(row) < 4 or not video or not position.isdigit():
            raise UserError(f"{path} row {number}: expected '<video>_<n>', transcript, count, label; got {row[:4]}")
        out.append((video, int(position), parse_label(row[3], path, number)))
    return out


def parse_label(text: str, path: Path, number: int) -> int:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value not in (0.0, 1.0):
        raise UserError(f"{path} row {number}: label {text!r} is not 0 or 1")
    return int(value)


def read_split(root: Path, split: str, modalities: Sequence[str], transcripts: list[tuple[str, int, int]]) -> list[Dialogue]:
    """The utterances of one released split, grouped into one dialogue per video."""
    order_path = root / f"text_{split}.csv"
    indices = []
    for number, row in enumerate(read_rows(order_path), start=1):
        try:
            index = int(float(row[0]))
        except ValueError:
            index = -1
        if not 0 <= index < len(transcripts):
            raise UserError(f"{order_path} row {number}: utterance index {row[0]!r} is not a row of transcripts.csv")
        indices.append(index)
    features = {}
    for modality in modalities:
        path = root / "features" / f"{modality}_{split}0.csv"
        rows = read_rows(path)
        if len(rows) != len(indices):
            raise UserError(f"{path}: {len(rows)} rows, but {order_path.name} lists {len(indices)} utterances")
        width = len(rows[0])
        matrix = np.empty((len(rows), width - 1), dtype=np.float32)
        for number, row in enumerate(rows, start=1):
            if len(row) != width:
                raise UserError(f"{path} row {number}: {len(row)} columns, but row 1 has {width}")
            try:
                matrix[number - 1] = [float(x) for x in row[:-1]]
            except ValueError:
                raise UserError(f"{path} row {number}: a feature is not a number") from None
            label = parse_label(row[-1], path, number)
            if label != transcripts[indices[number - 1]][2]:
                raise UserError(
                    f"{path} row {number}: label {label} differs from transcripts.csv's {transcripts[indices[number - 1]][2]} "
                    f"for utterance {transcripts[indices[number - 1]][0]}_{transcripts[indices[number - 1]][1]}"
                )
        features[modality] = matrix
    videos: dict[str, list[int]] = {}
    for k, index in enumerate(indices):
        videos.setdefault(transcripts[index][0], []).append(k)
    dialogues = []
    for video, rows_of_video in videos.items():
        rows_of_video.sort(key=lambda k: transcripts[indices[k]][1])
        labels = np.array([transcripts[indices[k]][2] for k in rows_of_video], dtype=np.int64)
        dialogues.append(
            Dialogue(
                video,
                np.zeros(len(rows_of_video), dtype=np.int64),
                labels,
                {m: features[m][rows_of_video] for m in modalities},
                utterance_ids=[f"{video}_{transcripts[indices[k]][1]}" for k in rows_of_video],
            )
        )
    return dialogues


def read_mosi(path: str | Path, modalities: Sequence[str] = MODALITIES, valid_videos: int = 6, split_seed: int = 0) -> Corpus:
    """The MOSI folder as a Corpus: train minus `valid_videos` held-out videos / those videos / test."""
    root = Path(path)
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown or not modalities:
        raise UserError(f"dataset.corpus.modalities={list(modalities)}: choose one or more of {list(MODALITIES)}")
    transcripts = read_transcripts(root / "transcripts.csv")
    train = read_split(root, "train", modalities, transcripts)
    test = read_split(root, "test", modalities, transcripts)
    if not 0 < valid_videos < len(train):
        raise UserError(
            f"dataset.corpus.valid_videos={valid_videos} must be in [1, {len(train) - 1}] ({len(train)} train videos)"
        )
    shared = {d.id for d in train} & {d.id for d in test}
    if shared:
        raise UserError(f"{root}: videos {sorted(shared)[:3]} have utterances in both the train and the test split")
    held_out = set(random.Random(split_seed).sample(range(len(train)), valid_videos))
    splits = {
        "train": [d for i, d in enumerate(train) if i not in held_out],
        "valid": [d for i, d in enumerate(train) if i in held_out],
        "test": test,
    }
    return finish_corpus(splits, list(LABEL_NAMES), 1, str(root))
