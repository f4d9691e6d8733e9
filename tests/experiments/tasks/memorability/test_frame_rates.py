"""Frame rates in the crop task: a clip thinned with `task.num_frames` is exported as long as its source
(not in fast-forward), its crop moves as fast per second as the unthinned clip's, and a container without
a usable frame rate stops at read time with one line saying what to do."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

import data.videos
from common.errors import UserError
from data.videos import playback_fps, probe_video, read_frames, sample_indices, step_fps
from experiments.core.runner import run_task
from models.memorability.predictors import MemorabilityPredictor
from tests.models.memorability.synthetic import moving_square

SOURCE_FPS, SOURCE_FRAMES, WIDTH, HEIGHT = 10.0, 40, 320, 96  # a 4-second clip
CROPS = ("fixed", "dynamic_position", "dynamic_size")
STAND_IN = f"model.predictor._target_={__name__}.BrightnessPredictor"


class BrightnessPredictor(MemorabilityPredictor):
    """A fast stand-in scorer (mean brightness): these tests are about time, not memorability."""

    def __init__(self, **_: object) -> None:
        pass

    def predict(self, inputs) -> np.ndarray:
        return np.array([float(frame.mean()) / 255.0 for frame in inputs])


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A bright square crossing the frame in 4 s (0.22 frame widths per second), written with OpenCV."""
    frames, _ = moving_square(frames=SOURCE_FRAMES, width=WIDTH, height=HEIGHT, side=20)
    path = tmp_path / "clips" / "square.mp4"
    path.parent.mkdir()
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), SOURCE_FPS, (WIDTH, HEIGHT))
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def _run(make_config, source: Path, run_dir: Path, *overrides: str) -> Path:
    cfg = make_config(
        "experiment=memorability_crop",
        f"dataset.path={source}",
        STAND_IN,
        "logger=none",
        "task.score_frames=2",
        "task.views=null",  # views: their own tests
        *overrides,
        output_dir=run_dir,
    )
    run_task(cfg, run_dir)
    return run_dir


