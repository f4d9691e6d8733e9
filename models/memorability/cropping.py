"""The paper's three crops (arXiv 2309.11881, Sec. 3.2), from per-frame saliency maps to per-frame boxes.

- fixed: one box of side fraction `alpha` centred on the whole clip's saliency centroid;
- dynamic position: the box follows each frame's centroid, smoothed over time (EMA or centred moving
  average) and with every frame-to-frame move bounded by `max_step` (fraction of the frame side), so
  the crop never jitters more than that;
- dynamic size: the box, centred like the dynamic-position one, is the smallest that covers `mass` of
  the frame's saliency (searched over scales in [min_alpha, 1]); its scale is smoothed the same way.

The paper publishes neither crop ratios nor smoothing; the defaults in conf/cropping/ are ours.
Boxes are integer (x, y, w, h) in frame pixels with w/h equal to the frame's aspect (up to one pixel
of rounding) and always inside the frame.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from common.errors import UserError


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
    """Temporal smoothing of a (T, k) series: EMA (weight `ema` on the new value) or a centred moving
    average of `window` frames (edges padded with the end values); then each step is clipped to
    `max_step` so the bound holds whatever the input does."""
    series = np.asarray(series, dtype=np.float64)
    if series.ndim == 1:
        return smooth(series[:, None], method, ema, window, max_step)[:, 0]
    if method == "ema":
        if not 0.0 < ema <= 1.0:
            raise UserError(f"cropping.ema={ema} must be in (0, 1] (1 = no smoothing)")
        out = np.empty_like(series)
        out[0] = series[0]
        for t in range(1, len(series)):
            out[t] = ema * series[t] + (1 - ema) * out[t - 1]
    elif method in ("moving_average", "none"):
        if window < 1:
            raise UserError(f"cropping.window={window} must be >= 1")
        if method == "none" or window == 1:
            out = series.copy()
        else:
            half = window // 2
            padded = np.concatenate([np.repeat(series[:1], half, 0), series, np.repeat(series[-1:], window - 1 - half, 0)])
            kernel = np.ones(window) / window
            out = np.stack([np.convolve(padded[:, k], kernel, mode="valid") for k in range(series.shape[1])], axis=1)
    else:
        raise UserError(f"cropping.smoothing={method!r} must be one of ema, moving_average, none")
    if max_step is not None:
        if max_step <= 0:
            raise UserError(f"cropping.max_step={max_step} must be positive (or null for no bound)")
        for t in range(1, len(out)):
            out[t] = out[t - 1] + np.clip(out[t] - out[t - 1], -max_step, max_step)
    return out


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
    """Saliency maps of a clip (T, h, w) + the frame size -> boxes (T, 4) int (x, y, w, h)."""

    name: str = "crop"

    def __init__(self, alpha: float = 0.75) -> None:
        self.alpha = check_alpha(alpha)

    @abstractmethod
    def boxes(self, maps: np.ndarray, width: int, height: int) -> np.ndarray: ...

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(w, h) every cropped frame is resized to: the `alpha` box's size, for one frame size per video."""
        _, _, w, h = box_at(np.array([0.5, 0.5]), self.alpha, width, height)
        return w + (w % 2), h + (h % 2)  # even sides: what most encoders want


class FixedCropper(Cropper):
    """One box for the whole clip, centred on the mean saliency map's centroid."""

    name = "fixed"

    def boxes(self, maps: np.ndarray, width: int, height: int) -> np.ndarray:
        center = centroids(np.asarray(maps).mean(axis=0, keepdims=True))[0]
        return np.tile(np.array(box_at(center, self.alpha, width, height)), (len(maps), 1))


class DynamicPositionCropper(Cropper):
    """Fixed-size box following the smoothed per-frame saliency centroid."""

    name = "dynamic_position"

    def __init__(
        self, alpha: float = 0.75, smoothing: str = "ema", ema: float = 0.2, window: int = 9, max_step: float | None = 0.02
    ) -> None:
        super().__init__(alpha)
        self.smoothing, self.ema, self.window, self.max_step = smoothing, float(ema), int(window), max_step
        smooth(np.zeros((2, 2)), smoothing, self.ema, self.window, max_step)  # validate the options now

    def path(self, maps: np.ndarray) -> np.ndarray:
        return smooth(centroids(maps), self.smoothing, self.ema, self.window, self.max_step)

    def boxes(self, maps: np.ndarray, width: int, height: int) -> np.ndarray:
        return boxes_at(self.path(maps), self.alpha, width, height)


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
        ema: float = 0.2,
        window: int = 9,
        max_step: float | None = 0.02,
        max_scale_step: float | None = 0.02,
    ) -> None:
        super().__init__(alpha, smoothing, ema, window, max_step)
        if not 0.0 < mass <= 1.0:
            raise UserError(f"cropping.mass={mass} must be in (0, 1]: the share of saliency the box covers")
        self.mass, self.min_alpha = float(mass), check_alpha(min_alpha, "cropping.min_alpha")
        self.scales, self.max_scale_step = np.linspace(self.min_alpha, 1.0, int(scales)), max_scale_step

    def frame_scales(self, maps: np.ndarray, path: np.ndarray) -> np.ndarray:
        """Per frame, the smallest scale whose box (centred on the smoothed path) holds `mass` of the map
        (every frame and scale at once through the maps' integral images)."""
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

    def boxes(self, maps: np.ndarray, width: int, height: int) -> np.ndarray:
        maps = np.asarray(maps)
        path = self.path(maps)
        scales = smooth(self.frame_scales(maps, path), self.smoothing, self.ema, self.window, self.max_scale_step)
        return boxes_at(path, np.clip(scales, self.min_alpha, 1.0), width, height)


def apply_crop(frame: np.ndarray, box: np.ndarray | tuple[int, int, int, int], size: tuple[int, int] | None = None) -> np.ndarray:
    """The frame's pixels inside `box`, resized to `size` (w, h) when given."""
    import cv2

    x, y, w, h = (int(v) for v in box)
    crop = frame[y : y + h, x : x + w]
    if size is not None and (crop.shape[1], crop.shape[0]) != tuple(size):
        crop = cv2.resize(crop, tuple(size), interpolation=cv2.INTER_LINEAR)  # scale factors stay near 1
    return np.ascontiguousarray(crop)
