"""Video files through OpenCV: list a folder, probe, stream sampled frames, write a clip, contact sheets.

Every failure a user can cause (missing, empty, truncated or non-video file; a clip shorter than the
sampling window; a container without a usable frame rate) stops with one line naming the file, when
the file is read rather than when a result is written. Writes go through a temporary file in the
target folder and are renamed only after the last frame was written and the result re-opened, so an
interrupted or failed write never leaves a video that looks complete.

Long videos do not fit in memory as frames: `VideoClip` decodes a clip's sampled frames again on every
pass (one frame held at a time) and `VideoSink` writes frame by frame. Browsers play H.264, which many
OpenCV builds cannot write: `VideoSink` takes the first codec of a list that this build writes and says
which; `mux_audio` copies the source's audio into a written clip when `ffmpeg` is on PATH.

A clip thinned to fewer frames has two rates of its own: `step_fps` (the time between kept frames, for
anything limited per frame) and `playback_fps` (the rate that plays the kept frames in the source's
duration, for writing them; the source's rate would play them in fast-forward).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from types import TracebackType

import cv2
import numpy as np

from common.errors import UserError
from common.files import require_file

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
HOW_TO_GET = "give a video file (or a folder of videos) by path, e.g. <data root>/video/clips/bikes.mp4"
TRUNCATION_TOLERANCE = 1  # frames: some containers count one frame more than they decode


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a clip."""

    path: Path
    fps: float
    frame_count: int
    width: int
    height: int


def list_videos(path: str | Path, pattern: str | None = None, key: str = "dataset.glob") -> list[Path]:
    """`path` itself when it is a file; in a folder, the files matching the glob `pattern` relative to it
    (`**/*.mp4` recurses; every match is listed, video or not, so a stray file is reported rather than
    skipped), or without a pattern the video files directly in it; sorted by relative path. A folder
    without any is an error naming `key`."""
    path = Path(path).expanduser()
    if not path.is_dir():
        return [require_file(path, HOW_TO_GET)]
    if pattern:
        found = sorted((p for p in path.glob(pattern) if p.is_file()), key=lambda p: p.relative_to(path).as_posix())
        if not found:
            raise UserError(f"{path}: no file matches {key}={pattern!r}; check the pattern (e.g. '**/*.mp4' recurses)")
        return found
    videos = sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    if not videos:
        raise UserError(
            f"{path}: no video files ({', '.join(VIDEO_SUFFIXES)}) in this folder; set {key}='**/*.mp4' to search subfolders"
        )
    return videos


def _open(path: str | Path) -> tuple[cv2.VideoCapture, VideoInfo]:
    path = require_file(path, HOW_TO_GET)
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file (0 bytes), not a video; re-copy or re-encode it")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise UserError(f"{path}: not a readable video (OpenCV cannot open it); check the file or re-encode it to H.264 MP4")
    info = VideoInfo(
        path,
        float(capture.get(cv2.CAP_PROP_FPS) or 0.0),
        int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0),
        int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
        int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
    )
    if info.width <= 0 or info.height <= 0:
        capture.release()
        raise UserError(f"{path}: not a readable video (no frame size); check the file or re-encode it")
    return capture, info


def probe_video(path: str | Path) -> VideoInfo:
    """Container metadata, after checking that the file opens as a video."""
    capture, info = _open(path)
    capture.release()
    return info


def iter_frames(path: str | Path) -> Iterator[tuple[int, np.ndarray]]:
    """Every decoded frame (BGR uint8) with its index, sequentially (seeking is unreliable in many codecs).

    A file that decodes no frame, or clearly fewer than its container declares, is an error: a
    truncated download must not pass as a short clip.
    """
    capture, info = _open(path)
    decoded = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            yield decoded, frame
            decoded += 1
    finally:
        capture.release()
    if decoded == 0:
        raise UserError(f"{info.path}: no frame could be decoded (truncated or not a video); re-copy or re-encode it")
    if info.frame_count > 0 and decoded + TRUNCATION_TOLERANCE < info.frame_count:
        raise UserError(
            f"{info.path}: truncated video: decoded {decoded} of the {info.frame_count} frames its container "
            "declares; re-copy or re-encode it"
        )


