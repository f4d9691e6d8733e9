"""One video through the crop pipeline in two decoding passes, so no clip is ever held in memory.

Pass 1 decodes the kept frames and keeps only their saliency maps (small: the working resolution),
from which every crop's boxes are computed (dynamic crops smooth them over the whole clip, so no frame
can be cut before the last one was seen). Pass 2 decodes the same frames again and, frame by frame,
cuts every crop, writes it to that crop's video and keeps only what is scored or shown: the scored
frames of the original, of each crop and of each control, and the overlay tiles. A crop's frames are
never collected. Scores are those of the in-memory pipeline: the same frames, boxes and predictor calls.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from common.errors import UserError
from data.videos import (
    VideoClip,
    VideoSink,
    codec_name,
    contact_sheet,
    first_writable_codec,
    has_audio,
    mux_audio,
    playback_fps,
    png_bytes,
    step_fps,
    usable_fps,
)
from experiments.core.run_context import RunContext
from experiments.tasks.memorability.views import overlay_sheet, saliency_overlay, timeline_figure
from models.memorability.controls import ControlSpec, anchored_boxes
from models.memorability.cropping import apply_crop
from models.memorability.pipeline import evenly_spaced

log = logging.getLogger(__name__)
SCORE_INFO = ["path", "clip", "frames", "fps", "width", "height"]
TIMING_INFO = ["path", "clip", "frames", "decode_s", "saliency_s", "write_s", "score_s"]


def score_columns(croppers: list[str], spec: ControlSpec) -> list[str]:
    """scores.csv: the video, then the original's score, each crop's and each of its controls' (one column
    per control: `crop_<c>_centre`, `crop_<c>_random_<k>`)."""
    labels = [anchor.label for anchor in spec.anchors("")]
    return [*SCORE_INFO, "original", *(f"crop_{c}{suffix}" for c in croppers for suffix in ["", *(f"_{a}" for a in labels)])]


def timing_columns(croppers: list[str]) -> list[str]:
    return [*TIMING_INFO, *(f"crop_{c}_s" for c in croppers)]


def check_window(path: Path, croppers: dict[str, Any], kept: int, fps: float) -> None:
    """A moving-average crop needs its whole window (in seconds, so in frames at the kept frames' rate):
    a shorter clip is an error, not a silently weaker smoothing."""
    for name, cropper in croppers.items():
        needed = int(cropper.window_frames(fps))
        if kept < needed:
            raise UserError(
                f"{path}: {kept} frames at {fps:.3g} fps, shorter than the {needed}-frame moving-average window of "
                f"crop {name}; use a longer clip, more task.num_frames or a smaller window_seconds"
            )


@dataclass(frozen=True)
class ViewSpec:
    """`task.views`: the saliency-overlay sheet's frame count and tile height (the timeline has no setting)."""

    frames: int = 6
    tile_height: int = 160

    @classmethod
    def from_config(cls, node: Any) -> ViewSpec | None:
        if node is None:
            return None
        frames, height = node.get("frames", cls.frames), node.get("tile_height", cls.tile_height)
        for key, value, low in (("frames", frames, 1), ("tile_height", height, 16)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UserError(f"task.views.{key}={value!r} must be an integer >= {low} (or task.views=null: no views)")
        return cls(frames, height)


@dataclass
class VideoJob:
    """What every video of a run is put through (built once, checked before the first video)."""

    saliency: Any
    croppers: dict[str, Any]
    predictor: Any
    spec: ControlSpec
    num_frames: int | None = None
    min_frames: int = 2
    fps_override: float | None = None
    score_frames: int = 3
    write_videos: bool = False
    codecs: tuple[str, ...] = ("mp4v",)
    audio: bool = True
    views: ViewSpec | None = None
    codec: str = field(init=False, default="")

    @classmethod
    def from_config(cls, cfg: DictConfig, saliency: Any, croppers: dict[str, Any], predictor: Any, spec: ControlSpec) -> VideoJob:
        task = cfg.task
        fps = task.get("fps_override")
        if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not usable_fps(float(fps))):
            raise UserError(f"task.fps_override={fps} must be a positive number of frames per second (or null: the container's)")
        job = cls(
            saliency,
            croppers,
            predictor,
            spec,
            num_frames=task.num_frames,
            min_frames=int(task.min_frames),
            fps_override=fps,
            score_frames=int(task.score_frames),
            write_videos=bool(task.write_videos),
            codecs=tuple(str(c) for c in task.get("video_codecs") or ("mp4v",)),
            audio=bool(task.get("audio", True)),
            views=ViewSpec.from_config(task.get("views")),
        )
        return job

    def choose_codec(self) -> None:
        """The first of `codecs` this OpenCV build writes (said in the log, with audio's fate), before any video."""
        if not self.write_videos:
            return
        self.codec = first_writable_codec(self.codecs, ".mp4")
        if self.codec == self.codecs[0]:
            log.info("cropped videos: codec %s", codec_name(self.codec))
        else:
            log.warning(
                "cropped videos: this OpenCV build cannot write %s; using %s (browsers may not play it)",
                ", ".join(codec_name(c) for c in self.codecs[: self.codecs.index(self.codec)]),
                codec_name(self.codec),
            )
        if self.audio and shutil.which("ffmpeg") is None:
            log.warning("ffmpeg is not on PATH: cropped videos have no audio (the Debian package ffmpeg keeps it)")


@dataclass
class VideoOutcome:
    """One video's scores (original, crops, controls in `spec.anchors` order), its log rows and timings."""

    path: str
    clip: str
    frames: int
    fps: float
    width: int
    height: int
    initial: float = 0.0
    cropped: dict[str, float] = field(default_factory=dict)
    controls: dict[str, list[float]] = field(default_factory=dict)
    box_rows: list[dict[str, Any]] = field(default_factory=list)
    control_box_rows: list[dict[str, Any]] = field(default_factory=list)
    export_rows: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    control_labels: list[str] = field(default_factory=list)

    def score_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "path": self.path,
            "clip": self.clip,
            "frames": self.frames,
            "fps": self.fps,
            "width": self.width,
            "height": self.height,
            "original": self.initial,
        }
        for name, score in self.cropped.items():
            row[f"crop_{name}"] = score
            row |= {f"crop_{name}_{label}": value for label, value in zip(self.control_labels, self.controls[name])}
        return row

    def timing_row(self) -> dict[str, Any]:
        return {"path": self.path, "clip": self.clip, "frames": self.frames, **self.timings}


