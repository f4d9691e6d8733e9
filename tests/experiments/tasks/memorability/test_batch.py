"""The crop task on a folder as a batch: a recursive glob names each video by its path; scores.csv gets a
row per video as it is done, so an interrupted batch rerun in its run dir ends with the rows of an
uninterrupted one (a real SIGKILL in the slow test); broken files are recorded in failures.csv and the
batch goes on, or stops in one line when nothing is readable; the pipeline holds a few frames whatever
the clip's length; the batch command's exit status counts failed videos."""

from __future__ import annotations

import csv
import json
import logging
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import cv2
import numpy as np
import pytest

import data.videos
import experiments.core.runner as runner_module
import experiments.tasks.memorability.task as task_module
import experiments.tasks.memorability.video as video_module
from data.videos import write_video
from experiments.core.runner import run_task
from experiments.tasks.memorability.task import FAILED_VIDEOS
from models.memorability.predictors import MemorabilityPredictor
from tests.conftest import REPO, cli_env, run_in_process
from tests.models.memorability.synthetic import moving_square

CROPS = ("fixed", "dynamic_position", "dynamic_size")
LOGS = ("scores.csv", "boxes.csv", "control_boxes.csv", "exports.csv", "failures.csv")


class BrightnessPredictor(MemorabilityPredictor):
    """Mean brightness in [0, 1]: fast, and a crop's score depends on where it is."""

    def __init__(self, **_: object) -> None:
        pass

    def predict(self, inputs) -> np.ndarray:
        return np.array([float(frame.mean()) / 255.0 for frame in inputs])


class SlowBrightnessPredictor(BrightnessPredictor):
    """Brightness, 0.25 s per call: a video takes about a second, so a kill lands mid-batch."""

    def predict(self, inputs) -> np.ndarray:
        time.sleep(0.25)
        return super().predict(inputs)


STAND_IN = f"model.predictor._target_={__name__}.BrightnessPredictor"


