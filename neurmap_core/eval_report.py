"""Evaluation reports: the example grid PNG, the summary table rows and the JSON file."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError

METRICS = ("psnr", "ssim", "lpips", "niqe")
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False, "niqe": False}
UNITS = {"psnr": "dB", "ssim": "", "lpips": "", "niqe": ""}
GRID_TILE_WIDTH = 320

PathLike = Union[str, Path]


def _tile(img: torch.Tensor, width: int) -> torch.Tensor:
    h, w = img.shape[-2:]
    if w <= width:
        return img.clone()
    nh = max(1, int(round(h * width / w)))
    return F.interpolate(img[None], size=(nh, width), mode="bilinear", align_corners=False, antialias=True)[0].clamp(0, 1)


def _label(arr: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.45) -> None:
    import cv2

    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x, y = org
    cv2.rectangle(arr, (x - 2, y - th - 3), (x + tw + 2, y + base), (0, 0, 0), thickness=-1)
    cv2.putText(arr, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)


def write_grid(path: PathLike, rows: Sequence[dict], tile_width: int = GRID_TILE_WIDTH, gap: int = 4) -> Path:
    """A PNG grid, one row per example: blurry | deblurred | sharp (when any row has one), written atomically.

    ``rows``: dicts with (3,H,W) tensors ``blurry``, ``output``, optionally ``sharp``, and optional captions
    ``caption_blurry`` / ``caption_output``.
    """
    from .data.io import array_to_tensor, tensor_to_array, write_image

    if not rows:
        raise InputError("no examples to put in the grid")
    cols = ["blurry", "output"] + (["sharp"] if any(r.get("sharp") is not None for r in rows) else [])
    titles = {"blurry": "blurry (input)", "output": "deblurred (output)", "sharp": "sharp (target)"}
    tiles = [[_tile(r[c], tile_width) if r.get(c) is not None else None for c in cols] for r in rows]
    tw = max(t.shape[-1] for row in tiles for t in row if t is not None)
    heights = [max(t.shape[-2] for t in row if t is not None) for row in tiles]
    header = 22
    H = header + sum(heights) + gap * (len(rows) - 1)
    W = len(cols) * tw + gap * (len(cols) - 1)
    canvas = torch.ones(3, H, W)
    y = header
    for r, row, rh in zip(rows, tiles, heights):
        for j, t in enumerate(row):
            x = j * (tw + gap)
            if t is None:
                canvas[:, y:y + rh, x:x + tw] = 0.5
            else:
                canvas[:, y:y + t.shape[-2], x:x + t.shape[-1]] = t
        y += rh + gap
    arr = tensor_to_array(canvas).copy()                   # (H,W,3) RGB uint8
    for j, c in enumerate(cols):
        _label(arr, titles[c], (j * (tw + gap) + 4, 16), 0.5)
    y = header
    for r, rh in zip(rows, heights):
        for j, c in enumerate(cols):
            cap = r.get(f"caption_{c}")
            if cap:
                _label(arr, cap, (j * (tw + gap) + 4, y + rh - 6))
        y += rh + gap
    return write_image(path, array_to_tensor(arr, bgr=False))


def summary_rows(result: dict) -> list[tuple[str, str, str, str, str]]:
    """(metric, better, input, output, change) strings for a summary table of ``result['means']``."""
    def fmt(v: Optional[float], m: str, signed: bool = False) -> str:
        if v is None:
            return "-"
        digits = 2 if m in ("psnr", "niqe") else 4
        s = f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"
        return f"{s} {UNITS[m]}".strip()

    means = result["means"]
    rows = []
    for m in METRICS:
        if m not in means["input"]:
            continue
        rows.append((m.upper(), "higher" if HIGHER_IS_BETTER[m] else "lower", fmt(means["input"][m], m),
                     fmt(means["output"][m], m), fmt(means["gain"].get(m), m, signed=True)))
    if "sharp" in means:
        rows.append(("NIQE of sharp", "lower", "-", fmt(means["sharp"]["niqe"], "niqe"), "(reference)"))
    if "motion" in means:
        mo = means["motion"]
        rows.append(("motion MSE px^2", "lower", "-", "-" if mo["mse_px2"] is None else f"{mo['mse_px2']:.3f}", ""))
        rows.append(("motion EPE px", "lower", "-", "-" if mo["epe_px"] is None else f"{mo['epe_px']:.3f}", ""))
    return rows


def write_json(result: dict, path: PathLike) -> Path:
    """Write ``result`` as indented JSON, atomically (temp file + rename)."""
    from .checkpoint import atomic_write

    text = json.dumps(result, indent=2, allow_nan=False)
    return atomic_write(Path(path), lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))