def sample_indices(frame_count: int, num_frames: int | None, stride: int = 1) -> list[int]:
    """Indices of every `stride`-th frame, thinned evenly to at most `num_frames` (None = all)."""
    if stride < 1:
        raise UserError(f"stride={stride} must be >= 1")
    indices = list(range(0, frame_count, stride))
    if num_frames is not None and len(indices) > num_frames:
        picks = np.linspace(0, len(indices) - 1, int(num_frames)).round().astype(int)
        indices = [indices[i] for i in picks]
    return indices


def usable_fps(fps: float | None) -> bool:
    """A frame rate timings can be computed from: finite and positive."""
    return fps is not None and math.isfinite(fps) and fps > 0


def count_frames(path: str | Path) -> int:
    """Frames a file decodes, for containers that declare no count (grabbed, not converted to BGR)."""
    capture, _ = _open(path)
    count = 0
    try:
        while capture.grab():
            count += 1
    finally:
        capture.release()
    return count


class VideoClip:
    """One video's sampled frames, decoded again on every pass of `frames()` (seeking is unreliable), so a
    caller holds one frame at a time however long the clip: a pipeline that needs the whole clip first
    (boxes smoothed over time) reads it twice instead of keeping it.

    The checks of `read_frames` apply: the rate is known before a frame is decoded, and the first full
    pass checks truncation and `min_frames`. The frames kept are fixed before decoding (from the
    container's frame count, or a counting pass when it declares none); after the first full pass
    `indices` are those actually decoded (a container may count one frame more than it holds) and
    `info.frame_count` the frames decoded; a later pass that decodes other frames is an error.
    """

    def __init__(
        self,
        path: str | Path,
        num_frames: int | None = None,
        stride: int = 1,
        min_frames: int = 1,
        max_side: int | None = None,
        fps: float | None = None,
        fps_key: str = "task.fps_override",
    ) -> None:
        info = probe_video(path)
        if fps is not None and not usable_fps(float(fps)):
            raise UserError(f"{fps_key}={fps} must be a positive number of frames per second (or null: the container's)")
        rate = info.fps if fps is None else float(fps)
        if not usable_fps(rate):
            raise UserError(
                f"{info.path}: its container reports fps={info.fps}, not a usable frame rate; re-mux or re-encode the "
                f"video with its real frame rate, or set {fps_key}=<frames per second>"
            )
        self.info = replace(info, fps=rate)
        if stride < 1:
            raise UserError(f"stride={stride} must be >= 1")
        self.path, self.stride, self.min_frames, self.max_side = info.path, int(stride), int(min_frames), max_side
        total = info.frame_count if info.frame_count > 0 else (count_frames(path) if num_frames is not None else None)
        self._wanted = None if total is None else set(sample_indices(total, num_frames, stride))
        self.indices: list[int] | None = None  # the kept frames' indices, once a pass has decoded the clip

    @property
    def planned(self) -> int | None:
        """Frames a pass will keep, as far as known before decoding (None: every `stride`-th of an uncounted clip)."""
        return None if self._wanted is None else len(self._wanted)

    def frames(self) -> Iterator[tuple[int, np.ndarray]]:
        """(frame index, BGR uint8 frame) of every kept frame, decoded afresh."""
        kept: list[int] = []
        decoded = 0
        for index, frame in iter_frames(self.path):
            decoded = index + 1
            if (index in self._wanted) if self._wanted is not None else index % self.stride == 0:
                if self.indices is not None and (len(kept) >= len(self.indices) or self.indices[len(kept)] != index):
                    raise RuntimeError(f"{self.path}: a second decoding pass gave other frames than the first")
                kept.append(index)
                yield index, _fit(frame, self.max_side)
        if decoded < self.min_frames:
            raise UserError(
                f"{self.path}: {decoded} frames, shorter than the sampling window of {self.min_frames} frames; "
                "use a longer clip or a smaller window"
            )
        if self.indices is None:
            self.indices, self.info = kept, replace(self.info, frame_count=decoded)
        elif kept != self.indices:
            raise RuntimeError(f"{self.path}: a second decoding pass gave {len(kept)} frames, the first {len(self.indices)}")


