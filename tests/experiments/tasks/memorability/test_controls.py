"""The crop task's controls end to end: every saliency crop gets centre and random crops of its size per
frame, scored on the same frames; the control-relative keys agree with the per-clip artifacts; the draws
follow task.controls.seed; task.controls=null leaves the old outputs; a bad setting stops in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data.videos import write_video
from experiments.core.runner import run_task
from models.memorability.controls import min_wilcoxon_p
from models.memorability.pipeline import evenly_spaced
from models.memorability.predictors import MemorabilityPredictor
from tests.experiments.tasks.memorability.files import csv_rows
from tests.models.memorability.synthetic import moving_square

CROPS = ("fixed", "dynamic_position", "dynamic_size")
CONTROL_KEYS = ("mean", "ci_low", "ci_high", "p", "low_third_mean", "high_third_mean")
OWN_KEYS = ("score_mean", "delta_mean", "delta_low_third_mean", "delta_high_third_mean")
WIDTH, HEIGHT, FRAMES = 160, 96, (24, 30, 18, 21)


class BrightnessPredictor(MemorabilityPredictor):
    """Mean brightness in [0, 1]: a crop's score depends on where it is."""

    def __init__(self, **_: object) -> None:
        pass

    def predict(self, inputs) -> np.ndarray:
        return np.array([float(frame.mean()) / 255.0 for frame in inputs])


class MedianPredictor(BrightnessPredictor):
    """Median brightness: on a frame that is one grey level but for a small square, any crop of it scores
    that level, so a version's score says which frames it was scored on."""

    def predict(self, inputs) -> np.ndarray:
        return np.array([float(np.median(frame)) / 255.0 for frame in inputs])


def _predictor(cls: type) -> str:
    return f"model.predictor._target_={__name__}.{cls.__name__}"


@pytest.fixture
def clip_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "clips"
    for seed, frames in enumerate(FRAMES):
        clip, _ = moving_square(frames=frames, width=WIDTH, height=HEIGHT, side=20, seed=seed)
        write_video(folder / f"square{seed}.mp4", clip, fps=10)
    return folder


def _run(make_config, path: Path, run_dir: Path, *overrides: str, predictor: type = BrightnessPredictor) -> Path:
    cfg = make_config(
        "experiment=memorability_crop",
        f"dataset.path={path}",
        _predictor(predictor),
        "logger=none",
        "task.write_videos=false",
        "task.views=null",  # views: their own tests
        "cropping.alpha=0.5",
        "task.controls.resamples=500",
        *overrides,
        output_dir=run_dir,
    )
    run_task(cfg, run_dir)
    return run_dir


def test_every_crop_is_reported_against_its_controls(make_config, clip_dir: Path, tmp_path: Path) -> None:
    run = _run(make_config, clip_dir, tmp_path / "run")
    metrics = json.loads((run / "metrics.json").read_text())
    for crop in CROPS:
        assert {f"crop_{crop}/delta_vs_control_{k}" for k in CONTROL_KEYS} <= set(metrics)
        assert {f"crop_{crop}_{kind}/{k}" for kind in ("centre", "random") for k in OWN_KEYS} <= set(metrics)
        low, high = metrics[f"crop_{crop}/delta_vs_control_ci_low"], metrics[f"crop_{crop}/delta_vs_control_ci_high"]
        assert low <= metrics[f"crop_{crop}/delta_vs_control_mean"] <= high
        assert metrics[f"crop_{crop}/delta_vs_control_p"] >= min_wilcoxon_p(len(FRAMES))

    # scores.csv: a row per clip with the original, each crop, its centre control and 5 random draws
    scores = csv_rows(run / "artifacts" / "scores.csv")
    assert len(scores) == len(FRAMES) and len(scores[0]) == 6 + 1 + len(CROPS) * 7
    score = {f"{version}@{r['clip']}": float(value) for r in scores for version, value in list(r.items())[6:]}
    clips = [f"square{i}" for i in range(len(FRAMES))]
    for crop in CROPS:
        controls = np.array(
            [[score[f"crop_{crop}_{c}@{clip}"] for c in ["centre", *(f"random_{k}" for k in range(5))]] for clip in clips]
        )
        per_clip = np.array([score[f"crop_{crop}@{clip}"] for clip in clips]) - controls.mean(axis=1)  # crop - controls' mean
        assert metrics[f"crop_{crop}/delta_vs_control_mean"] == pytest.approx(per_clip.mean())
        originals = np.array([score[f"original@{clip}"] for clip in clips])
        assert metrics[f"crop_{crop}/delta_vs_control_low_third_mean"] == pytest.approx(per_clip[np.argmin(originals)])
        assert metrics[f"crop_{crop}/delta_vs_control_high_third_mean"] == pytest.approx(per_clip[np.argmax(originals)])
        assert metrics[f"crop_{crop}_centre/score_mean"] == pytest.approx(controls[:, 0].mean())
        assert metrics[f"crop_{crop}_random/delta_mean"] == pytest.approx((controls[:, 1:].mean(axis=1) - originals).mean())
        relative = {
            r["clip"]: float(r["delta_vs_control"])
            for r in csv_rows(run / "artifacts" / "delta_vs_control.csv")
            if r["crop"] == crop
        }
        assert [relative[clip] for clip in clips] == pytest.approx(per_clip.tolist())

    records = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    arms = [(r["condition"], r.get("control")) for r in records]
    assert arms == [("original", None)] + [(f"crop_{c}", k) for c in CROPS for k in ("saliency", "centre", "random")]
    table = (run / "results.md").read_text()
    assert "delta_vs_control_p" in table and "smallest attainable p is 0.125" in table
    assert (run / "plots" / "delta_vs_control_vs_initial.png").stat().st_size > 0


