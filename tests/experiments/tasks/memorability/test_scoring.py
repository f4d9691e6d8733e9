"""The scoring mode: prediction files the test writes for real ground-truth ids (Memento10k train, VideoMem
dev) get the Spearman an independent rank computation gives, against the configured target column; bad
prediction files stop in one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from experiments.core.runner import run_task

GROUND_TRUTH = {
    "memento10k": ("me2021_memento10k_train_scores.csv", "video_id", "scores_normalized_short_term"),
    "videomem": ("videomem2019_ground-truth_dev-set.csv", "video", "long-term_memorability"),
}


def _truth(data_dir: Path, fmt: str) -> tuple[list[str], np.ndarray]:
    """Ids and target scores read straight from the file (not through the task's readers)."""
    name, id_column, column = GROUND_TRUTH[fmt]
    with open(data_dir / "video" / "memorability" / name, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    return [r[id_column] for r in rows], np.array([float(r[column]) for r in rows])


def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks of ties, written out: sort, then give each run of equal values its mean position."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    start = 0
    while start < len(values):
        stop = start
        while stop + 1 < len(values) and values[order[stop + 1]] == values[order[start]]:
            stop += 1
        ranks[order[start : stop + 1]] = (start + stop) / 2
        start = stop + 1
    return ranks


def _reference_spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = _ranks(a) - _ranks(a).mean(), _ranks(b) - _ranks(b).mean()
    return float((ra * rb).sum() / np.sqrt((ra**2).sum() * (rb**2).sum()))


def _write(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _score(make_config, run: Path, predictions: Path, *overrides: str) -> dict[str, float]:
    cfg = make_config("experiment=memorability_score_predictions", f"task.predictions={predictions}", "logger=none", *overrides)
    run_task(cfg, run)
    return json.loads((run / "metrics.json").read_text())


@pytest.mark.parametrize("fmt", ["memento10k", "videomem"])
def test_spearman_against_the_real_ground_truth(fmt: str, make_config, data_dir: Path, tmp_path: Path) -> None:
    ids, target = _truth(data_dir, fmt)
    rng = np.random.default_rng(1)
    chosen = rng.choice(len(ids), 400, replace=False)  # a subset, in shuffled order: matching is by id
    noisy = target[chosen] + rng.normal(0, 0.08, len(chosen))
    rows = [[ids[j], target[j], -target[j], round(n, 3), target[j]] for j, n in zip(chosen, noisy)]
    path = _write(tmp_path / "predictions.csv", ["id", "exact", "reversed", "noisy", "score"], rows)
    overrides = ["task.id_column=id"] + (["dataset=mem_videomem", "dataset.target=long_term"] if fmt == "videomem" else [])
    metrics = _score(make_config, tmp_path / "run", path, *overrides)
    assert metrics["exact/spearman"] == pytest.approx(1.0) and metrics["reversed/spearman"] == pytest.approx(-1.0)
    rounded = np.array([row[3] for row in rows])
    assert metrics["noisy/spearman"] == pytest.approx(_reference_spearman(rounded, target[chosen]), abs=1e-12)
    assert 0.2 < metrics["noisy/spearman"] < 0.95  # neither the identity nor noise alone: a wrong column would show
    assert metrics["noisy/videos"] == 400 and metrics["data/ground_truth_videos"] == len(ids)
    assert "score/spearman" not in metrics  # skip_columns: the ground truth the caption task's files carry


def test_the_target_column_is_the_configured_one(make_config, data_dir: Path, tmp_path: Path) -> None:
    """VideoMem short- and long-term scores rank videos differently: predictions equal to one are exact only for it."""
    ids, long_term = _truth(data_dir, "videomem")
    rows = [[v, t] for v, t in zip(ids[:300], long_term[:300])]
    path = _write(tmp_path / "p.csv", ["video", "long"], rows)
    long_run = _score(
        make_config, tmp_path / "long", path, "dataset=mem_videomem", "dataset.target=long_term", "task.id_column=video"
    )
    short_run = _score(
        make_config, tmp_path / "short", path, "dataset=mem_videomem", "dataset.target=short_term", "task.id_column=video"
    )
    assert long_run["long/spearman"] == pytest.approx(1.0) and short_run["long/spearman"] < 0.5


@pytest.mark.parametrize(
    "case, rows, message",
    [
        (
            "unknown id",
            [["17", 0.5], ["video10.webm", 0.6], ["6515", 0.7]],
            "1 of 3 predicted videos (e.g. 'video10.webm') have no score",
        ),
        ("repeated id", [["17", 0.5], ["17", 0.6], ["6515", 0.7]], "video id '17' appears more than once"),
        ("not a number", [["17", 0.5], ["3628", "high"], ["6515", 0.7]], "line 3: m='high' is not a finite number"),
        ("empty cell", [["17", 0.5], ["3628", ""], ["6515", 0.7]], "line 3: m='' is not a finite number"),
        ("constant", [["17", 0.5], ["3628", 0.5], ["6515", 0.5]], "model column 'm' predicts the same score for every video"),
        ("too few", [["17", 0.5], ["3628", 0.6]], "2 predicted videos: a Spearman correlation needs at least 3"),
    ],
)
def test_bad_prediction_files_stop_in_one_line(case: str, rows, message: str, make_config, tmp_path: Path, capsys) -> None:
    path = _write(tmp_path / "p.csv", ["video_id", "m"], rows)
    with pytest.raises(SystemExit) as stop:
        _score(make_config, tmp_path / "run", path)
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_missing_file_column_or_setting_stop_in_one_line(make_config, tmp_path: Path, capsys) -> None:
    path = _write(tmp_path / "p.csv", ["video_id", "m"], [["17", 0.5], ["3628", 0.6], ["6515", 0.7]])
    cases = {
        "task.predictions is not set": ("task.predictions=null",),
        "missing data file": (f"task.predictions={tmp_path / 'none.csv'}",),
        "no column task.id_column='video'": (f"task.predictions={path}", "task.id_column=video"),
        "task.models=['x'] must name columns": (f"task.predictions={path}", "task.models=[x]"),
    }
    for number, (message, overrides) in enumerate(cases.items()):
        cfg = make_config("experiment=memorability_score_predictions", "logger=none", *overrides)
        with pytest.raises(SystemExit):
            run_task(cfg, tmp_path / f"run{number}")
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
