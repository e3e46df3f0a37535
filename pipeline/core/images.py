"""Image grids of generated samples."""

from __future__ import annotations

import numpy as np

from pipeline.data import unscale_pixels


def image_grid(images: np.ndarray, rows: int, pad: int = 1) -> np.ndarray:
    """Tile `rows * rows` images of shape (H, W, 1) in [-1, 1] into one uint8 (H', W') picture."""
    images = unscale_pixels(images[: rows * rows])[..., 0]
    count, height, width = images.shape
    if count < rows * rows:
        raise ValueError(f"image_grid needs {rows * rows} images, got {count}")
    framed = np.pad(images, ((0, 0), (pad, pad), (pad, pad)))
    grid = framed.reshape(rows, rows, height + 2 * pad, width + 2 * pad)
    return grid.transpose(0, 2, 1, 3).reshape(rows * (height + 2 * pad), rows * (width + 2 * pad))
