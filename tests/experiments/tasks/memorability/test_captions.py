"""The caption task against an official split given by path: trained on the Memento10k train file's first
videos, evaluated on dev files the test writes in the official layout from other videos; BayesianRidge
(the paper's regressor) is wired to the mean caption embedding, checked against sklearn fitted here."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from experiments.core.runner import run_task

MEMENTO = ("me2021_memento10k_train_scores.csv", "me2021_memento10k_train_text_descriptions.csv")


def _rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def _write(path: Path, header: list[str], rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def dev_files(data_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A dev split in Memento10k's official layout (same columns, quoting, multi-line captions): 60 videos
    the debug run does not train on (it reads the train file's first 100)."""
    root = data_dir / "video" / "memorability"
    header, scores = _rows(root / MEMENTO[0])
    caption_header, captions = _rows(root / MEMENTO[1])
    chosen = {row["video_id"] for row in scores[500:560]}
    return (
        _write(tmp_path / "me2021_memento10k_dev_scores.csv", header, scores[500:560]),
        _write(
            tmp_path / "me2021_memento10k_dev_text_descriptions.csv",
            caption_header,
            [r for r in captions if r["video_id"] in chosen],
        ),
    )


def _config(make_config, tmp_path: Path, dev: tuple[Path, Path], *overrides: str):
    official = f"{{format: memento10k, scores: '{dev[0]}', captions: '{dev[1]}'}}"
    return make_config(
        "experiment=memorability_train_captions",
        "debug=fast",
        f"dataset.cache_dir={tmp_path / 'cache'}",
        f"dataset.official_test={official}",
        *overrides,
    )


def _spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


@pytest.mark.slow
def test_official_test_split_and_bayesian_ridge(make_config, dev_files: tuple[Path, Path], tmp_path: Path) -> None:
    from sklearn.linear_model import BayesianRidge

    from data.caption_features import CaptionEncoder
    from data.memorability_scores import load_scored_captions
    from experiments.tasks.memorability.task import split_videos

    run = tmp_path / "run"
    run_task(_config(make_config, tmp_path, dev_files), run)
    metrics = json.loads((run / "metrics.json").read_text())
    models = ("ridge", "ridge_inputs", "regressor", "bayesian_ridge")
    for name in models:
        assert -1 <= metrics[f"{name}/test_spearman"] <= 1 and -1 <= metrics[f"{name}/official_test_spearman"] <= 1
    assert metrics["data/official_test_videos"] == 60 and metrics["data/test_videos"] == 20

    _, dev_scores = _rows(dev_files[0])
    truth = {r["video_id"]: float(r["scores_normalized_short_term"]) for r in dev_scores}
    _, rows = _rows(run / "artifacts" / "official_test_predictions.csv")
    assert [r["video_id"] for r in rows] == list(truth) and all(float(r["score"]) == truth[r["video_id"]] for r in rows)
    for name in models:
        predicted = [float(r[name]) for r in rows]
        assert metrics[f"{name}/official_test_spearman"] == pytest.approx(_spearman(predicted, list(truth.values())), abs=1e-12)

    # BayesianRidge on the mean caption embedding of the train + val videos, fitted here
    root = Path(make_config("experiment=memorability_train_captions").dataset.scores).parent
    train = load_scored_captions("memento10k", root / MEMENTO[0], root / MEMENTO[1], limit=100)
    encoder = CaptionEncoder(tmp_path / "cache")
    means = lambda captions: np.stack([encoder.encode(c).mean(axis=0) for c in captions])  # noqa: E731
    split = split_videos(100, 0.2, 0.1, 0)
    fit_on = np.concatenate([split["train"], split["val"]])
    model = BayesianRidge().fit(means(train.captions)[fit_on], train.scores[fit_on])
    dev = load_scored_captions("memento10k", *dev_files)
    expected = model.predict(means(dev.captions))
    assert np.allclose([float(r["bayesian_ridge"]) for r in rows], expected, atol=2e-5)


@pytest.mark.slow
def test_official_test_alone_trains_on_the_whole_file(make_config, dev_files: tuple[Path, Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_task(_config(make_config, tmp_path, dev_files, "dataset.test_fraction=0"), run)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["data/test_videos"] == 0 and metrics["data/train_videos"] + metrics["data/val_videos"] == 100
    assert not any(key.endswith("/test_spearman") for key in metrics)
    assert {f"{m}/official_test_spearman" for m in ("ridge", "regressor", "bayesian_ridge")} <= set(metrics)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (("dataset.official_test=null", "dataset.test_fraction=0"), "dataset.test_fraction=0 leaves nothing to test on"),
        (("model.predictors.bayesian_ridge.input=pixels",), "model.predictors.bayesian_ridge.input='pixels' must be one of"),
        (("dataset.official_test.captions=null",), "dataset.official_test lacks captions"),
    ],
)
def test_bad_official_test_settings_stop_in_one_line(
    overrides, message: str, make_config, dev_files: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    with pytest.raises(SystemExit):
        run_task(_config(make_config, tmp_path, dev_files, *overrides), tmp_path / "run")
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_the_training_file_as_official_test_is_refused(make_config, tmp_path: Path, capsys) -> None:
    cfg = make_config("experiment=memorability_train_captions", "debug=fast")
    scores, captions = cfg.dataset.scores, cfg.dataset.captions
    with pytest.raises(SystemExit):
        run_task(
            make_config(
                "experiment=memorability_train_captions",
                "debug=fast",
                f"dataset.official_test={{format: memento10k, scores: '{scores}', captions: '{captions}'}}",
            ),
            tmp_path / "run",
        )
    err = capsys.readouterr().err.strip()
    assert "dataset.official_test shares 100 videos with the training file" in err and len(err.splitlines()) == 1
