"""Writes resmem_transform.npz: the `resmem` package's own input transform on a synthetic image.

Run once, where the package's transform imports (it needs torchvision, which the project does not
depend on; torchvision's compiled ops are not needed for the transform):

    python tests/models/memorability/data/make_resmem_transform.py

The file keeps the transform's output as uint8 (ToTensor gives k / 255 for k in 0..255, so the
uint8 array is the output exactly; the script checks that) and the SHA-256 of the synthetic input,
so a changed input generator is caught before the comparison.
"""

from __future__ import annotations

import hashlib
import sys
import types
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def synthetic_rgb(height: int = 200, width: int = 600) -> np.ndarray:
    """A deterministic RGB image with smooth gradients, sharp edges and pixel noise; its height is
    upsampled to 256 and its width downsampled (where antialiasing matters), so both paths are checked."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    red = 127.5 + 127.5 * np.sin(x / 7.0) * np.cos(y / 11.0)
    green = (x * 255.0 / (width - 1) + 60.0 * ((x // 13 + y // 9) % 2)) % 256
    blue = np.random.default_rng(20220614).integers(0, 256, (height, width))
    return np.clip(np.round(np.stack([red, green, blue], axis=-1)), 0, 255).astype(np.uint8)


def main() -> None:
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    import resmem
    from PIL import Image

    image = synthetic_rgb()
    tensor = resmem.transformer(Image.fromarray(image)).numpy()
    as_uint8 = np.round(tensor * 255.0).astype(np.uint8)
    assert np.array_equal(as_uint8.astype(np.float32) / np.float32(255.0), tensor), "output is not k / 255"
    np.savez_compressed(
        HERE / "resmem_transform.npz",
        expected=as_uint8,
        input_sha256=np.array(hashlib.sha256(image.tobytes()).hexdigest()),
        transform=np.array(repr(resmem.transformer)),
    )


if __name__ == "__main__":
    main()
