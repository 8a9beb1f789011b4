"""Reblur module R: re-creates a blurry image from a sharp one and a per-pixel linear motion.

R(x, m)(p) = 1/15 * sum_{k=-7..7} bilinear(x, p + (k/7) * 20 * m(p)), zeros outside the image.
Non-trainable and differentiable in both x and m. All 15 taps go through one ``grid_sample`` call:
the taps are stacked along the sampling grid's height, so the image is never copied 15 times.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .models.motion import MOTION_SCALE

TAPS = 15


def canonical_motion(m: torch.Tensor) -> torch.Tensor:
    """vn(m): a symmetric blur has no sign, so flip m wherever its dx component is negative."""
    return torch.where(m[:, 1:2] < 0, -m, m)


def reblur(image: torch.Tensor, motion: torch.Tensor, taps: int = TAPS, scale: float = MOTION_SCALE) -> torch.Tensor:
    """Blur ``image`` (B,C,H,W) along ``motion`` (B,2,H,W; channels dy, dx in units of ``scale`` px)."""
    if image.dim() != 4 or motion.dim() != 4 or motion.shape[1] != 2:
        raise ValueError(f"reblur needs image (B,C,H,W) and motion (B,2,H,W), got {tuple(image.shape)} and {tuple(motion.shape)}")
    if image.shape[0] != motion.shape[0] or image.shape[-2:] != motion.shape[-2:]:
        raise ValueError(f"image {tuple(image.shape)} and motion {tuple(motion.shape)} differ in batch or size")
    b, c, h, w = image.shape
    t = torch.linspace(-1.0, 1.0, taps, dtype=image.dtype, device=image.device).view(1, taps, 1, 1)
    s = motion.to(image.dtype) * scale                           # (B,2,H,W) in pixels
    ys = torch.arange(h, dtype=image.dtype, device=image.device).view(1, 1, h, 1)
    xs = torch.arange(w, dtype=image.dtype, device=image.device).view(1, 1, 1, w)
    py = ys + t * s[:, 0:1]                                       # (B,taps,H,W)
    px = xs + t * s[:, 1:2]
    # pixel -> [-1, 1] with align_corners=True; taps stacked on the grid's height axis
    gx = px * (2.0 / max(w - 1, 1)) - 1.0
    gy = py * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack((gx, gy), dim=-1).reshape(b, taps * h, w, 2)
    out = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.view(b, c, taps, h, w).mean(dim=2)


def reblur_in(space: str, x: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
    """R(x, m) averaged in ``space``: "linear" decodes sRGB, blurs linear light and encodes again — a sensor
    integrates light during the exposure and the camera's tone curve (≈ sRGB) comes after, so this is the
    blur real footage has; "srgb" is R on the encoded values (SPEC's). On held-out camera-shake clips under
    their known blur, R in sRGB leaves 1.2-3x the residual to B that R in linear light does (3 clips), and on
    one (test_217090) 20 steps of the loss under the known blur lose 0.13 dB in sRGB but gain 0.30 dB in
    linear light."""
    if space == "srgb":
        return reblur(x, motion)
    from .data.synthesis import linear_to_srgb, srgb_to_linear

    # clamp_min: the encoding's x^(1/2.4) has an infinite slope at 0 (NaN through torch.where's other branch)
    return linear_to_srgb(reblur(srgb_to_linear(x.clamp(0, 1)), motion).clamp_min(1e-6))
