"""Video files through OpenCV: probe, read sampled frames, write a clip, contact sheets.

Every failure a user can cause (missing, empty, truncated or non-video file; a clip shorter than the
sampling window; a container without a usable frame rate) stops with one line naming the file, when
the file is read rather than when a result is written. Writes go through a temporary file in the
target folder and are renamed only after the last frame was written and the result re-opened, so an
interrupted or failed write never leaves a video that looks complete.

A clip thinned to fewer frames has two rates of its own: `step_fps` (the time between kept frames, for
anything limited per frame) and `playback_fps` (the rate that plays the kept frames in the source's
duration, for writing them; the source's rate would play them in fast-forward).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from common.errors import UserError
from common.files import atomic_write_with, require_file

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


def list_videos(path: str | Path) -> list[Path]:
    """`path` itself when it is a file, else the video files in the folder (sorted by name)."""
    path = Path(path).expanduser()
    if path.is_dir():
        videos = sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
        if not videos:
            raise UserError(f"{path}: no video files ({', '.join(VIDEO_SUFFIXES)}) in this folder")
        return videos
    return [require_file(path, HOW_TO_GET)]


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


def read_frames(
    path: str | Path,
    num_frames: int | None = None,
    stride: int = 1,
    min_frames: int = 1,
    max_side: int | None = None,
    fps: float | None = None,
    fps_key: str = "task.fps_override",
) -> tuple[list[np.ndarray], list[int], VideoInfo]:
    """Sampled frames (BGR uint8), their indices and the clip's info.

    `min_frames` is the sampling window a caller needs (e.g. a smoothing window): a shorter clip is an
    error, not a silently degenerate result. `max_side` downsizes frames whose longer side exceeds it.
    `fps` replaces the container's frame rate (the config key `fps_key` sets it); without it, a
    container reporting none (0, negative, NaN) stops here, before anything is computed from it.
    The info returned has that rate and the number of frames actually decoded as `frame_count`.
    """
    info = probe_video(path)
    if fps is not None and not usable_fps(float(fps)):
        raise UserError(f"{fps_key}={fps} must be a positive number of frames per second (or null: the container's)")
    rate = info.fps if fps is None else float(fps)
    if not usable_fps(rate):
        raise UserError(
            f"{info.path}: its container reports fps={info.fps}, not a usable frame rate; re-mux or re-encode the "
            f"video with its real frame rate, or set {fps_key}=<frames per second>"
        )
    frames: list[np.ndarray] = []
    decoded = 0
    wanted: set[int] | None = None
    if info.frame_count > 0:
        wanted = set(sample_indices(info.frame_count, num_frames, stride))
    kept: list[int] = []
    for index, frame in iter_frames(path):
        decoded = index + 1
        if (wanted is None and index % stride == 0) or (wanted is not None and index in wanted):
            frames.append(_fit(frame, max_side))
            kept.append(index)
    if wanted is None and num_frames is not None and len(kept) > num_frames:  # container without a frame count
        picks = sample_indices(len(kept), num_frames)
        frames, kept = [frames[i] for i in picks], [kept[i] for i in picks]
    if decoded < min_frames:
        raise UserError(
            f"{info.path}: {decoded} frames, shorter than the sampling window of {min_frames} frames; "
            "use a longer clip or a smaller window"
        )
    return frames, kept, replace(info, fps=rate, frame_count=decoded)


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


def write_video(path: str | Path, frames: Sequence[np.ndarray], fps: float, fourcc: str = "mp4v") -> Path:
    """Write BGR frames (all the same size) at `fps`; the file appears only once complete and re-readable."""
    if not frames:
        raise UserError(f"{path}: no frames to write")
    if not fps or fps <= 0:
        raise UserError(f"{path}: fps={fps} must be positive (take it from the source clip)")
    height, width = frames[0].shape[:2]
    for i, frame in enumerate(frames):
        if frame.shape[:2] != (height, width) or frame.dtype != np.uint8:
            raise ValueError(f"frame {i} is {frame.shape} {frame.dtype}; every frame must be {height}x{width} uint8")

    def write(tmp: Path) -> None:
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*fourcc), float(fps), (width, height))
        if not writer.isOpened():
            raise UserError(
                f"{path}: OpenCV cannot write {Path(path).suffix} with codec {fourcc}; use .mp4 (mp4v) or .avi (MJPG)"
            )
        try:
            for frame in frames:
                writer.write(frame if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
        finally:
            writer.release()
        written = probe_video(tmp).frame_count
        if written != len(frames):
            raise UserError(f"{path}: the writer produced {written} frames instead of {len(frames)}")

    return atomic_write_with(path, write)


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
