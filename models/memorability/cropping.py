"""The paper's three crops (arXiv 2309.11881, Sec. 3.2), from per-frame saliency maps to per-frame boxes.

- fixed: one box of side fraction `alpha` centred on the whole clip's saliency centroid;
- dynamic position: the box follows each frame's centroid, smoothed over time (EMA or centred moving
  average) and with its speed bounded by `max_speed` (fraction of the frame side per second), so the
  crop never jitters faster than that;
- dynamic size: the box, centred like the dynamic-position one, is the smallest that covers `mass` of
  the frame's saliency (searched over scales in [min_alpha, 1]); its scale is smoothed the same way.

Smoothing is set in seconds (EMA time constant, moving-average span, speeds per second) and turned
into per-frame values with the frame rate of the frames actually processed, so thinning a clip to
fewer frames changes neither how fast the crop may move nor how much it lags, in seconds.
The paper publishes neither crop ratios nor smoothing; the defaults in conf/cropping/ are ours.
Boxes are integer (x, y, w, h) in frame pixels with w/h equal to the frame's aspect (up to one pixel
of rounding) and always inside the frame.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np

from common.errors import UserError

NOMINAL_FPS = 25.0  # frame rate assumed by `boxes` when a caller gives none (the sample clips' rate)
SMOOTHING_METHODS = ("ema", "moving_average", "none")


def check_alpha(alpha: float, key: str = "cropping.alpha") -> float:
    alpha = float(alpha)
    if not 0.0 < alpha <= 1.0:
        raise UserError(f"{key}={alpha} must be in (0, 1]: the crop's side as a fraction of the frame's")
    return alpha


def centroids(maps: np.ndarray) -> np.ndarray:
    """Saliency centre of mass per map, (T, 2) as (x, y) in [0, 1] of the frame (pixel centres)."""
    maps = np.asarray(maps)  # float32 maps stay float32 (no copy of the clip); sums accumulate in float64
    _, height, width = maps.shape
    columns, rows = maps.sum(axis=1, dtype=np.float64), maps.sum(axis=2, dtype=np.float64)
    total = columns.sum(axis=1)
    total = np.where(total > 0, total, 1.0)
    xs = (np.arange(width) + 0.5) / width
    ys = (np.arange(height) + 0.5) / height
    return np.stack([(columns * xs).sum(axis=1) / total, (rows * ys).sum(axis=1) / total], axis=1)


def smooth(
    series: np.ndarray, method: str = "ema", ema: float = 0.2, window: int = 9, max_step: float | None = None
) -> np.ndarray:
    """Temporal smoothing of a (T, k) series, in frames: EMA (weight `ema` on the new value) or a centred
    moving average of `window` frames (edges padded with the end values); then each step is clipped
    to `max_step` so the bound holds whatever the input does. Croppers derive these per-frame values
    from their settings in seconds (`per_frame`)."""
    series = np.asarray(series, dtype=np.float64)
    if series.ndim == 1:
        return smooth(series[:, None], method, ema, window, max_step)[:, 0]
    if method == "ema":
        if not 0.0 < ema <= 1.0:
            raise ValueError(f"ema={ema} must be in (0, 1] (1 = no smoothing)")
        out = np.empty_like(series)
        out[0] = series[0]
        for t in range(1, len(series)):
            out[t] = ema * series[t] + (1 - ema) * out[t - 1]
    elif method in ("moving_average", "none"):
        if window < 1:
            raise ValueError(f"window={window} must be >= 1")
        if method == "none" or window == 1:
            out = series.copy()
        else:
            half = window // 2
            padded = np.concatenate([np.repeat(series[:1], half, 0), series, np.repeat(series[-1:], window - 1 - half, 0)])
            kernel = np.ones(window) / window
            out = np.stack([np.convolve(padded[:, k], kernel, mode="valid") for k in range(series.shape[1])], axis=1)
    else:
        raise ValueError(f"smoothing={method!r} must be one of {', '.join(SMOOTHING_METHODS)}")
    if max_step is not None:
        if max_step <= 0:
            raise ValueError(f"max_step={max_step} must be positive (or None for no bound)")
        for t in range(1, len(out)):
            out[t] = out[t - 1] + np.clip(out[t] - out[t - 1], -max_step, max_step)
    return out


def check_seconds(value: float | None, key: str, allow_zero: bool = False, allow_none: bool = False) -> float | None:
    """A smoothing setting in seconds (or per second) from the config: finite and positive (or zero /
    null where that means "none"), else a UserError naming the key."""
    if value is None:
        if allow_none:
            return None
        raise UserError(f"{key}=null: give a number")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise UserError(f"{key}={value} must be {bound}" + (" (or null for no bound)" if allow_none else ""))
    return value


def check_fps(fps: float | None) -> float:
    """The frame rate of the frames given to `boxes` (NOMINAL_FPS when None)."""
    fps = NOMINAL_FPS if fps is None else float(fps)
    if not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps={fps} must be a positive frame rate")
    return fps


def ema_weight(ema_seconds: float, fps: float) -> float:
    """Per-frame EMA weight of an EMA with time constant `ema_seconds` sampled at `fps`: after t seconds
    a step in the input is followed by 1 - exp(-t / ema_seconds) whatever the frame rate (0 = no lag)."""
    return 1.0 if ema_seconds == 0 else float(-np.expm1(-1.0 / (fps * ema_seconds)))


def window_frames(window_seconds: float, fps: float) -> int:
    """Frames in a moving-average span of `window_seconds` at `fps` (at least 1)."""
    return max(1, int(round(window_seconds * fps)))


def boxes_at(centers: np.ndarray, scales: np.ndarray | float, width: int, height: int) -> np.ndarray:
    """(N, 4) int boxes (x, y, w, h): side fraction `scales[i]` (or one scale for all), centred as near
    `centers[i]` (x, y in [0, 1]) as the frame allows. Vectorised: called for every frame and scale."""
    centers = np.asarray(centers, dtype=np.float64).reshape(-1, 2)
    scales = np.broadcast_to(np.asarray(scales, dtype=np.float64), (len(centers),))
    w = np.clip(np.round(scales * width), 1, width)
    h = np.clip(np.round(w * height / width), 1, height)
    x = np.clip(np.round(centers[:, 0] * width - w / 2), 0, width - w)
    y = np.clip(np.round(centers[:, 1] * height - h / 2), 0, height - h)
    return np.stack([x, y, w, h], axis=1).astype(np.int64)


def box_at(center: np.ndarray, scale: float, width: int, height: int) -> tuple[int, int, int, int]:
    """The (x, y, w, h) box of side fraction `scale` centred as near `center` (x, y in [0, 1]) as the frame allows."""
    x, y, w, h = boxes_at(center, scale, width, height)[0]
    return int(x), int(y), int(w), int(h)


class Cropper(ABC):
    """Saliency maps of a clip (T, h, w) sampled at `fps` frames per second + the frame size -> boxes
    (T, 4) int (x, y, w, h)."""

    name: str = "crop"

    def __init__(self, alpha: float = 0.75) -> None:
        self.alpha = check_alpha(alpha)

    @abstractmethod
    def boxes(self, maps: np.ndarray, width: int, height: int, fps: float | None = None) -> np.ndarray: ...

    def window_frames(self, fps: float | None = None) -> int:
        """Frames a clip needs at `fps` for this crop's smoothing to be what it says (1: none needed)."""
        return 1

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(w, h) every cropped frame is resized to: the `alpha` box's size, for one frame size per video."""
        _, _, w, h = box_at(np.array([0.5, 0.5]), self.alpha, width, height)
        return w + (w % 2), h + (h % 2)  # even sides: what most encoders want


