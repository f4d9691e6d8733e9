"""Video I/O: written clips re-read with the right frame count and fps; bad files stop with one clear line
and a failed write leaves nothing behind; folders are listed by glob; clips stream in passes that hold one
frame; writers fall back to a codec the build has and say which; audio is kept when ffmpeg is there."""

from __future__ import annotations

import shutil
import subprocess
import weakref
from pathlib import Path

import cv2
import numpy as np
import pytest

import data.videos
from common.errors import UserError
from data.videos import (
    VideoClip,
    VideoSink,
    codec_writes,
    contact_sheet,
    first_writable_codec,
    has_audio,
    list_videos,
    mux_audio,
    png_bytes,
    probe_video,
    read_frames,
    sample_indices,
    write_video,
)


def _clip(n: int = 20, width: int = 64, height: int = 48) -> list[np.ndarray]:
    return [np.full((height, width, 3), 10 * i % 256, np.uint8) for i in range(n)]


def test_writer_output_rereads_with_the_right_frame_count_fps_and_size(tmp_path: Path) -> None:
    path = write_video(tmp_path / "out.mp4", _clip(20), fps=12.5)
    info = probe_video(path)
    assert (info.frame_count, info.width, info.height) == (20, 64, 48)
    assert info.fps == pytest.approx(12.5, rel=1e-3)
    frames, indices, _ = read_frames(path)
    assert len(frames) == 20 and indices == list(range(20))
    assert abs(float(frames[10].mean()) - 100) < 8  # lossy codec, same content
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]  # no temporary file left


def test_sampling_is_even_with_stride_and_bounded(tmp_path: Path) -> None:
    assert sample_indices(10, 3) == [0, 4, 9]
    assert sample_indices(10, None, stride=3) == [0, 3, 6, 9]
    path = write_video(tmp_path / "s.mp4", _clip(30), fps=10)
    frames, indices, _ = read_frames(path, num_frames=4, stride=2)
    assert indices == [0, 10, 18, 28] and len(frames) == 4
    small, _, _ = read_frames(path, num_frames=1, max_side=32)
    assert small[0].shape == (24, 32, 3)


def test_a_clip_shorter_than_the_sampling_window_is_an_error(tmp_path: Path) -> None:
    path = write_video(tmp_path / "short.mp4", _clip(5), fps=10)
    with pytest.raises(UserError, match="shorter than the sampling window of 9 frames"):
        read_frames(path, min_frames=9)