def read_frames(
    path: str | Path,
    num_frames: int | None = None,
    stride: int = 1,
    min_frames: int = 1,
    max_side: int | None = None,
    fps: float | None = None,
    fps_key: str = "task.fps_override",
) -> tuple[list[np.ndarray], list[int], VideoInfo]:
    """Sampled frames (BGR uint8), their indices and the clip's info, all in memory (short clips;
    `VideoClip` streams).

    `min_frames` is the sampling window a caller needs (e.g. a smoothing window): a shorter clip is an
    error, not a silently degenerate result. `max_side` downsizes frames whose longer side exceeds it.
    `fps` replaces the container's frame rate (the config key `fps_key` sets it); without it, a
    container reporting none (0, negative, NaN) stops here, before anything is computed from it.
    The info returned has that rate and the number of frames actually decoded as `frame_count`.
    """
    clip = VideoClip(path, num_frames, stride, min_frames, max_side, fps, fps_key)
    pairs = list(clip.frames())
    return [frame for _, frame in pairs], [index for index, _ in pairs], clip.info


def step_fps(indices: Sequence[int], fps: float) -> float:
    """Frames per second between the kept frames `indices` of a clip at `fps`: the source rate over their
    mean index gap (the source rate when every frame is kept). Per-frame limits of anything that moves
    over time must be converted with this rate, not the source's."""
    if len(indices) < 2 or indices[-1] == indices[0]:
        return float(fps)
    return float(fps) * (len(indices) - 1) / (indices[-1] - indices[0])


def playback_fps(info: VideoInfo, kept: int) -> float:
    """The rate at which `kept` frames of the clip `info` (frame_count = frames decoded) last as long as the
    whole clip: written at this rate, a thinned clip plays in real time, not fast-forward."""
    if info.frame_count <= 0 or kept <= 0:
        return float(info.fps)
    return float(info.fps) * min(kept, info.frame_count) / info.frame_count


def _fit(frame: np.ndarray, max_side: int | None) -> np.ndarray:
    height, width = frame.shape[:2]
    if max_side is None or max(height, width) <= max_side:
        return frame
    scale = max_side / max(height, width)
    return cv2.resize(frame, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)


CODEC_NAMES = {"avc1": "H.264", "h264": "H.264", "mp4v": "MPEG-4 Part 2", "mjpg": "Motion JPEG", "vp09": "VP9", "vp80": "VP8"}


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence what OpenCV and its FFmpeg print on file descriptor 2 while a codec is tried: a build without
    an H.264 encoder prints several error lines for each try, which say nothing the caller does not log."""
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@cache
def codec_writes(fourcc: str, suffix: str = ".mp4") -> bool:
    """Whether this OpenCV build writes `fourcc` into a `suffix` file that reads back (tried once per process
    on a tiny clip in a temporary folder)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"probe{suffix}"
        with _quiet_native_stderr():
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10.0, (64, 48))
            if not writer.isOpened():
                writer.release()
                return False
            for level in (0, 128):
                writer.write(np.full((48, 64, 3), level, np.uint8))
            writer.release()
            capture = cv2.VideoCapture(str(path))
            ok = capture.isOpened() and capture.read()[0]
            capture.release()
        return bool(ok)


def first_writable_codec(codecs: Sequence[str], suffix: str = ".mp4") -> str:
    """The first of `codecs` (fourcc strings, preferred first) this build writes into `suffix` files."""
    for fourcc in codecs:
        if len(fourcc) != 4:
            raise UserError(f"video codec {fourcc!r} must be a four-character code such as avc1 or mp4v")
        if codec_writes(fourcc, suffix):
            return fourcc
    raise UserError(f"OpenCV cannot write {suffix} with any of the codecs {', '.join(codecs)}; add mp4v, or use .avi with MJPG")


def codec_name(fourcc: str) -> str:
    """`avc1 (H.264)`: the fourcc and what it is, for log lines."""
    name = CODEC_NAMES.get(fourcc.lower())
    return f"{fourcc} ({name})" if name else fourcc