class FixedCropper(Cropper):
    """One box for the whole clip, centred on the mean saliency map's centroid."""

    name = "fixed"

    def boxes(self, maps: np.ndarray, width: int, height: int, fps: float | None = None) -> np.ndarray:
        center = centroids(np.asarray(maps).mean(axis=0, keepdims=True))[0]
        return np.tile(np.array(box_at(center, self.alpha, width, height)), (len(maps), 1))


class DynamicPositionCropper(Cropper):
    """Fixed-size box following the smoothed per-frame saliency centroid; smoothing set in seconds."""

    name = "dynamic_position"

    def __init__(
        self,
        alpha: float = 0.75,
        smoothing: str = "ema",
        ema_seconds: float = 0.18,
        window_seconds: float = 0.36,
        max_speed: float | None = 0.5,
    ) -> None:
        super().__init__(alpha)
        if smoothing not in SMOOTHING_METHODS:
            raise UserError(f"cropping.crops.{self.name}.smoothing={smoothing!r} must be one of {', '.join(SMOOTHING_METHODS)}")
        self.smoothing = smoothing
        self.ema_seconds = check_seconds(ema_seconds, "cropping.ema_seconds", allow_zero=True)
        self.window_seconds = check_seconds(window_seconds, f"cropping.crops.{self.name}.window_seconds")
        self.max_speed = check_seconds(max_speed, "cropping.max_speed", allow_none=True)

    def window_frames(self, fps: float | None = None) -> int:
        """Frames the moving average spans at `fps` (1 for the other smoothings)."""
        return window_frames(self.window_seconds, check_fps(fps)) if self.smoothing == "moving_average" else 1

    def per_frame(self, fps: float | None, speed: float | None) -> dict[str, float | int | None]:
        """`smooth`'s per-frame arguments at `fps`: EMA weight, window frames, and `speed` (per second)
        as a bound per frame."""
        fps = check_fps(fps)
        return {
            "method": self.smoothing,
            "ema": ema_weight(self.ema_seconds, fps),
            "window": window_frames(self.window_seconds, fps),
            "max_step": None if speed is None else speed / fps,
        }

    def path(self, maps: np.ndarray, fps: float | None = None) -> np.ndarray:
        """Smoothed centroids (T, 2) of maps sampled at `fps` frames per second."""
        return smooth(centroids(maps), **self.per_frame(fps, self.max_speed))

    def boxes(self, maps: np.ndarray, width: int, height: int, fps: float | None = None) -> np.ndarray:
        return boxes_at(self.path(maps, fps), self.alpha, width, height)