def test_missing_empty_non_video_and_truncated_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="missing data file .*absent.mp4"):
        read_frames(tmp_path / "absent.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(UserError, match="empty file"):
        read_frames(tmp_path / "empty.mp4")
    (tmp_path / "text.mp4").write_text("this is not a video\n" * 50)
    with pytest.raises(UserError, match="not a readable video|no frame could be decoded"):
        read_frames(tmp_path / "text.mp4")
    good = write_video(
        tmp_path / "good.avi",
        [np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8) for i in range(40)],
        fps=10,
        fourcc="MJPG",
    )
    data = good.read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"truncated video: decoded \d+ of the 40 frames"):
        read_frames(tmp_path / "cut.avi")
    mp4 = write_video(tmp_path / "good.mp4", _clip(20), fps=10).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(mp4[: len(mp4) // 2])  # the index (moov) is at the end: cannot open
    with pytest.raises(UserError, match="cut.mp4: not a readable video"):
        read_frames(tmp_path / "cut.mp4")


def test_a_failed_write_leaves_no_file(tmp_path: Path) -> None:
    frames = _clip(5) + [np.zeros((10, 10, 3), np.uint8)]  # the last frame has another size
    with pytest.raises(ValueError, match="every frame must be"):
        write_video(tmp_path / "bad.mp4", frames, fps=10)
    with pytest.raises(UserError, match="fps"):
        write_video(tmp_path / "bad.mp4", _clip(3), fps=0)

    def broken_frames():
        yield from _clip(3)
        raise RuntimeError("decoder died")

    class Frames(list):
        def __iter__(self):
            return broken_frames()

    with pytest.raises(RuntimeError, match="decoder died"):
        write_video(tmp_path / "bad.mp4", Frames(_clip(3)), fps=10)
    assert list(tmp_path.iterdir()) == []


def test_list_videos_and_contact_sheet(tmp_path: Path) -> None:
    write_video(tmp_path / "b.mp4", _clip(3), fps=5)
    write_video(tmp_path / "a.avi", _clip(3), fps=5, fourcc="MJPG")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in list_videos(tmp_path)] == ["a.avi", "b.mp4"]
    with pytest.raises(UserError, match="no video files"):
        list_videos(tmp_path / "sub") if (tmp_path / "sub").mkdir() is None else None
    sheet = contact_sheet([("original", _clip(3, 64, 48)), ("crop", _clip(3, 32, 24))], tile_height=40)
    assert sheet.shape[0] == 2 * 44 and sheet.dtype == np.uint8
    assert png_bytes(sheet)[:4] == b"\x89PNG"


def test_real_clips_probe_as_documented(data_dir: Path) -> None:
    bikes = probe_video(data_dir / "video" / "clips" / "bikes.mp4")
    assert (bikes.frame_count, bikes.width, bikes.height, bikes.fps) == (250, 640, 272, 25.0)
    frames, indices, _ = read_frames(data_dir / "video" / "clips" / "carphone_pristine.mp4", num_frames=5)
    assert len(frames) == 5 and indices[-1] == 119 and frames[0].shape == (144, 176, 3)


def test_a_glob_lists_a_folder_recursively_by_relative_path(tmp_path: Path) -> None:
    for name in ("b.mp4", "a/z.mp4", "a/b/c.mp4", "a/notes.txt", "top.avi"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "a" / "dir.mp4").mkdir()  # a folder that matches is not a file
    relative = lambda paths: [p.relative_to(tmp_path).as_posix() for p in paths]  # noqa: E731
    assert relative(list_videos(tmp_path, "**/*.mp4")) == ["a/b/c.mp4", "a/z.mp4", "b.mp4"]
    assert relative(list_videos(tmp_path, "*.mp4")) == ["b.mp4"]
    assert relative(list_videos(tmp_path, "**/*")) == [
        "a/b/c.mp4",
        "a/notes.txt",
        "a/z.mp4",
        "b.mp4",
        "top.avi",
    ]  # stray files too
    assert relative(list_videos(tmp_path)) == ["b.mp4", "top.avi"]  # no glob: the videos directly in the folder
    with pytest.raises(UserError, match=r"no file matches dataset.glob='\*\*/\*.mkv'"):
        list_videos(tmp_path, "**/*.mkv")
    assert list_videos(tmp_path / "b.mp4", "**/*.mkv") == [tmp_path / "b.mp4"]  # a file is itself, whatever the glob


def test_a_clip_streams_the_same_frames_on_every_pass_one_at_a_time(tmp_path: Path) -> None:
    path = write_video(tmp_path / "s.mp4", _clip(30), fps=10)
    clip = VideoClip(path, num_frames=4, stride=2)
    assert clip.planned == 4 and clip.indices is None
    alive: list[weakref.ref] = []
    first = []
    for index, frame in clip.frames():
        alive.append(weakref.ref(frame))
        first.append((index, float(frame.mean())))
        del frame
        assert sum(ref() is not None for ref in alive) <= 2  # the one just read (and the decoder's last)
    assert clip.indices == [0, 10, 18, 28] and clip.info.frame_count == 30
    assert [(i, float(f.mean())) for i, f in clip.frames()] == first  # pass 2: the same frames
    frames, indices, _ = read_frames(path, num_frames=4, stride=2)
    assert indices == clip.indices and [float(f.mean()) for f in frames] == [m for _, m in first]


def test_a_clip_without_a_frame_count_is_counted_before_it_is_thinned(tmp_path: Path, monkeypatch) -> None:
    path = write_video(tmp_path / "s.mp4", _clip(30), fps=10)
    opencv_capture = cv2.VideoCapture

    class Uncounted:
        def __init__(self, *args: object) -> None:
            self.capture = opencv_capture(*args)

        def get(self, prop: int) -> float:
            return 0.0 if prop == cv2.CAP_PROP_FRAME_COUNT else self.capture.get(prop)

        def __getattr__(self, name: str) -> object:
            return getattr(self.capture, name)

    monkeypatch.setattr(data.videos.cv2, "VideoCapture", Uncounted)
    clip = VideoClip(path, num_frames=4)
    assert clip.planned == 4  # counted by a pass of its own, not by keeping every frame
    assert [i for i, _ in clip.frames()] == sample_indices(30, 4) == [0, 10, 19, 29]
    assert VideoClip(path).planned is None and len(list(VideoClip(path).frames())) == 30


def test_a_second_pass_that_decodes_other_frames_is_an_error(tmp_path: Path, monkeypatch) -> None:
    path = write_video(tmp_path / "s.mp4", _clip(10), fps=10)
    clip = VideoClip(path)
    assert len(list(clip.frames())) == 10
    real = data.videos.iter_frames
    monkeypatch.setattr(data.videos, "iter_frames", lambda p: (pair for pair in real(p) if pair[0] < 7))
    with pytest.raises(RuntimeError, match="second decoding pass gave 7 frames, the first 10"):
        list(clip.frames())


def test_the_writer_takes_the_first_codec_this_build_writes_and_says_which(tmp_path: Path) -> None:
    assert codec_writes("mp4v") and not codec_writes("zzzz")
    assert first_writable_codec(["zzzz", "mp4v"]) == "mp4v"
    with pytest.raises(UserError, match="cannot write .mp4 with any of the codecs zzzz, qqqq"):
        first_writable_codec(["zzzz", "qqqq"])
    with pytest.raises(UserError, match="four-character code"):
        first_writable_codec(["h264x"])
    target = tmp_path / "out" / "crop.mp4"
    with VideoSink(target, (64, 48), 12.5, ("zzzz", "mp4v")) as sink:
        for frame in _clip(9):
            sink.write(frame)
            assert not target.exists()  # only a temporary file while writing
    assert sink.codec == "mp4v" and sink.frames == 9
    info = probe_video(target)
    assert (info.frame_count, info.width, info.height) == (9, 64, 48) and info.fps == pytest.approx(12.5)
    assert [p.name for p in target.parent.iterdir()] == ["crop.mp4"]


def test_audio_is_dropped_and_said_so_without_ffmpeg(tmp_path: Path, monkeypatch) -> None:
    video = write_video(tmp_path / "crop.mp4", _clip(5), fps=10)
    before = video.read_bytes()
    monkeypatch.setattr(data.videos.shutil, "which", lambda name: None)
    assert mux_audio(video, video) == "dropped: ffmpeg not on PATH"
    assert video.read_bytes() == before


@pytest.mark.skipif(
    shutil.which("ffmpeg") is None, reason="ffmpeg is not on PATH (Debian package ffmpeg): audio muxing untestable"
)
def test_the_sources_audio_is_copied_into_a_crop(tmp_path: Path) -> None:
    source = tmp_path / "talk.mp4"
    lavfi = ["-f", "lavfi", "-i", "testsrc=size=64x48:rate=10:duration=2", "-f", "lavfi", "-i", "sine=frequency=440:duration=2"]
    subprocess.run(["ffmpeg", "-v", "error", "-y", *lavfi, "-c:v", "mpeg4", "-c:a", "aac", "-shortest", str(source)], check=True)
    assert has_audio(source)
    crop = write_video(tmp_path / "crop.mp4", _clip(20, 32, 24), fps=10)
    assert not has_audio(crop)
    assert mux_audio(crop, source) == "kept"
    assert has_audio(crop) and probe_video(crop).frame_count == 20  # the video stream is copied as it was
    silent = write_video(tmp_path / "silent.mp4", _clip(20), fps=10)
    other = write_video(tmp_path / "other.mp4", _clip(20, 32, 24), fps=10)
    before = other.read_bytes()
    assert mux_audio(other, silent) == "none" and other.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crop.mp4", "other.mp4", "silent.mp4", "talk.mp4"]
