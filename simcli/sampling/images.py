"""Images out of the sampler: uint8 conversion as EDM does it, PNG files per seed, and grids."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from simcli.rundir.atomic import write_bytes_atomic


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C] via (x * 127.5 + 128).clip(0, 255) (EDM generate.py).

    Computed in the images' own dtype when it is float32 or float64, so the teacher sampler's float64 output
    converts exactly as generate.py converts it (float32 and float64 can round differently near a pixel
    boundary); other dtypes (half precision) are converted to float32 first.
    """
    x = images.detach()
    if x.dtype not in (torch.float32, torch.float64):
        x = x.to(torch.float32)
    x = (x * 127.5 + 128).clip(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def _pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image[:, :, 0], "L") if image.shape[2] == 1 else Image.fromarray(image, "RGB")


def _write_png(path: Path, image: Image.Image) -> None:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    write_bytes_atomic(path, buf.getvalue())


def save_pngs(images: np.ndarray, seeds: list[int], out_dir: Path) -> list[Path]:
    """One PNG per image, named {seed:06d}.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for image, seed in zip(images, seeds, strict=True):
        path = out_dir / f"{seed:06d}.png"
        _write_png(path, _pil(image))
        paths.append(path)
    return paths


def image_grid(images: np.ndarray, columns: int | None = None, padding: int = 2) -> Image.Image:
    """Tile uint8 [N, H, W, C] images into one image, row by row."""
    n, h, w, c = images.shape
    columns = columns or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / columns)
    canvas = np.full((rows * (h + padding) + padding, columns * (w + padding) + padding, c), 255, np.uint8)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        canvas[y : y + h, x : x + w] = image
    return _pil(canvas)


MIN_GRID_CELL = 32  # pixels: smaller images (8x8 digits) are enlarged so a person can see them


def save_grid(images: np.ndarray, path: Path, columns: int | None = None) -> Path:
    """Write a PNG grid of the images; images under 32 pixels are enlarged by an integer factor (nearest)."""
    grid = image_grid(images, columns)
    scale = max(1, math.ceil(MIN_GRID_CELL / images.shape[1]))
    if scale > 1:
        grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
    _write_png(path, grid)
    return path
