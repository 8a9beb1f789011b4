"""Frames larger than a fixed-shape engine: cut into overlapping tiles, infer, blend back.

Tiles are exactly the engine's (H, W); the last row/column of tiles is shifted back to end on the image
border, so no tile needs padding. In the overlaps the tiles are cross-faded with a linear ramp (weights
normalised by their sum), which hides seams; an identity engine gives the input back exactly.
"""
from __future__ import annotations

from typing import Callable

import numpy as np


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets along one axis: tiles of ``tile`` px, at least ``overlap`` px shared, covering ``size``."""
    if size <= tile:
        return [0]
    stride = max(1, tile - overlap)
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return sorted(set(starts))


def ramp(tile: int, overlap: int) -> np.ndarray:
    """1-D blending weight: rises linearly over ``overlap`` px at both ends, 1 in the middle, never 0."""
    w = np.ones(tile, np.float32)
    k = min(overlap, tile // 2)
    if k > 0:
        r = (np.arange(k, dtype=np.float32) + 1) / (k + 1)
        w[:k] = r
        w[tile - k:] = r[::-1]
    return w


def tile_grid(h: int, w: int, th: int, tw: int, overlap: int) -> list[tuple[int, int]]:
    return [(y, x) for y in tile_starts(h, th, overlap) for x in tile_starts(w, tw, overlap)]


def run_tiled(image: np.ndarray, infer: Callable[[np.ndarray], np.ndarray], tile_hw: tuple[int, int],
              overlap: int = 32, max_batch: int = 1) -> np.ndarray:
    """Apply ``infer`` ((N,3,th,tw) -> same) to a (3, H, W) image with H >= th and W >= tw, tile by tile."""
    c, h, w = image.shape
    th, tw = tile_hw
    if h < th or w < tw:
        raise ValueError(f"image {h}x{w} is smaller than the tile {th}x{tw}; pad it first")
    overlap = max(0, min(overlap, th // 2, tw // 2))
    grid = tile_grid(h, w, th, tw, overlap)
    wy = ramp(th, overlap if len(tile_starts(h, th, overlap)) > 1 else 0)
    wx = ramp(tw, overlap if len(tile_starts(w, tw, overlap)) > 1 else 0)
    weight = wy[:, None] * wx[None, :]
    acc = np.zeros((c, h, w), np.float32)
    norm = np.zeros((h, w), np.float32)
    step = max(1, max_batch)
    for i in range(0, len(grid), step):
        pos = grid[i:i + step]
        batch = np.stack([image[:, y:y + th, x:x + tw] for y, x in pos])
        out = infer(batch)
        for (y, x), t in zip(pos, out):
            acc[:, y:y + th, x:x + tw] += t * weight
            norm[y:y + th, x:x + tw] += weight
    return acc / norm
