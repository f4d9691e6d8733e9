"""Per-video pictures a person reads faster than the CSV files: where the saliency was and where each crop
went (a saliency-overlay contact sheet), and how the boxes moved and the scores changed over time (a
timeline plot). Both are built from what the pipeline already holds (small maps, boxes, the scored
frames' scores), so they cost no extra decoding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np
from matplotlib.figure import Figure

from data.videos import contact_sheet

# BGR colours of the crops, in the order the config lists them (OpenCV draws in BGR; the plot uses the same
# colours as RGB so a crop looks alike in both pictures).
CROP_COLOURS = ((255, 255, 255), (0, 255, 255), (255, 0, 255), (0, 255, 0), (255, 128, 0), (0, 128, 255))


def crop_colour(position: int) -> tuple[int, int, int]:
    return CROP_COLOURS[position % len(CROP_COLOURS)]


def _label(image: np.ndarray, text: str, origin: tuple[int, int], colour: tuple[int, int, int]) -> None:
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)


def saliency_overlay(
    frame: np.ndarray, saliency: np.ndarray, boxes: Mapping[str, Sequence[int]], tile_height: int = 160, caption: str = ""
) -> np.ndarray:
    """The frame at `tile_height` with its saliency map as a heat map (scaled to its own maximum: red = the
    frame's most salient place) and each crop's box outlined in its colour, named on the tile."""
    height, width = frame.shape[:2]
    scale = tile_height / height
    size = (max(1, round(width * scale)), tile_height)
    tile = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
    peak = float(saliency.max())
    level = np.zeros(saliency.shape, np.uint8) if peak <= 0 else np.uint8(np.clip(saliency / peak, 0, 1) * 255)
    heat = cv2.applyColorMap(cv2.resize(level, size, interpolation=cv2.INTER_LINEAR), cv2.COLORMAP_JET)
    tile = cv2.addWeighted(tile, 0.55, heat, 0.45, 0.0)
    for position, (name, (x, y, w, h)) in enumerate(boxes.items()):
        colour = crop_colour(position)
        top_left = (round(x * scale), round(y * scale))
        bottom_right = (round((x + w) * scale) - 1, round((y + h) * scale) - 1)
        cv2.rectangle(tile, top_left, bottom_right, colour, 1)
        _label(tile, name, (4, tile_height - 6 - 14 * position), colour)
    if caption:
        _label(tile, caption, (4, 14), (255, 255, 255))
    return tile


def overlay_sheet(tiles: Sequence[np.ndarray], per_row: int = 3) -> np.ndarray:
    """Overlay tiles in rows of `per_row` (BGR uint8, for `png_bytes`)."""
    rows = [("", list(tiles[start : start + per_row])) for start in range(0, len(tiles), per_row)]
    height = tiles[0].shape[0]
    return contact_sheet(rows, tile_height=height)


def timeline_figure(
    clip: str,
    seconds: np.ndarray,
    boxes: Mapping[str, np.ndarray],
    width: int,
    height: int,
    scored_seconds: np.ndarray,
    scores: Mapping[str, np.ndarray],
) -> Figure:
    """Three panels over the clip's time: each crop's box centre (x solid, y dashed) and its width as
    fractions of the frame, and the per-frame scores of the scored frames for each version (the clip's
    score is their mean). `scores` maps a version (`original`, `crop_<c>`, `crop_<c> controls`: the mean
    of its controls) to its per-frame scores at `scored_seconds`; a crop's lines share its colour."""
    figure = Figure(figsize=(7, 6.5))
    centre_axes, size_axes, score_axes = figure.subplots(3, 1, sharex=True)
    colours = {name: np.array(crop_colour(position)[::-1]) / 255 * 0.8 for position, name in enumerate(boxes)}  # RGB, darker
    for name, path in boxes.items():
        colour = colours[name]
        path = np.asarray(path, float)
        centre_axes.plot(seconds, (path[:, 0] + path[:, 2] / 2) / width, color=colour, label=f"{name} x")
        centre_axes.plot(seconds, (path[:, 1] + path[:, 3] / 2) / height, color=colour, ls="--", label=f"{name} y")
        size_axes.plot(seconds, path[:, 2] / width, color=colour, label=name)
    centre_axes.set_ylabel("box centre / frame")
    centre_axes.set_ylim(0, 1)
    centre_axes.legend(fontsize=6, ncol=3)
    size_axes.set_ylabel("box width / frame")
    size_axes.set_ylim(0, 1.05)
    size_axes.legend(fontsize=6)
    for version, values in scores.items():
        crop = version.removeprefix("crop_").removesuffix(" controls")
        style = {"ls": ":", "marker": "x"} if version.endswith(" controls") else {"marker": "o"}
        score_axes.plot(scored_seconds, values, label=version, color=colours.get(crop, "black"), **style)
    score_axes.set_ylabel("per-frame score")
    score_axes.set_xlabel("seconds")
    score_axes.legend(fontsize=6, ncol=2)
    figure.suptitle(f"{clip}: crop boxes and scored frames", fontsize=9)
    return figure