def _write(path: Path, frames: int = 20, seed: int = 0, fps: float = 10) -> Path:
    clip, _ = moving_square(frames=frames, width=160, height=96, side=20, seed=seed)
    return write_video(path, clip, fps=fps)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Four good clips, two of them in subfolders."""
    root = tmp_path / "videos"
    for seed, name in enumerate(("a.mp4", "b/c.mp4", "b/d/e.mp4", "f.mp4")):
        _write(root / name, frames=16 + 2 * seed, seed=seed)
    return root


def _config(make_config, root: Path, run_dir: Path, *overrides: str):
    return make_config(
        "experiment=memorability_crop",
        f"dataset.path={root}",
        "dataset.glob=**/*.mp4",
        STAND_IN,
        "logger=none",
        "task.controls.random_draws=2",
        "task.controls.resamples=200",
        *(() if any(o.startswith("task.views") for o in overrides) else ("task.views=null",)),
        *overrides,
        output_dir=run_dir,
    )


def _run(make_config, root: Path, run_dir: Path, *overrides: str) -> Path:
    run_task(_config(make_config, root, run_dir, *overrides), run_dir)
    return run_dir


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _metrics(run: Path) -> dict[str, float]:
    """metrics.json without the timings (they differ from run to run)."""
    return {k: v for k, v in json.loads((run / "metrics.json").read_text()).items() if not k.endswith("/fps")}


def _same_logs(one: Path, other: Path) -> None:
    for name in LOGS:
        first, second = one / "artifacts" / name, other / "artifacts" / name
        assert first.exists() == second.exists(), name
        assert not first.exists() or first.read_text() == second.read_text(), name
    assert [r["path"] for r in _rows(one / "artifacts" / "timings.csv")] == [
        r["path"] for r in _rows(other / "artifacts" / "timings.csv")
    ]


class Killed(BaseException):
    """Stands in for SIGKILL in-process: nothing after it runs, no `except Exception` catches it."""


def test_a_glob_names_every_video_by_its_path_and_keeps_clip_ids_unique(make_config, folder: Path, tmp_path: Path) -> None:
    _write(folder / "f.avi", seed=9)  # shares f.mp4's clip id: both keep their suffix
    _write(folder / "b" / "e.mp4", seed=8)  # shares a name (not a path) with b/d/e.mp4
    run = _run(make_config, folder, tmp_path / "run", "dataset.glob=**/*", "task.write_videos=true")
    scores = _rows(run / "artifacts" / "scores.csv")
    assert [r["path"] for r in scores] == ["a.mp4", "b/c.mp4", "b/d/e.mp4", "b/e.mp4", "f.avi", "f.mp4"]
    assert [r["clip"] for r in scores] == ["a", "b/c", "b/d/e", "b/e", "f.avi", "f.mp4"]
    artifacts = run / "artifacts"
    assert (artifacts / "videos" / "b" / "d" / "e_dynamic_size.mp4").is_file() and (
        artifacts / "contact_sheets" / "f.avi.png"
    ).is_file()
    assert len({r["crop_fixed_random_0"] for r in scores}) == 6  # controls seeded per clip id: distinct draws
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["batch/videos"], metrics["batch/videos_scored"], metrics["batch/videos_failed"]) == (6, 6, 0)


def test_an_interrupted_batch_resumes_to_the_rows_of_an_uninterrupted_one(
    make_config, folder: Path, tmp_path: Path, monkeypatch, caplog
) -> None:
    caplog.set_level(logging.INFO, logger=task_module.__name__)
    straight = _run(make_config, folder, tmp_path / "straight", "task.write_videos=true")
    real = task_module.process_video
    calls: list[str] = []

    def dies_on_the_third(job, ctx, source, path, clip):
        calls.append(path)
        outcome = real(job, ctx, source, path, clip)
        if len(calls) == 3:  # its videos are written, its rows are not: the worst moment to die
            raise Killed
        return outcome

    monkeypatch.setattr(task_module, "process_video", dies_on_the_third)
    killed = tmp_path / "killed"
    with pytest.raises(Killed):
        _run(make_config, folder, killed, "task.write_videos=true")
    assert [r["path"] for r in _rows(killed / "artifacts" / "scores.csv")] == ["a.mp4", "b/c.mp4"]
    with open(killed / "artifacts" / "scores.csv", "a") as handle:
        handle.write("b/d/e.mp4,b/d/e,20,10.0,16")  # a row torn by the kill: no line end
    with open(killed / "artifacts" / "boxes.csv", "a") as handle:
        handle.write("b/d/e,fixed,0,1,2,3,4\n")  # rows of the interrupted video, before its score row

    calls.clear()
    monkeypatch.setattr(task_module, "process_video", lambda *args: (calls.append(args[3]), real(*args))[1])
    _run(make_config, folder, killed, "task.write_videos=true")
    assert calls == ["b/d/e.mp4", "f.mp4"]  # where it stopped: the interrupted video again, once
    _same_logs(killed, straight)
    assert _metrics(killed) == _metrics(straight)
    assert "resuming: 2 videos already scored (skipped), 0 failed before" in caplog.text

    calls.clear()
    _run(make_config, folder, killed, "task.write_videos=true")  # a finished batch: nothing to do, same results
    assert calls == [] and _metrics(killed) == _metrics(straight)
    _same_logs(killed, straight)

    _run(make_config, folder, killed, "task.write_videos=true", "ckpt_path=none")  # afresh
    assert calls == ["a.mp4", "b/c.mp4", "b/d/e.mp4", "f.mp4"]
    _same_logs(killed, straight)


def _broken_files(root: Path, monkeypatch) -> dict[str, str]:
    """Four unreadable files among the good ones, and the message each must be recorded with."""
    (root / "notes.mp4").write_text("not a video\n" * 20)
    (root / "empty.mp4").write_bytes(b"")
    writer = cv2.VideoWriter(str(root / "zero.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 48))
    writer.release()  # a file OpenCV wrote with no frame in it
    _write(root / "nofps.mp4")
    _write(root / "b" / "blank.mp4")
    opencv_capture = cv2.VideoCapture

    class Capture:  # nofps.mp4 reports fps 0; b/blank.mp4 opens but decodes no frame
        def __init__(self, path: str, *args: object) -> None:
            self.capture, self.name = opencv_capture(path, *args), Path(path).name

        def get(self, prop: int) -> float:
            return 0.0 if self.name == "nofps.mp4" and prop == cv2.CAP_PROP_FPS else self.capture.get(prop)

        def read(self, *args: object):
            return (False, None) if self.name == "blank.mp4" else self.capture.read(*args)

        def __getattr__(self, name: str) -> object:
            return getattr(self.capture, name)

    monkeypatch.setattr(data.videos.cv2, "VideoCapture", Capture)
    return {
        "b/blank.mp4": "no frame could be decoded",
        "empty.mp4": "empty file (0 bytes)",
        "nofps.mp4": "its container reports fps=0.0",
        "notes.mp4": "not a readable video",
        "zero.mp4": "not a readable video",
    }


def test_broken_files_are_recorded_with_their_errors_and_the_batch_goes_on(
    make_config, folder: Path, tmp_path: Path, monkeypatch
) -> None:
    expected = _broken_files(folder, monkeypatch)
    run = _run(make_config, folder, tmp_path / "run")
    failures = _rows(run / "artifacts" / "failures.csv")
    assert [r["path"] for r in failures] == sorted(expected)
    for row in failures:
        assert expected[row["path"]] in row["error"] and row["error_type"] == "UserError"
    assert [r["path"] for r in _rows(run / "artifacts" / "scores.csv")] == ["a.mp4", "b/c.mp4", "b/d/e.mp4", "f.mp4"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["batch/videos"], metrics["batch/videos_scored"], metrics["batch/videos_failed"]) == (9, 4, 5)
    assert runner_module.EXIT_STATUSES[-1] == FAILED_VIDEOS == 3
    assert (
        "9 files under" in (run / "results.md").read_text()
        and "5 failed (artifacts/failures.csv)" in (run / "results.md").read_text()
    )

    calls: list[str] = []
    real = task_module.process_video
    monkeypatch.setattr(task_module, "process_video", lambda *args: (calls.append(args[3]), real(*args))[1])
    before = (run / "artifacts" / "failures.csv").read_text()
    _run(make_config, folder, run)
    assert calls == sorted(expected)  # a rerun tries the failed videos again, not the scored ones
    assert (run / "artifacts" / "failures.csv").read_text() == before  # each recorded once, as before


@pytest.mark.parametrize("case", ["empty", "no_match", "all_broken"])
def test_a_batch_with_nothing_readable_stops_in_one_line(case: str, make_config, tmp_path: Path, monkeypatch, capsys) -> None:
    root = tmp_path / "videos"
    root.mkdir()
    overrides: tuple[str, ...] = ()
    if case == "no_match":
        _write(root / "a.avi")
    if case == "all_broken":
        (root / "notes.mp4").write_text("not a video")
        (root / "empty.mp4").write_bytes(b"")
    message = {
        "empty": "no file matches dataset.glob='**/*.mp4'",
        "no_match": "no file matches dataset.glob='**/*.mp4'",
        "all_broken": f"none of the 2 files under {root} matching '**/*.mp4' could be processed "
        "(each is in artifacts/failures.csv); the first, empty.mp4: ",
    }[case]
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        _run(make_config, root, run, *overrides)
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1 and message in err
    assert not (run / "metrics.json").exists()
    assert len(_rows(run / "artifacts" / "failures.csv")) == (2 if case == "all_broken" else 0)


def test_the_pipeline_holds_a_few_frames_whatever_the_clip_length(make_config, tmp_path: Path, monkeypatch) -> None:
    """Decoded frames and cut crops are tracked by weak reference: however long the clip, only the scored
    frames' versions (3 frames x (original + 3 crops x 3 versions)) and the frame in hand stay alive."""
    alive: dict[str, list[weakref.ref]] = {"decoded": [], "cut": []}
    most = dict.fromkeys(alive, 0)

    def count(kind: str, frame: np.ndarray) -> np.ndarray:
        alive[kind].append(weakref.ref(frame))
        for key, refs in alive.items():
            most[key] = max(most[key], sum(ref() is not None for ref in refs))
        return frame

    real_frames, real_crop = data.videos.VideoClip.frames, video_module.apply_crop
    monkeypatch.setattr(data.videos.VideoClip, "frames", lambda self: ((i, count("decoded", f)) for i, f in real_frames(self)))
    monkeypatch.setattr(video_module, "apply_crop", lambda *args: count("cut", real_crop(*args)))
    _write(tmp_path / "long.mp4", frames=120)
    run = _run(make_config, tmp_path / "long.mp4", tmp_path / "run", "task.write_videos=true", "task.controls.random_draws=1")
    assert len(_rows(run / "artifacts" / "boxes.csv")) == 3 * 120 and len(alive["decoded"]) == 2 * 120  # two passes
    assert most["decoded"] <= 3 + 2  # the 3 scored originals, the frame in hand and the one being decoded
    assert most["cut"] <= 3 * 3 * 3 + 3  # scored frames of each crop and its 2 controls, and the crops in hand