class DynamicSizeCropper(DynamicPositionCropper):
    """Box following the centroid whose scale covers `mass` of each frame's saliency (smoothed)."""

    name = "dynamic_size"

    def __init__(
        self,
        alpha: float = 0.75,
        mass: float = 0.6,
        min_alpha: float = 0.4,
        scales: int = 25,
        smoothing: str = "ema",
        ema_seconds: float = 0.18,
        window_seconds: float = 0.36,
        max_speed: float | None = 0.5,
        max_scale_speed: float | None = 0.5,
    ) -> None:
        super().__init__(alpha, smoothing, ema_seconds, window_seconds, max_speed)
        if not 0.0 < mass <= 1.0:
            raise UserError(f"cropping.mass={mass} must be in (0, 1]: the share of saliency the box covers")
        self.mass, self.min_alpha = float(mass), check_alpha(min_alpha, "cropping.min_alpha")
        self.scales = np.linspace(self.min_alpha, 1.0, int(scales))
        self.max_scale_speed = check_seconds(max_scale_speed, f"cropping.crops.{self.name}.max_scale_speed", allow_none=True)

    def frame_scales(self, maps: np.ndarray, path: np.ndarray, chunk: int = 256) -> np.ndarray:
        """Per frame, the smallest scale whose box (centred on the smoothed path) holds `mass` of the map
        (every scale of `chunk` frames at once through the maps' integral images: float64 images of a
        whole long clip would take four times the room of its maps)."""
        if len(maps) > chunk:
            return np.concatenate(
                [
                    self.frame_scales(maps[start : start + chunk], path[start : start + chunk], chunk)
                    for start in range(0, len(maps), chunk)
                ]
            )
        import cv2

        frames, mh, mw = maps.shape
        integral = np.empty((frames, mh + 1, mw + 1))  # OpenCV's integral image: ~7x faster than two numpy cumsums
        for t in range(frames):
            integral[t] = cv2.integral(np.ascontiguousarray(maps[t]), sdepth=cv2.CV_64F)
        count = len(self.scales)
        boxes = boxes_at(np.repeat(path, count, axis=0), np.tile(self.scales, frames), mw, mh).reshape(frames, count, 4)
        x, y, w, h = np.moveaxis(boxes, 2, 0)
        t = np.arange(frames)[:, None]
        inside = integral[t, y + h, x + w] - integral[t, y, x + w] - integral[t, y + h, x] + integral[t, y, x]
        total = integral[:, -1, -1]
        enough = inside / np.where(total > 0, total, 1.0)[:, None] >= self.mass
        first = np.where(enough.any(axis=1), enough.argmax(axis=1), count - 1)
        return self.scales[first]

    def boxes(self, maps: np.ndarray, width: int, height: int, fps: float | None = None) -> np.ndarray:
        maps = np.asarray(maps)
        path = self.path(maps, fps)
        scales = smooth(self.frame_scales(maps, path), **self.per_frame(fps, self.max_scale_speed))
        return boxes_at(path, np.clip(scales, self.min_alpha, 1.0), width, height)


def apply_crop(frame: np.ndarray, box: np.ndarray | tuple[int, int, int, int], size: tuple[int, int] | None = None) -> np.ndarray:
    """The frame's pixels inside `box`, resized to `size` (w, h) when given."""
    import cv2

    x, y, w, h = (int(v) for v in box)
    crop = frame[y : y + h, x : x + w]
    if size is not None and (crop.shape[1], crop.shape[0]) != tuple(size):
        crop = cv2.resize(crop, tuple(size), interpolation=cv2.INTER_LINEAR)  # scale factors stay near 1
    return np.ascontiguousarray(crop)
