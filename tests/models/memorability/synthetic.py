"""A synthetic clip: a bright square moving left to right over a dim textured background."""

from __future__ import annotations

import numpy as np


def moving_square(
    frames: int = 24, width: int = 160, height: int = 90, side: int = 16, seed: int = 0
) -> tuple[list[np.ndarray], np.ndarray]:
    """BGR uint8 frames and the square's centre x per frame (pixels)."""
    rng = np.random.default_rng(seed)
    background = rng.integers(20, 50, size=(height, width, 3), dtype=np.uint8)
    xs = np.linspace(side, width - side, frames)
    clip = []
    for x in xs:
        frame = background.copy()
        x0, y0 = int(round(x - side / 2)), height // 2 - side // 2
        frame[y0 : y0 + side, x0 : x0 + side] = 255
        clip.append(frame)
    return clip, xs
