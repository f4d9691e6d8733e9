"""The memorability tasks end to end: issue keys, per-video artifacts, arms wired right, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data.videos import probe_video, write_video
from experiments.core.runner import run_task
from models.memorability.predictors import MemorabilityPredictor
from tests.experiments.tasks.memorability.files import csv_rows
from tests.models.memorability.synthetic import moving_square

CROPS = ("crop_fixed", "crop_dynamic_position", "crop_dynamic_size")
CROP_KEYS = ("score_mean", "delta_mean", "delta_low_third_mean", "delta_high_third_mean", "fps")
RELATIVE_KEYS = tuple(f"delta_vs_control_{k}" for k in ("mean", "ci_low", "ci_high", "p", "low_third_mean", "high_third_mean"))
CONTROL_KEYS = ("score_mean", "delta_mean", "delta_low_third_mean", "delta_high_third_mean")
BRIGHTNESS = "model.predictor._target_=tests.experiments.tasks.test_memorability.BrightnessPredictor"


class BrightnessPredictor(MemorabilityPredictor):
    """A stand-in scorer for fast tests: a frame's mean brightness in [0, 1]. A crop that keeps the
    bright object and drops dark background must score higher than the original."""

    def __init__(self, **_: object) -> None:
        pass

    def predict(self, inputs) -> np.ndarray:
        return np.array([float(frame.mean()) / 255.0 for frame in inputs])


@pytest.fixture
def clip_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "clips"
    for seed, frames in enumerate((24, 30, 18)):
        clip, _ = moving_square(frames=frames, width=160, height=96, side=20, seed=seed)
        write_video(folder / f"square{seed}.mp4", clip, fps=10 + seed)
    return folder


def test_crop_run_writes_the_issue_keys_scores_boxes_and_videos(make_config, clip_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cfg = make_config(
        "experiment=memorability_crop",
        f"dataset.path={clip_dir}",
        BRIGHTNESS,
        "logger=none",
        "cropping.alpha=0.5",
        "task.score_frames=4",
    )
    run_task(cfg, run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    expected = {"original/score_mean", "decode/fps"} | {f"{c}/{k}" for c in CROPS for k in CROP_KEYS + RELATIVE_KEYS}
    expected |= {f"{c}_{kind}/{k}" for c in CROPS for kind in ("centre", "random") for k in CONTROL_KEYS}
    expected |= {"batch/videos", "batch/videos_scored", "batch/videos_failed"}
    assert set(metrics) == expected
    assert (metrics["batch/videos"], metrics["batch/videos_scored"], metrics["batch/videos_failed"]) == (3, 3, 0)
    # brightness rises when the crop keeps the bright square and drops background; the dynamic crops track it
    assert metrics["crop_dynamic_position/delta_mean"] > 0 and metrics["crop_dynamic_size/delta_mean"] > 0
    assert metrics["crop_dynamic_position/score_mean"] > metrics["crop_fixed/score_mean"]
    scores = csv_rows(run_dir / "artifacts" / "scores.csv")
    assert [r["path"] for r in scores] == [f"square{i}.mp4" for i in range(3)]  # a row per video, named by its path
    controls = ["centre", *(f"random_{k}" for k in range(5))]
    assert list(scores[0])[6:] == ["original", *(f"{c}{s}" for c in CROPS for s in ["", *(f"_{k}" for k in controls)])]
    assert [(r["frames"], r["fps"], r["width"], r["height"]) for r in scores] == [
        ("24", "10.0", "160", "96"),
        ("30", "11.0", "160", "96"),
        ("18", "12.0", "160", "96"),
    ]
    originals = np.array([float(r["original"]) for r in scores])
    assert metrics["original/score_mean"] == pytest.approx(originals.mean())
    deltas = np.array([float(r["crop_fixed"]) for r in scores]) - originals
    assert metrics["crop_fixed/delta_low_third_mean"] == pytest.approx(deltas[np.argmin(originals)])
    assert metrics["crop_fixed/delta_high_third_mean"] == pytest.approx(deltas[np.argmax(originals)])
    boxes = csv_rows(run_dir / "artifacts" / "boxes.csv")
    assert len(boxes) == 3 * (24 + 30 + 18)
    assert all(int(b["x"]) >= 0 and int(b["x"]) + int(b["w"]) <= 160 and int(b["y"]) + int(b["h"]) <= 96 for b in boxes)
    info = probe_video(run_dir / "artifacts" / "videos" / "square1_dynamic_size.mp4")
    assert (info.frame_count, info.width, info.height) == (30, 80, 48) and info.fps == pytest.approx(11)
    assert (run_dir / "artifacts" / "contact_sheets" / "square2.png").stat().st_size > 0
    for view in ("saliency", "timeline"):
        assert [p.name for p in sorted((run_dir / "artifacts" / "views").glob(f"*_{view}.png"))] == [
            f"square{i}_{view}.png" for i in range(3)
        ]
    exports = csv_rows(run_dir / "artifacts" / "exports.csv")
    assert [(r["clip"], r["crop"]) for r in exports] == [(f"square{i}", c.removeprefix("crop_")) for i in range(3) for c in CROPS]
    assert all(r["file"] == f"videos/{r['clip']}_{r['crop']}.mp4" and r["codec"] in ("avc1", "mp4v") for r in exports)
    records = [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]
    assert [r["condition"] for r in records] == ["original", *(c for c in CROPS for _ in range(3))]
    assert [r.get("control") for r in records] == [None, *(["saliency", "centre", "random"] * 3)]
    assert {r["backend"] for r in records} == {"spectral_residual"}
    assert {r["video_codec"] for r in records} == {exports[0]["codec"]}  # which codec wrote the videos
    assert {r["audio"] for r in records} <= {"kept", "none", "dropped"}
    table = (run_dir / "results.md").read_text()
    assert "| crop_dynamic_size |" in table and f"3 files under {clip_dir}; 3 scored." in table


@pytest.mark.parametrize("backend", ["fine_grained", "motion"])
def test_saliency_backend_is_a_factor(backend: str, make_config, clip_dir: Path, tmp_path: Path) -> None:
    cfg = make_config(
        "experiment=memorability_crop",
        f"dataset.path={clip_dir}",
        BRIGHTNESS,
        "logger=none",
        f"saliency={backend}",
        "task.write_videos=false",
        "task.views=null",
        "debug=fast",
    )
    run_task(cfg, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "records.jsonl").read_text().splitlines()]
    assert {r["backend"] for r in records} == {backend} and records[0]["clips"] == 2  # debug=fast: task.limit clips


def test_bad_alpha_on_the_command_line_stops_with_one_line(run_cli, clip_dir: Path, tmp_path: Path) -> None:
    result = run_cli("experiment=memorability_crop", f"dataset.path={clip_dir}", BRIGHTNESS, "cropping.alpha=1.5", "logger=none")
    assert result.returncode == 2 and "cropping.alpha=1.5 must be in (0, 1]" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "artifacts").exists() and not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.parametrize("case", ["short", "non_video", "alpha_zero"])
def test_short_clip_non_video_and_zero_alpha_leave_no_results(
    case: str, make_config, clip_dir: Path, tmp_path: Path, capsys
) -> None:
    fake = tmp_path / "fake.mp4"
    fake.write_text("not a video")
    overrides, message = {
        "short": (
            [f"dataset.path={clip_dir / 'square0.mp4'}", "task.min_frames=100"],
            "shorter than the sampling window of 100 frames",
        ),
        "non_video": ([f"dataset.path={fake}"], "fake.mp4: not a readable video"),
        "alpha_zero": ([f"dataset.path={clip_dir}", "cropping.alpha=0"], "cropping.alpha=0.0 must be in (0, 1]"),
    }[case]
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        run_task(make_config("experiment=memorability_crop", BRIGHTNESS, "logger=none", *overrides), run_dir)
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not (run_dir / "artifacts").exists() and not (run_dir / "metrics.json").exists()


def test_task_composes_alone(make_config) -> None:
    cfg = make_config("task=memorability")
    assert cfg.model.name == "resmem" and cfg.dataset.name == "mem_clips" and "polarity" not in cfg
    cfg = make_config("experiment=memorability_train_captions")
    assert cfg.task.runner.endswith("run_train_captions") and cfg.dataset.name == "mem_memento10k"


@pytest.mark.slow
def test_caption_training_smoke_run_reports_held_out_spearman(make_config, tmp_path: Path, data_dir: Path) -> None:
    cfg = make_config("experiment=memorability_train_captions", "debug=fast", f"dataset.cache_dir={tmp_path / 'cache'}")
    run_task(cfg, tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in ("regressor/test_spearman", "ridge/test_spearman", "regressor/val_spearman", "ridge_inputs/test_spearman"):
        assert -1.0 <= metrics[key] <= 1.0
    assert metrics["data/test_videos"] == 20  # debug=fast: 100 videos, 20 % held out
    assert metrics["data/regressor_inputs"] == 384 + metrics["data/word_features"] > 384  # the regressor sees the words
    rows = csv_rows(tmp_path / "run" / "artifacts" / "test_predictions.csv")
    assert len(rows) == 20 and len({r["video_id"] for r in rows}) == 20


@pytest.mark.slow
def test_real_clip_with_resmem(make_config, data_dir: Path, tmp_path: Path) -> None:
    """The real predictor on a real clip: one scored frame per version (crops and their controls), scores in (0, 1)."""
    cfg = make_config(
        "experiment=memorability_crop",
        f"dataset.path={data_dir / 'video/clips/carphone_pristine.mp4'}",
        "task.score_frames=1",
        "task.controls.random_draws=1",
        "logger=none",
        "task.write_videos=false",
    )
    run_task(cfg, tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0.0 < metrics["original/score_mean"] < 1.0
    assert all(0.0 < metrics[f"{c}{arm}/score_mean"] < 1.0 for c in CROPS for arm in ("", "_centre", "_random"))
