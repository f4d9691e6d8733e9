"""Per-video views: the overlay shows the saliency where the map has it and each crop's box where the box
is; the timeline draws each crop's path and every version's per-frame scores in the crop's colour."""

from __future__ import annotations

import numpy as np
from matplotlib.colors import to_rgb

from experiments.tasks.memorability.views import crop_colour, overlay_sheet, saliency_overlay, timeline_figure


def test_the_overlay_puts_heat_on_the_salient_place_and_outlines_each_box() -> None:
    frame = np.full((90, 160, 3), 128, np.uint8)
    saliency = np.zeros((45, 80), np.float32)
    saliency[5:10, 60:70] = 1.0  # top right
    boxes = {"fixed": (20, 10, 80, 45), "dynamic_size": (40, 30, 100, 56)}
    tile = saliency_overlay(frame, saliency, boxes, tile_height=90)
    assert tile.shape == (90, 160, 3)
    hot, cold = tile[15, 130].astype(int), tile[50, 150].astype(int)
    assert hot[2] > hot[0] + 40 and cold[0] > cold[2] + 40  # BGR: red where the map peaks, blue where it is 0
    for position, (x, y, w, h) in enumerate(boxes.values()):
        colour = list(crop_colour(position))
        assert tile[y + h // 2, x].tolist() == colour and tile[y + h // 2, x + w - 1].tolist() == colour  # left, right edges
        assert tile[y, x + w // 2].tolist() == colour and tile[y + h - 1, x + w // 2].tolist() == colour  # top, bottom
    half = saliency_overlay(frame, saliency, boxes, tile_height=45)
    assert half.shape == (45, 80, 3) and half[5, 10].tolist() == list(crop_colour(0))  # boxes scale with the tile
    assert overlay_sheet([tile] * 4).shape == (2 * 94, 3 * 164, 3)  # rows of 3 tiles, 2-px borders


def test_the_timeline_draws_paths_sizes_and_scores_per_crop() -> None:
    seconds = np.arange(10) / 5
    boxes = {"fixed": np.tile([40, 20, 80, 45], (10, 1)), "dynamic_position": np.array([[4 * t, 20, 80, 45] for t in range(10)])}
    scores = {"original": np.array([0.5, 0.6]), "crop_fixed": np.array([0.55, 0.65]), "crop_fixed controls": np.array([0.5, 0.5])}
    figure = timeline_figure("clip", seconds, boxes, 160, 90, seconds[[3, 6]], scores)
    centre, size, score = figure.axes
    assert len(centre.lines) == 2 * len(boxes) and len(size.lines) == len(boxes) and len(score.lines) == len(scores)
    x_path = centre.lines[2].get_ydata()  # dynamic_position's centre x, as a fraction of the frame width
    assert np.allclose(x_path, (4 * np.arange(10) + 40) / 160)
    assert np.allclose(size.lines[0].get_ydata(), 0.5)
    fixed_colour = to_rgb(centre.lines[0].get_color())
    assert to_rgb(score.lines[1].get_color()) == fixed_colour == to_rgb(score.lines[2].get_color())  # one colour per crop
    assert score.lines[2].get_linestyle() == ":" and to_rgb(score.lines[0].get_color()) == (0.0, 0.0, 0.0)
