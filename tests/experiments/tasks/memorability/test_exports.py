"""How cropped videos are written, said where a user looks: the codec actually used (H.264 when the build
writes it, else the next in task.video_codecs) and whether the source's audio was kept, in the log, in
exports.csv and in the records; a progress bar over the videos; DeepGaze refused in one line here."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import data.videos
import experiments.tasks.memorability.task as task_module
import experiments.tasks.memorability.video as video_module
from data.videos import has_audio, write_video
from experiments.core.runner import run_task
from models.memorability.predictors import MemorabilityPredictor
from tests.experiments.tasks.memorability.files import csv_rows
from tests.models.memorability.synthetic import moving_square


class BrightnessPredictor(MemorabilityPredictor):
    def __init__(self, **_: object) -> None:
        pass

    def predict(self, inputs) -> np.ndarray:
        return np.array([float(frame.mean()) / 255.0 for frame in inputs])


def _run(make_config, path: Path, run_dir: Path, *overrides: str) -> Path:
    cfg = make_config(
        "experiment=memorability_crop",
        f"dataset.path={path}",
        f"model.predictor._target_={__name__}.BrightnessPredictor",
        "logger=none",
        "task.controls=null",
        "task.views=null",
        "cropping=fixed_only",
        *overrides,
        output_dir=run_dir,
    )
    run_task(cfg, run_dir)
    return run_dir


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    frames, _ = moving_square(frames=20, width=160, height=96, side=20)
    return write_video(tmp_path / "clips" / "square.mp4", frames, fps=10)


def test_the_codec_used_is_said_in_the_log_the_exports_and_the_records(make_config, clip: Path, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO)
    run = _run(make_config, clip, tmp_path / "run", "task.video_codecs=[zzzz,mp4v]")
    assert "cannot write zzzz; using mp4v (MPEG-4 Part 2)" in caplog.text
    assert [(r["file"], r["codec"], r["frames"]) for r in csv_rows(run / "artifacts" / "exports.csv")] == [
        ("videos/square_fixed.mp4", "mp4v", "20")
    ]
    assert {r["video_codec"] for r in _records(run)} == {"mp4v"}
    caplog.clear()
    run = _run(make_config, clip, tmp_path / "first", "task.video_codecs=[mp4v,zzzz]")
    assert "cropped videos: codec mp4v (MPEG-4 Part 2)" in caplog.text and "cannot write" not in caplog.text
    run = _run(make_config, clip, tmp_path / "none", "task.write_videos=false")
    assert not (run / "artifacts" / "exports.csv").exists() and all("video_codec" not in r for r in _records(run))


def test_no_writable_codec_stops_before_any_video(make_config, clip: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        _run(make_config, clip, tmp_path / "run", "task.video_codecs=[zzzz]")
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and err.splitlines() == [
        f"error: OpenCV cannot write .mp4 with any of the codecs zzzz; {err.split('; ', 1)[1]}"
    ]
    assert not (tmp_path / "run" / "artifacts").exists()


def test_without_ffmpeg_the_audio_is_dropped_and_said_so(make_config, clip: Path, tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.setattr(data.videos.shutil, "which", lambda name: None)
    monkeypatch.setattr(video_module.shutil, "which", lambda name: None)
    caplog.set_level(logging.INFO)
    run = _run(make_config, clip, tmp_path / "run")
    assert "ffmpeg is not on PATH: cropped videos have no audio" in caplog.text
    assert [r["audio"] for r in csv_rows(run / "artifacts" / "exports.csv")] == ["dropped: ffmpeg not on PATH"]
    assert {r["audio"] for r in _records(run)} == {"dropped"}
    assert "audio dropped" in (run / "results.md").read_text()


@pytest.mark.skipif(
    shutil.which("ffmpeg") is None, reason="ffmpeg is not on PATH (Debian package ffmpeg): audio muxing untestable"
)
def test_with_ffmpeg_a_crop_keeps_the_sources_audio(make_config, tmp_path: Path) -> None:
    source = tmp_path / "talk.mp4"
    lavfi = ["-f", "lavfi", "-i", "testsrc=size=160x96:rate=10:duration=2", "-f", "lavfi", "-i", "sine=duration=2"]
    subprocess.run(["ffmpeg", "-v", "error", "-y", *lavfi, "-c:v", "mpeg4", "-c:a", "aac", "-shortest", str(source)], check=True)
    run = _run(make_config, source, tmp_path / "run", "task.num_frames=5")  # thinned: written at 1/4 of the rate
    (export,) = csv_rows(run / "artifacts" / "exports.csv")
    assert export["audio"] == "kept" and has_audio(run / "artifacts" / export["file"])
    assert {r["audio"] for r in _records(run)} == {"kept"}


def test_the_progress_bar_counts_videos_and_starts_at_those_already_done(
    make_config, clip: Path, tmp_path: Path, monkeypatch
) -> None:
    bars: list[dict] = []

    class Bar:
        def __init__(self, total: int, initial: int, **kwargs: object) -> None:
            bars.append({"total": total, "initial": initial, "updates": 0, "closed": False})

        def update(self, n: int) -> None:
            bars[-1]["updates"] += n

        def set_postfix_str(self, *args: object, **kwargs: object) -> None:
            pass

        def close(self) -> None:
            bars[-1]["closed"] = True

    monkeypatch.setattr(task_module, "tqdm", Bar)
    for name in ("b.mp4", "c.mp4"):
        shutil.copy(clip, clip.with_name(name))
    (clip.parent / "d.mp4").write_text("not a video")
    run = _run(make_config, clip.parent, tmp_path / "run", "task.limit=2")
    assert bars == [{"total": 2, "initial": 0, "updates": 2, "closed": True}]
    _run(make_config, clip.parent, run, "task.limit=4", "resume_check=false")  # the same batch, two more videos
    assert bars[-1] == {"total": 4, "initial": 2, "updates": 2, "closed": True}  # the failed d.mp4 advances it too


def test_deepgaze_without_its_package_stops_in_one_line(make_config, clip: Path, tmp_path: Path, capsys) -> None:
    import importlib.util

    if importlib.util.find_spec("deepgaze_pytorch") is not None:
        pytest.skip("deepgaze_pytorch is installed here")
    with pytest.raises(SystemExit) as stop:
        _run(make_config, clip, tmp_path / "run", "saliency=deepgaze")
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1 and "saliency=deepgaze needs the deepgaze_pytorch package" in err
