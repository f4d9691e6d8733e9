"""Memento10k and VideoMem readers: the real files, and small files in the same layouts the tests write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.errors import UserError
from data.memorability_scores import (
    load_scored_captions,
    read_memento10k_captions,
    read_memento10k_scores,
    read_videomem_captions,
    read_videomem_scores,
)

MEMO = Path("video") / "memorability"


def test_real_memento10k_train_files(data_dir: Path) -> None:
    scores = read_memento10k_scores(data_dir / MEMO / "me2021_memento10k_train_scores.csv")
    captions = read_memento10k_captions(data_dir / MEMO / "me2021_memento10k_train_text_descriptions.csv")
    assert len(scores) == 7000 and set(scores) == set(captions)
    assert scores["17"] == pytest.approx(0.9891514478670866)
    assert all(len(c) == 5 for c in captions.values())
    assert captions["17"][2] == "A girl with brown hair and lip rings looks away from the camera."
    values = np.array(list(scores.values()))
    assert 0.3 < values.min() and values.max() <= 1.0


def test_real_videomem_dev_files(data_dir: Path) -> None:
    short = read_videomem_scores(data_dir / MEMO / "videomem2019_ground-truth_dev-set.csv")
    long = read_videomem_scores(data_dir / MEMO / "videomem2019_ground-truth_dev-set.csv", target="long_term")
    captions = read_videomem_captions(data_dir / MEMO / "videomem2019_dev-set_video-captions.txt")
    assert len(short) == 8000 and short["video10.webm"] == 0.95 and long["video10000.webm"] == 1.0  # BOM stripped
    assert captions["video10.webm"] == ["couple relaxing on picnic crane shot"]
    data = load_scored_captions(
        "videomem",
        data_dir / MEMO / "videomem2019_ground-truth_dev-set.csv",
        data_dir / MEMO / "videomem2019_dev-set_video-captions.txt",
    )
    assert len(data.video_ids) == len(data.scores) == len(data.captions) >= 7990


def test_official_layout_with_multiline_quoted_captions(tmp_path: Path) -> None:
    scores = tmp_path / "dev_scores.csv"
    scores.write_text(
        "video_id,video_url,annotations_short_term,scores_raw_short_term,scores_normalized_short_term,decay_alpha\n"
        "7,u,90,0.9,0.91,0.0\n8,u,80,0.7,0.72,0.0\n9,u,80,0.5,0.52,0.0\n"
    )
    captions = tmp_path / "dev_captions.csv"
    captions.write_text(
        "video_id,description_0,description_1,description_2,description_3,description_4\n"
        '7,"A dog\nruns.",A cat.,,B,C\n8,one,two,three,four,five\n'
    )
    data = load_scored_captions("memento10k", scores, captions)
    assert data.video_ids == ["7", "8"]  # video 9 has no captions
    assert data.captions[0] == ["A dog runs.", "A cat.", "B", "C"]
    assert data.scores.tolist() == [0.91, 0.72]
    assert load_scored_captions("memento10k", scores, captions, target="short_term_raw").scores.tolist() == [0.9, 0.7]


def test_bad_files_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="missing data file .*nope.csv.*memento"):
        read_memento10k_scores(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("video_id,other\n1,2\n")
    with pytest.raises(UserError, match="missing columns.*scores_normalized_short_term"):
        read_memento10k_scores(bad)
    bad.write_text("video,short-term_memorability\nv.webm,high\n")
    with pytest.raises(UserError, match="line 2: short-term_memorability='high' is not a number"):
        read_videomem_scores(bad)
    text = tmp_path / "caps.txt"
    text.write_text("video1.webm no-tab-here\n")
    with pytest.raises(UserError, match="line 1"):
        read_videomem_captions(text)
    with pytest.raises(UserError, match="dataset.format"):
        load_scored_captions("lamem", bad, text)
    with pytest.raises(UserError, match="dataset.target"):
        read_memento10k_scores(bad, target="long_term")