class VideoSink:
    """A video written frame by frame (nothing is held), at `path` only once complete and re-readable.

    `codecs` are tried in order (e.g. H.264 first, which browsers play, then mp4v, which every OpenCV build
    writes); `codec` is the one used. Used as a context manager, an exception inside leaves no file.
    """

    def __init__(self, path: str | Path, size: tuple[int, int], fps: float, codecs: Sequence[str] = ("mp4v",)) -> None:
        self.path = Path(path)
        if not fps or not usable_fps(float(fps)):
            raise UserError(f"{path}: fps={fps} must be positive (take it from the source clip)")
        self.size, self.fps, self.frames = (int(size[0]), int(size[1])), float(fps), 0
        self.codec = first_writable_codec(list(codecs), self.path.suffix)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=f".tmp{self.path.suffix}", dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(name)
        self._writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*self.codec), self.fps, self.size)
        if not self._writer.isOpened():
            self.abort()
            raise UserError(
                f"{path}: OpenCV cannot write {self.path.suffix} with codec {self.codec}; use .mp4 (mp4v) or .avi (MJPG)"
            )

    def write(self, frame: np.ndarray) -> None:
        width, height = self.size
        if frame.shape[:2] != (height, width) or frame.dtype != np.uint8:
            raise ValueError(f"frame {self.frames} is {frame.shape} {frame.dtype}; every frame must be {height}x{width} uint8")
        self._writer.write(frame if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
        self.frames += 1

    def close(self) -> Path:
        """Finish the file, check that it reads back with every frame, and move it into place."""
        try:
            self._writer.release()
            if self.frames == 0:
                raise UserError(f"{self.path}: no frames to write")
            written = probe_video(self.tmp).frame_count
            if written != self.frames:
                raise UserError(f"{self.path}: the writer produced {written} frames instead of {self.frames}")
            os.replace(self.tmp, self.path)
        finally:
            self.tmp.unlink(missing_ok=True)
        return self.path

    def abort(self) -> None:
        """Drop the unfinished file."""
        self._writer.release()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoSink:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: float, fourcc: str = "mp4v") -> Path:
    """Write BGR frames (all the same size) at `fps`; the file appears only once complete and re-readable."""
    iterator = iter(frames)
    first = next(iterator, None)
    if first is None:
        raise UserError(f"{path}: no frames to write")
    with VideoSink(path, (first.shape[1], first.shape[0]), fps, (fourcc,)) as sink:
        sink.write(first)
        for frame in iterator:
            sink.write(frame)
    return Path(path)


def has_audio(path: str | Path, ffmpeg: str = "ffmpeg") -> bool:
    """Whether `ffmpeg` sees an audio stream in the file (it lists the streams of an input given no output)."""
    listing = subprocess.run([ffmpeg, "-hide_banner", "-nostdin", "-i", str(path)], capture_output=True, text=True, timeout=120)
    return any(" Audio: " in line for line in listing.stderr.splitlines() if "Stream #" in line)


def mux_audio(video: str | Path, source: str | Path, source_has_audio: bool | None = None) -> str:
    """Copy the source's audio into `video` (replaced in place, streams copied, not re-encoded), so a crop
    keeps its sound. OpenCV writes no audio; `ffmpeg` must be on PATH. Returns what happened: `kept`,
    `none` (the source has no audio: `source_has_audio`, asked of ffmpeg when None), or `dropped: <why>`
    (no ffmpeg, or it failed: the silent video stays)."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        return "dropped: ffmpeg not on PATH"
    try:
        if not (has_audio(source, ffmpeg) if source_has_audio is None else source_has_audio):
            return "none"
        video = Path(video)
        fd, name = tempfile.mkstemp(prefix=f".{video.stem}.", suffix=f".audio{video.suffix}", dir=video.parent)
        os.close(fd)
        out = Path(name)
        try:
            command = [ffmpeg, "-nostdin", "-v", "error", "-y", "-i", str(video), "-i", str(source)]
            done = subprocess.run(
                [*command, "-map", "0:v", "-map", "1:a?", "-c", "copy", str(out)], capture_output=True, text=True, timeout=600
            )
            if done.returncode != 0:
                return "dropped: ffmpeg failed (" + (done.stderr.strip().splitlines() or ["no message"])[-1][:200] + ")"
            os.replace(out, video)
        finally:
            out.unlink(missing_ok=True)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"dropped: ffmpeg failed ({exc.__class__.__name__})"
    return "kept"


def contact_sheet(rows: Sequence[tuple[str, Sequence[np.ndarray]]], tile_height: int = 120) -> np.ndarray:
    """One image: a row per version of a clip (original, each crop), tiles resized to `tile_height`,
    each row labelled on its first tile. Returns BGR uint8 (save with `cv2.imencode('.png', ...)`)."""
    if not rows:
        raise ValueError("contact_sheet needs at least one row")
    rendered = []
    for label, frames in rows:
        tiles = [
            cv2.resize(f, (max(1, round(f.shape[1] * tile_height / f.shape[0])), tile_height), interpolation=cv2.INTER_AREA)
            for f in frames
        ]
        row = np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0))) for t in tiles], axis=1)
        cv2.putText(row, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(row, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        rendered.append(row)
    width = max(r.shape[1] for r in rendered)
    return np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rendered], axis=0)


def png_bytes(image: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buffer.tobytes()
