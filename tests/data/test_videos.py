"""Video I/O: written clips re-read with the right frame count and fps; bad files stop with one clear line
and a failed write leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.errors import UserError
from data.videos import contact_sheet, list_videos, png_bytes, probe_video, read_frames, sample_indices, write_video


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
