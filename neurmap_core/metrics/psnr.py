"""PSNR as deblurring papers report it: on 8-bit images.

Both images are clamped to [0,1] and quantised to 8 bits (round(x*255)/255) before the MSE, as if they had
been saved as PNG, so a network output and the file written from it give the same number. The MSE is
over all channels and pixels of one image; the batch value is the mean of the per-image PSNRs (not the
PSNR of the mean MSE), as GoPro benchmarks average per image.
"""
from __future__ import annotations

import torch

from ._common import as_pair

MAX_DB = 100.0
"""Identical (quantised) images give this instead of +inf, so batch means stay finite."""


def quantize_8bit(x: torch.Tensor) -> torch.Tensor:
    """Clamp to [0,1] and round to the nearest of the 256 8-bit levels (not differentiable)."""
    return torch.round(x.clamp(0.0, 1.0) * 255.0) / 255.0


@torch.no_grad()
def psnr_per_image(pred, target) -> torch.Tensor:
    """PSNR in dB of each image of the batch: a float64 tensor (B,). Inputs as for :func:`psnr`."""
    x, y = as_pair(pred, target)
    x = quantize_8bit(x.double())
    y = quantize_8bit(y.double())
    mse = (x - y).pow(2).flatten(1).mean(dim=1)
    db = 10.0 * torch.log10(1.0 / mse.clamp_min(1e-300))
    return db.clamp(max=MAX_DB)


def psnr(pred, target) -> float:
    """Mean over the batch of the per-image 8-bit PSNR in dB.

    ``pred`` and ``target``: float tensors (B,3,H,W) / (3,H,W) in [0,1], or numpy HxWx3 arrays
    (uint8, or float in [0,1]).
    """
    return float(psnr_per_image(pred, target).mean())