def _timed(items: Iterator[Any], clock: dict[str, float], key: str) -> Iterator[Any]:
    """`items`, adding the time spent producing them (decoding) to clock[key]."""
    while True:
        start = time.perf_counter()
        try:
            item = next(items)
        except StopIteration:
            clock[key] += time.perf_counter() - start
            return
        clock[key] += time.perf_counter() - start
        yield item


def saliency_pass(clip: VideoClip, saliency: Any, clock: dict[str, float]) -> tuple[np.ndarray, tuple[int, int]]:
    """Pass 1: the kept frames' saliency maps (T, h, w) and the frame size (height, width); frames are
    dropped as soon as their map is computed."""
    shape: list[tuple[int, int]] = []

    def frames() -> Iterator[np.ndarray]:
        for _, frame in _timed(clip.frames(), clock, "decode_s"):
            if not shape:
                shape.append(frame.shape[:2])
            yield frame

    start = time.perf_counter()
    decoding = clock["decode_s"]
    maps: np.ndarray | list[np.ndarray] | None = None
    count = 0
    for count, saliency_map in enumerate(saliency.stream(frames()), start=1):
        if maps is None:  # one array for the clip when its length is known: stacking a list would need twice the room
            maps = [] if clip.planned is None else np.empty((clip.planned, *saliency_map.shape), np.float32)
        if isinstance(maps, list):
            maps.append(saliency_map)
        else:
            maps[count - 1] = saliency_map
    clock["saliency_s"] += time.perf_counter() - start - (clock["decode_s"] - decoding)
    if maps is None:
        raise UserError(f"{clip.path}: no frame was kept")
    return (np.stack(maps) if isinstance(maps, list) else maps[:count]), shape[0]


def _score(predictor: Any, frames: list[np.ndarray], clock: dict[str, float]) -> tuple[float, np.ndarray]:
    """A version's score (the mean over its scored frames, as `score_video`) and the per-frame scores."""
    start = time.perf_counter()
    raw = predictor.predict(list(frames))
    clock["score_s"] += time.perf_counter() - start
    return float(np.mean(raw)), np.asarray(raw, float)  # the mean of the raw (float32) scores, as score_video