def test_control_boxes_have_the_saliency_boxes_size_on_exactly_the_scored_frames(
    make_config, clip_dir: Path, tmp_path: Path
) -> None:
    run = _run(make_config, clip_dir, tmp_path / "run", "task.score_frames=4", "cropping.crops.dynamic_size.mass=0.3")
    saliency = {(r["clip"], r["crop"], r["frame"]): r for r in csv_rows(run / "artifacts" / "boxes.csv")}
    controls = csv_rows(run / "artifacts" / "control_boxes.csv")
    assert len({saliency[k]["w"] for k in saliency if k[1] == "dynamic_size"}) > 1  # sizes vary: the check has teeth
    for i, frames in enumerate(FRAMES):
        scored = {str(j) for j in evenly_spaced(frames, 4)}  # every frame decoded: frame index = kept index
        for crop in CROPS:
            rows = [r for r in controls if r["clip"] == f"square{i}" and r["crop"] == crop]
            assert len(rows) == 6 * len(scored) and {r["frame"] for r in rows} == scored
    for row in controls:
        box = saliency[(row["clip"], row["crop"], row["frame"])]
        assert (row["w"], row["h"]) == (box["w"], box["h"])
        x, y, w, h = (int(row[k]) for k in "xywh")
        assert 0 <= x <= WIDTH - w and 0 <= y <= HEIGHT - h
        if row["control"] == "centre":
            assert abs(x + w / 2 - WIDTH / 2) <= 0.5 and abs(y + h / 2 - HEIGHT / 2) <= 0.5
    random_x = {(r["clip"], r["crop"], r["draw"]): r["x"] for r in controls if r["control"] == "random"}
    assert len(set(random_x.values())) > 5  # the draws are at different places


@pytest.fixture
def grey_clip(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """Frame t is grey level 40 + 6 t everywhere but for a small bright moving square."""
    frames, _ = moving_square(frames=25, width=WIDTH, height=HEIGHT, side=10)
    levels = 40 + 6 * np.arange(25)
    clip = [np.where(frame == 255, 255, level).astype(np.uint8) for frame, level in zip(frames, levels)]
    path = tmp_path / "grey" / "levels.mp4"
    write_video(path, clip, fps=10)
    return path, levels


def test_the_crop_and_its_controls_are_scored_on_the_same_frames(make_config, grey_clip, tmp_path: Path) -> None:
    """Every version of the grey clip scores the mean level of the frames it was scored on: the original,
    each crop and each control agree (delta_vs_control 0) only if all use the same frames."""
    path, levels = grey_clip
    run = _run(make_config, path, tmp_path / "run", "task.score_frames=3", predictor=MedianPredictor)
    expected = levels[evenly_spaced(25, 3)].mean() / 255
    scores = csv_rows(run / "artifacts" / "scores.csv")
    assert len(scores) == 1 and len(scores[0]) == 6 + 1 + 3 * 7
    values = np.array([float(value) for value in list(scores[0].values())[6:]])
    assert np.ptp(values) <= 1.5 / 255  # every version alike, up to the codec's rounding
    assert values[0] == pytest.approx(expected, abs=4 / 255)  # the original: the scored frames' levels
    assert abs(levels[:3].mean() / 255 - expected) > 20 / 255  # other frames would score far apart
    metrics = json.loads((run / "metrics.json").read_text())
    assert all(abs(metrics[f"crop_{c}/delta_vs_control_mean"]) <= 1.5 / 255 for c in CROPS)


def test_random_draws_follow_the_seed(make_config, clip_dir: Path, tmp_path: Path) -> None:
    def controls(run: Path, kind: str) -> list[tuple[str, ...]]:
        rows = csv_rows(run / "artifacts" / "control_boxes.csv")
        return [tuple(r.values()) for r in rows if r["control"] == kind]

    first = _run(make_config, clip_dir, tmp_path / "a", "debug=fast")
    again = _run(make_config, clip_dir, tmp_path / "b", "debug=fast")
    other = _run(make_config, clip_dir, tmp_path / "c", "debug=fast", "task.controls.seed=7")
    assert controls(first, "random") == controls(again, "random")
    assert (first / "artifacts" / "scores.csv").read_text() == (again / "artifacts" / "scores.csv").read_text()
    assert controls(first, "random") != controls(other, "random") and controls(first, "centre") == controls(other, "centre")


def test_controls_null_keeps_the_outputs_without_controls(make_config, clip_dir: Path, tmp_path: Path) -> None:
    run = _run(make_config, clip_dir, tmp_path / "run", "task.controls=null", "debug=fast")
    metrics = json.loads((run / "metrics.json").read_text())
    assert not [k for k in metrics if "control" in k or "_centre/" in k or "_random/" in k]
    assert not (run / "artifacts" / "control_boxes.csv").exists()
    scores = csv_rows(run / "artifacts" / "scores.csv")
    assert list(scores[0])[6:] == ["original", *(f"crop_{c}" for c in CROPS)]  # no control columns
    assert len(scores) == 2  # debug=fast: 2 clips
    records = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    assert all("control" not in r for r in records)


def test_a_bad_controls_setting_stops_with_one_line_before_any_output(
    make_config, clip_dir: Path, tmp_path: Path, capsys
) -> None:
    with pytest.raises(SystemExit) as stop:
        _run(make_config, clip_dir, tmp_path / "run", "task.controls.random_draws=-2")
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1
    assert "task.controls.random_draws=-2 must be an integer >= 0" in err
    assert not (tmp_path / "run" / "artifacts").exists() and not (tmp_path / "run" / "metrics.json").exists()