def test_views_are_optional(make_config, folder: Path, tmp_path: Path) -> None:
    run = _run(make_config, folder, tmp_path / "run", "task.limit=1", "task.views.frames=4")  # default: 6
    assert sorted(p.name for p in (run / "artifacts" / "views").iterdir()) == ["a_saliency.png", "a_timeline.png"]
    assert cv2.imread(str(run / "artifacts" / "views" / "a_saliency.png")).shape[:2] == (2 * (160 + 4), 3 * (267 + 4))
    run = _run(make_config, folder, tmp_path / "none", "task.limit=1", "task.views=null")
    assert not (run / "artifacts" / "views").exists()
    with pytest.raises(SystemExit):
        _run(make_config, folder, tmp_path / "bad", "task.views.frames=0")


def _batch_args(run_dir: Path, root: Path, *extra: str) -> list[str]:
    args = ["experiment=memorability_crop", f"dataset.path={root}", "dataset.glob=**/*.mp4", "logger=none"]
    return [*args, "task.controls=null", "task.views=null", f"hydra.run.dir={run_dir}", *extra]


def _start(run_dir: Path, root: Path, *extra: str, module: bool = False) -> subprocess.Popen:
    entry = ["-m", "experiments.tasks.memorability.batch"] if module else ["run.py"]
    return subprocess.Popen(
        [sys.executable, *entry, *_batch_args(run_dir, root, *extra)],
        cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _run_py(run_dir: Path, root: Path, *extra: str, status: int = 0) -> tuple[str, str]:
    """`python run.py` run in this process (no kill needed): (stdout, stderr), after checking its exit status."""
    result = run_in_process(_batch_args(run_dir, root, *extra), cli_env())
    assert result.returncode == status, (result.stdout + result.stderr)[-3000:]
    return result.stdout, result.stderr


def _finish(process: subprocess.Popen, status: int = 0) -> tuple[str, str]:
    """(stdout, stderr) of a finished process, after checking its exit status."""
    out, err = process.communicate(timeout=600)
    assert process.returncode == status, (out + err)[-3000:]
    return out, err


@pytest.mark.slow
def test_a_killed_batch_resumes_where_it_stopped(folder: Path, tmp_path: Path) -> None:
    slow = f"model.predictor._target_={__name__}.SlowBrightnessPredictor"
    straight = _start(tmp_path / "straight", folder, slow)
    victim = _start(tmp_path / "killed", folder, slow)
    scores = tmp_path / "killed" / "artifacts" / "scores.csv"
    deadline = time.monotonic() + 300
    while len(_rows(scores)) < 1:
        assert victim.poll() is None, victim.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no row after 300 s"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(60) == -signal.SIGKILL
    done = len(_rows(scores))
    assert 1 <= done < 4, "the kill came after the batch ended; nothing was tested"
    _finish(straight)
    _run_py(tmp_path / "killed", folder, slow)
    assert f"resuming: {done} videos already scored (skipped)" in (tmp_path / "killed" / "run.log").read_text()
    _same_logs(tmp_path / "killed", tmp_path / "straight")
    assert _metrics(tmp_path / "killed") == _metrics(tmp_path / "straight")


@pytest.mark.slow
def test_run_py_exits_3_when_videos_of_a_batch_failed(folder: Path, tmp_path: Path) -> None:
    _run_py(tmp_path / "good", folder, STAND_IN)
    (folder / "b" / "broken.mp4").write_text("not a video")
    _run_py(tmp_path / "some", folder, STAND_IN, status=FAILED_VIDEOS)
    assert "b/broken.mp4 failed, recorded in failures.csv" in (tmp_path / "some" / "run.log").read_text()
    assert (tmp_path / "some" / "metrics.json").is_file()  # the results are written all the same
    assert json.loads((tmp_path / "some" / "metrics.json").read_text())["batch/videos_failed"] == 1
    _finish(_start(tmp_path / "module", folder, STAND_IN, module=True), FAILED_VIDEOS)  # the batch name: the same
    empty = tmp_path / "empty"
    empty.mkdir()
    _, err = _run_py(tmp_path / "none", empty, STAND_IN, status=2)
    assert err.strip().splitlines() == [
        f"error: {empty}: no file matches dataset.glob='**/*.mp4'; check the pattern (e.g. '**/*.mp4' recurses)"
    ]


class Float32Predictor(BrightnessPredictor):
    """Scores in float32, as ResMem's: a version's score must be their float32 mean, as score_video gives."""

    def predict(self, inputs) -> np.ndarray:
        return (super().predict(inputs) * np.linspace(0.31, 1.7, len(inputs))).astype(np.float32)  # unequal: rounding shows


def test_a_versions_score_is_the_predictors_score_video_of_the_scored_frames(make_config, tmp_path: Path) -> None:
    from data.videos import read_frames
    from models.memorability.pipeline import evenly_spaced

    path = _write(tmp_path / "clip.mp4", frames=25)
    run = _run(
        make_config, path, tmp_path / "run", f"model.predictor._target_={__name__}.Float32Predictor", "task.score_frames=4"
    )
    frames, _, _ = read_frames(path)
    expected = Float32Predictor().score_video([frames[j] for j in evenly_spaced(25, 4)])
    assert float(_rows(run / "artifacts" / "scores.csv")[0]["original"]) == expected  # exactly: the same float32 mean