def process_video(job: VideoJob, ctx: RunContext, source: Path, path: str, clip: str) -> VideoOutcome:
    """Crop one video every way, score the original, each crop and its controls on the same frames, and
    write its contact sheet, views and (with `write_videos`) cropped videos; the caller logs the rows."""
    clock = dict.fromkeys(["decode_s", "saliency_s", "write_s", "score_s"], 0.0) | {f"crop_{c}_s": 0.0 for c in job.croppers}
    video = VideoClip(source, num_frames=job.num_frames, min_frames=job.min_frames, fps=job.fps_override)
    maps, (height, width) = saliency_pass(video, job.saliency, clock)
    indices = video.indices or []
    kept_fps = step_fps(indices, video.info.fps)
    check_window(source, job.croppers, len(indices), kept_fps)
    boxes, sizes = {}, {}
    for name, cropper in job.croppers.items():
        start = time.perf_counter()
        boxes[name] = cropper.boxes(maps, width, height, kept_fps)
        sizes[name] = cropper.output_size(width, height)
        clock[f"crop_{name}_s"] += time.perf_counter() - start
    picks = evenly_spaced(len(indices), job.score_frames)
    position = {j: k for k, j in enumerate(picks)}
    anchors = job.spec.anchors(clip)
    control_boxes = {name: [anchored_boxes(boxes[name][picks], width, height, a.u, a.v) for a in anchors] for name in boxes}
    shown = set(evenly_spaced(len(indices), job.views.frames)) if job.views else set()
    out = VideoOutcome(path, clip, len(indices), video.info.fps, width, height, control_labels=[a.label for a in anchors])
    video_fps = playback_fps(video.info, len(indices))

    originals: list[np.ndarray] = []
    scored = {name: [] for name in boxes}
    controls = {name: [[] for _ in anchors] for name in boxes}
    tiles: list[np.ndarray] = []
    with contextlib.ExitStack() as stack:
        sinks = {}
        if job.write_videos:
            for name in boxes:
                target = ctx.artifact_path(f"videos/{clip}_{name}.mp4")
                sinks[name] = stack.enter_context(VideoSink(target, sizes[name], video_fps, (job.codec,)))
        for j, (_, frame) in enumerate(_timed(video.frames(), clock, "decode_s")):  # pass 2
            for name in boxes:
                start = time.perf_counter()
                cut = apply_crop(frame, boxes[name][j], sizes[name])
                clock[f"crop_{name}_s"] += time.perf_counter() - start
                if name in sinks:
                    start = time.perf_counter()
                    sinks[name].write(cut)
                    clock["write_s"] += time.perf_counter() - start
                if j in position:
                    scored[name].append(cut)
                    for column, box in enumerate(control_boxes[name]):
                        controls[name][column].append(apply_crop(frame, box[position[j]], sizes[name]))
            if j in position:
                originals.append(frame)
            if j in shown:
                caption = f"{indices[j] / video.info.fps:.2f} s"
                tiles.append(
                    saliency_overlay(frame, maps[j], {n: b[j] for n, b in boxes.items()}, job.views.tile_height, caption)
                )
        _score_and_show(job, ctx, out, originals, scored, controls, tiles, boxes, indices, picks, clock)
        start = time.perf_counter()
    clock["write_s"] += time.perf_counter() - start  # closing the sinks: the files are checked and moved into place

    source_audio = has_audio(source) if sinks and job.audio and shutil.which("ffmpeg") else None
    for name, sink in sinks.items():
        audio = mux_audio(sink.path, source, source_audio) if job.audio else "dropped: task.audio=false"
        file = sink.path.relative_to(ctx.artifact_path("")).as_posix()
        out.export_rows.append(
            {"path": path, "clip": clip, "crop": name, "file": file, "codec": sink.codec, "audio": audio}
            | {"frames": sink.frames, "fps": video_fps}
        )
    for name, path_boxes in boxes.items():
        out.box_rows += [
            {"clip": clip, "crop": name, "frame": index, "x": b[0], "y": b[1], "w": b[2], "h": b[3]}
            for index, b in zip(indices, path_boxes.tolist())
        ]
        for anchor, anchor_boxes in zip(anchors, control_boxes[name]):
            draw = "" if anchor.draw is None else anchor.draw
            out.control_box_rows += [
                {"clip": clip, "crop": name, "control": anchor.kind, "draw": draw, "frame": indices[j]} | dict(zip("xywh", b))
                for j, b in zip(picks, anchor_boxes.tolist())
            ]
    out.timings = clock
    return out


def _score_and_show(
    job: VideoJob,
    ctx: RunContext,
    out: VideoOutcome,
    originals: list[np.ndarray],
    scored: dict[str, list[np.ndarray]],
    controls: dict[str, list[list[np.ndarray]]],
    tiles: list[np.ndarray],
    boxes: dict[str, np.ndarray],
    indices: list[int],
    picks: list[int],
    clock: dict[str, float],
) -> None:
    """Score every version on the scored frames (the original, then per crop the crop and its controls,
    as the in-memory pipeline did) and write the contact sheet and the views."""
    anchors = job.spec.anchors(out.clip)
    out.initial, original_frames = _score(job.predictor, originals, clock)
    per_frame = {"original": original_frames}
    sheet = [("original", originals)]
    for name in boxes:
        out.cropped[name], per_frame[f"crop_{name}"] = _score(job.predictor, scored[name], clock)
        sheet.append((f"crop_{name}", scored[name]))
        results = [_score(job.predictor, frames, clock) for frames in controls[name]]
        out.controls[name] = [score for score, _ in results]
        if results:
            per_frame[f"crop_{name} controls"] = np.mean([frames for _, frames in results], axis=0)
        for anchor, frames in zip(anchors, controls[name]):
            if anchor.kind == "centre":
                sheet.append((f"crop_{name}_centre", frames))
    ctx.write_artifact(f"contact_sheets/{out.clip}.png", png_bytes(contact_sheet(sheet)))
    if job.views and tiles:
        ctx.write_artifact(f"views/{out.clip}_saliency.png", png_bytes(overlay_sheet(tiles)))
        seconds = np.asarray(indices, float) / out.fps
        figure = timeline_figure(out.clip, seconds, boxes, out.width, out.height, seconds[picks], per_frame)
        ctx.write_artifact(
            f"views/{out.clip}_timeline.png", lambda tmp: figure.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
        )
