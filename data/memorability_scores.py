"""Ground-truth memorability scores and captions: Memento10k (MediaEval 2021) and VideoMem (MediaEval 2019).

Layouts, as released to MediaEval participants (and mirrored by MeMAD-project/media-memorability):
- Memento10k scores CSV: `video_id, video_url, annotations_short_term, scores_raw_short_term,
  scores_normalized_short_term, decay_alpha` (train: `me2021_memento10k_train_scores.csv`; the dev
  file of the same task has the same columns);
- Memento10k captions CSV: `video_id, description_0 ... description_4` (quoted, may span lines);
- VideoMem ground truth CSV: `video, short-term_memorability, nb_short-term_annotations,
  long-term_memorability, nb_long-term_annotations` (UTF-8 with BOM);
- VideoMem captions: `<video>.webm<TAB>words-joined-by-hyphens`, one per line.
Videos are not redistributable: Memento10k from http://memento.csail.mit.edu (request form), VideoMem
from https://www.interdigital.com/data_sets/video-memorability-dataset.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import UserError
from common.files import require_file

MEMENTO_HOW = (
    "Memento10k MediaEval 2021 files: https://github.com/MeMAD-project/media-memorability "
    "(data/memento10k) or http://memento.csail.mit.edu; set dataset.scores / dataset.captions"
)
VIDEOMEM_HOW = (
    "VideoMem MediaEval 2019 dev set: https://www.interdigital.com/data_sets/video-memorability-dataset "
    "(ground-truth CSV and captions TXT); set dataset.scores / dataset.captions"
)
MEMENTO_SCORE_COLUMNS = {"short_term": "scores_normalized_short_term", "short_term_raw": "scores_raw_short_term"}
VIDEOMEM_SCORE_COLUMNS = {"short_term": "short-term_memorability", "long_term": "long-term_memorability"}


@dataclass(frozen=True)
class ScoredCaptions:
    """Videos with a score and their captions, aligned by position."""

    video_ids: list[str]
    scores: np.ndarray  # (N,)
    captions: list[list[str]]  # N lists of non-empty captions


def _rows(path: Path, how: str, required: set[str]) -> list[dict[str, str]]:
    path = require_file(path, how)
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = set(reader.fieldnames or [])
        if not required <= header:
            raise UserError(f"{path}: missing columns {sorted(required - header)} (has {sorted(header)}); {how}")
        rows = list(reader)
    if not rows:
        raise UserError(f"{path}: no rows; {how}")
    return rows


def _float(value: str, path: Path, line: int, column: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UserError(f"{path}: line {line}: {column}={value!r} is not a number") from None


def read_memento10k_scores(path: str | Path, target: str = "short_term") -> dict[str, float]:
    """video_id -> score (`short_term`: the normalised short-term score, MediaEval's target)."""
    if target not in MEMENTO_SCORE_COLUMNS:
        raise UserError(f"dataset.target={target!r} must be one of {sorted(MEMENTO_SCORE_COLUMNS)} for Memento10k")
    column, path = MEMENTO_SCORE_COLUMNS[target], Path(path)
    rows = _rows(path, MEMENTO_HOW, {"video_id", column})
    return {row["video_id"].strip(): _float(row[column], path, i + 2, column) for i, row in enumerate(rows)}


def read_memento10k_captions(path: str | Path) -> dict[str, list[str]]:
    """video_id -> its non-empty captions (five per video in the release)."""
    path = Path(path)
    rows = _rows(path, MEMENTO_HOW, {"video_id", "description_0"})
    columns = sorted((c for c in rows[0] if c and c.startswith("description_")), key=lambda c: int(c.split("_")[1]))
    return {row["video_id"].strip(): [" ".join(row[c].split()) for c in columns if row.get(c) and row[c].strip()] for row in rows}


def read_videomem_scores(path: str | Path, target: str = "short_term") -> dict[str, float]:
    """video name (e.g. `video10.webm`) -> short- or long-term memorability."""
    if target not in VIDEOMEM_SCORE_COLUMNS:
        raise UserError(f"dataset.target={target!r} must be one of {sorted(VIDEOMEM_SCORE_COLUMNS)} for VideoMem")
    column, path = VIDEOMEM_SCORE_COLUMNS[target], Path(path)
    rows = _rows(path, VIDEOMEM_HOW, {"video", column})
    return {row["video"].strip(): _float(row[column], path, i + 2, column) for i, row in enumerate(rows)}


def read_videomem_captions(path: str | Path) -> dict[str, list[str]]:
    """video name -> [caption]; the release joins a caption's words with hyphens."""
    path = require_file(path, VIDEOMEM_HOW)
    captions: dict[str, list[str]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        video, sep, words = line.partition("\t")
        if not sep:
            raise UserError(f"{path}: line {number}: expected '<video><TAB><caption>'; {VIDEOMEM_HOW}")
        captions.setdefault(video.strip(), []).append(words.strip().replace("-", " "))
    if not captions:
        raise UserError(f"{path}: no captions; {VIDEOMEM_HOW}")
    return captions


READERS = {  # dataset.format -> (scores reader, captions reader)
    "memento10k": (read_memento10k_scores, read_memento10k_captions),
    "videomem": (read_videomem_scores, read_videomem_captions),
}


def load_scored_captions(
    fmt: str, scores: str | Path, captions: str | Path, target: str = "short_term", limit: int | None = None
) -> ScoredCaptions:
    """Videos present in both files (score-file order), with at least one caption; `limit` keeps the first ones."""
    if fmt not in READERS:
        raise UserError(f"dataset.format={fmt!r} must be one of {sorted(READERS)}")
    read_scores, read_captions = READERS[fmt]
    score_map, caption_map = read_scores(scores, target), read_captions(captions)
    ids = [v for v in score_map if caption_map.get(v)]
    if not ids:
        raise UserError(f"{scores} and {captions} share no video ids: are they from the same data set and split?")
    ids = ids[:limit] if limit is not None else ids
    return ScoredCaptions(ids, np.array([score_map[v] for v in ids], dtype=np.float64), [caption_map[v] for v in ids])