def _reported_fps(value: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every capture opened on a file named nofps.mp4 report `value` as its frame rate (the rest of
    the capture is OpenCV's own)."""
    opencv_capture = cv2.VideoCapture

    class Capture:
        def __init__(self, path: str, *args: object) -> None:
            self.capture, self.fake = opencv_capture(path, *args), Path(path).name == "nofps.mp4"

        def get(self, prop: int) -> float:
            return value if self.fake and prop == cv2.CAP_PROP_FPS else self.capture.get(prop)

        def __getattr__(self, name: str) -> object:
            return getattr(self.capture, name)

    monkeypatch.setattr(data.videos.cv2, "VideoCapture", Capture)


def test_thinned_rates_known_answers() -> None:
    kept = sample_indices(SOURCE_FRAMES, 10)
    assert kept == [0, 4, 9, 13, 17, 22, 26, 30, 35, 39]
    assert step_fps(kept, 10.0) == pytest.approx(10.0 * 9 / 39)  # 9 gaps over 3.9 s
    assert step_fps(list(range(40)), 10.0) == 10.0 and step_fps([5], 10.0) == 10.0
    info = data.videos.VideoInfo(Path("x.mp4"), 10.0, 40, 64, 48)
    assert playback_fps(info, 10) == 2.5 and playback_fps(info, 40) == 10.0  # 10 frames in 4 s; all frames as is


@pytest.mark.parametrize("num_frames", [10, 7, None])
def test_an_exported_crop_lasts_as_long_as_its_source(num_frames: int | None, make_config, source: Path, tmp_path: Path) -> None:
    run = _run(make_config, source, tmp_path / "run", f"task.num_frames={'null' if num_frames is None else num_frames}")
    source_seconds = SOURCE_FRAMES / SOURCE_FPS
    for crop in CROPS:
        info = probe_video(run / "artifacts" / "videos" / f"square_{crop}.mp4")
        assert info.frame_count == (num_frames or SOURCE_FRAMES)
        assert abs(info.frame_count / info.fps - source_seconds) <= 1 / info.fps  # within one exported frame
    if num_frames is None:
        assert info.fps == pytest.approx(SOURCE_FPS)  # nothing thinned: the source's own rate


def _centre_track(run: Path, crop: str) -> tuple[np.ndarray, np.ndarray]:
    """(seconds, box centre x in pixels) per processed frame of `crop`, from artifacts/boxes.csv."""
    with open(run / "artifacts" / "boxes.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["crop"] == crop]
    seconds = np.array([int(r["frame"]) / SOURCE_FPS for r in rows])
    centres = np.array([int(r["x"]) + int(r["w"]) / 2 for r in rows])
    assert all(0 < int(r["x"]) and int(r["x"]) + int(r["w"]) < WIDTH for r in rows)  # never clamped at a border
    return seconds, centres


def test_the_crop_moves_as_fast_per_second_with_and_without_thinning(make_config, source: Path, tmp_path: Path) -> None:
    """The square outruns the speed bound (0.22 > 0.05 frame widths per second), so the dynamic-position
    box moves at the bound the whole clip: 0.05 x 320 = 16 px/s over 3.9 s, whether it sees 40 frames or
    10 (the croppers' own tests cover dynamic size and the EMA)."""
    limit = ("cropping.max_speed=0.05", "cropping.ema_seconds=0", "cropping.alpha=0.25", "task.write_videos=false")
    every = _centre_track(_run(make_config, source, tmp_path / "all", *limit), "dynamic_position")
    thinned = _centre_track(_run(make_config, source, tmp_path / "thin", *limit, "task.num_frames=10"), "dynamic_position")
    assert len(every[0]) == SOURCE_FRAMES and len(thinned[0]) == 10
    for seconds, centres in (every, thinned):
        speed = (centres[-1] - centres[0]) / (seconds[-1] - seconds[0])  # px per second over the clip
        assert speed == pytest.approx(0.05 * WIDTH, abs=1.5 / 3.9)  # integer boxes: a pixel or so over 3.9 s
        steps = np.diff(centres) / np.diff(seconds)
        assert steps.max() <= 0.05 * WIDTH + 1.5 / np.diff(seconds).min()  # never faster, up to rounding
    assert abs((every[1][-1] - every[1][0]) - (thinned[1][-1] - thinned[1][0])) <= 2


def test_a_moving_average_window_longer_than_the_clip_is_an_error(make_config, source: Path, tmp_path: Path, capsys) -> None:
    window = (
        "cropping.crops.dynamic_position.smoothing=moving_average",
        "cropping.crops.dynamic_position.window_seconds=5",  # longer than the 4-s clip, at any frame rate
        "task.write_videos=false",
    )
    with pytest.raises(SystemExit) as stop:
        _run(make_config, source, tmp_path / "run", *window, "task.num_frames=10")
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "square.mp4: 10 frames at 2.31 fps" in err and "window of crop dynamic_position" in err
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.parametrize("reported", [0.0, -1.0, math.nan])
def test_a_container_without_a_frame_rate_stops_at_read_time(
    reported: float, monkeypatch: pytest.MonkeyPatch, source: Path, make_config, tmp_path: Path, capsys
) -> None:
    bad = source.rename(source.with_name("nofps.mp4"))
    _reported_fps(reported, monkeypatch)
    assert np.isclose(probe_video(bad).fps, reported, equal_nan=True)  # the container "reports" it
    decoded = []
    real_iter = data.videos.iter_frames
    monkeypatch.setattr(data.videos, "iter_frames", lambda path: (decoded.append(path), real_iter(path))[1])
    with pytest.raises(UserError, match=r"nofps\.mp4: its container reports fps=.*task\.fps_override=<frames per second>"):
        read_frames(bad)
    assert decoded == []  # stopped before decoding a frame

    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:  # videos off: before, such a run went through with fps 0
        _run(make_config, bad, run_dir, "task.write_videos=false")
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1
    assert "nofps.mp4" in err and "re-mux or re-encode" in err and "task.fps_override" in err
    assert not (run_dir / "artifacts").exists() and not (run_dir / "metrics.json").exists()


def test_fps_override_replaces_a_missing_rate_and_a_bad_override_is_named(
    monkeypatch: pytest.MonkeyPatch, source: Path, make_config, tmp_path: Path, capsys
) -> None:
    bad = source.rename(source.with_name("nofps.mp4"))
    _reported_fps(0.0, monkeypatch)
    run = _run(make_config, bad, tmp_path / "run", "task.fps_override=20", "task.num_frames=10")
    info = probe_video(run / "artifacts" / "videos" / "nofps_dynamic_position.mp4")
    assert info.fps == pytest.approx(20 * 10 / SOURCE_FRAMES)  # 40 frames at 20 fps = 2 s, thinned to 10 frames
    with pytest.raises(SystemExit) as stop:
        _run(make_config, bad, tmp_path / "run2", "task.fps_override=-5")
    assert stop.value.code == 2 and "task.fps_override=-5 must be a positive number" in capsys.readouterr().err
