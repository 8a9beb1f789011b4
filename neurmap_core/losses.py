"""Every NeurMAP loss term, each a small function named for the MAP term it implements (SPEC, Losses).

Notation: B blurry, S sharp, Ŝ = G(B) deblurred, m = vn(M(·)) canonical motion (units of 20 px),
m_rel = vn(M(B)) − vn(M(Ŝ)) the blur left in Ŝ, R the reblur module.
"""
from __future__ import annotations

from collections import deque

import torch
import torch.nn.functional as F

from .metrics.ssim import ms_ssim, ms_ssim_official
from .reblur import reblur_in


# --- likelihood terms -------------------------------------------------------------------------------

def reblur_loss(reblurred: torch.Tensor, blurry: torch.Tensor) -> torch.Tensor:
    """ℓ_rb(B̂, B) = MSE + 0.1·(1 − MS-SSIM): the reblurred estimate must reproduce the observation."""
    return F.mse_loss(reblurred, blurry) + 0.1 * (1.0 - ms_ssim(reblurred, blurry))


def reblur_loss_official(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """ℓ_rb with the official code's MS-SSIM (:func:`ms_ssim_official`, finite where it is NaN). Its data range
    comes from ``first``, so the order is the official one: (reblurred, B) in M's step, (B, reblurred) in G's."""
    return F.mse_loss(first, second) + 0.1 * (1.0 - ms_ssim_official(first, second))


def total_variation(z: torch.Tensor) -> torch.Tensor:
    """TV(z) = mean|∂x z| + mean|∂y z|: smoothness prior on motion maps (and optionally on Ŝ)."""
    return (z[..., :, 1:] - z[..., :, :-1]).abs().mean() + (z[..., 1:, :] - z[..., :-1, :]).abs().mean()


def content_loss(deblurred: torch.Tensor, sharp: torch.Tensor) -> torch.Tensor:
    """L1(Ŝ, S) on the paired half: the supervised term."""
    return F.l1_loss(deblurred, sharp)


def frequency_loss(deblurred: torch.Tensor, sharp: torch.Tensor) -> torch.Tensor:
    """L1 between orthonormal 2-D spectra (real and imaginary parts): weighs the fine detail blur removes,
    which a pixel L1 under-weighs (as in MIMO-UNet's FFT loss). Computed in fp32."""
    d = torch.fft.rfft2(deblurred.float(), norm="ortho") - torch.fft.rfft2(sharp.float(), norm="ortho")
    return torch.view_as_real(d).abs().mean()


def sharp_anchor_loss(G, blurry: torch.Tensor, scale: int = 4) -> torch.Tensor:
    """L1 of what G changes in the blurry images area-downscaled by ``scale``: the same content, nearly sharp
    (the blur shrinks with the image: 2.5 px becomes 0.6 px at 1/4), which a deblurrer should leave as it is.

    The reblur term alone does not pin down what the blur removed (frequencies it zeroes cost nothing): stream
    rounds sharpened beyond the blur and lost up to 1.28 dB on training-split clips; the anchor is that missing
    prior, taken from the unpaired blurry data itself (``experiments/stream_anchor.py``: worst round -0.26 dB
    with it). Used by stream adaptation (``w_anchor``) and NeurMAP training (``loss_weights.G_anchor``)."""
    small = F.avg_pool2d(blurry, int(scale))
    return (G(small).float() - small.float()).abs().mean()


def anchor_shrink(side: int, scale: int = 4) -> int:
    """The sharp anchor's shrink factor for crops of ``side`` px: ``scale``, lowered so that the shrunk crops keep
    8 px (the nets' minimum side)."""
    return min(int(scale), int(side) // 8)


def reblur_objective(x: torch.Tensor, motion: torch.Tensor, blurry: torch.Tensor, space: str = "linear",
                     border: int = 16) -> torch.Tensor:
    """ℓ_rb(R(X, m), B) away from the crop's border: R samples zeros outside the crop, which on 96² crops made
    the border more than half the loss. The border is at most a quarter of the crop's side."""
    r = reblur_in(space, x, motion.detach().to(x.dtype))
    b = min(int(border), min(blurry.shape[-2:]) // 4)
    if b:
        r, blurry = r[..., b:-b, b:-b], blurry[..., b:-b, b:-b]
    return reblur_loss(r, blurry.to(r.dtype))


# --- motion-net priors (what M must say about sharp, blurry and deblurred images) ------------------

def sharp_zero_motion_loss(m_sharp: torch.Tensor) -> torch.Tensor:
    """L1(vn M(S), 0): a sharp image has no motion."""
    return m_sharp.abs().mean()


def blurry_large_motion_loss(m_blurry: torch.Tensor) -> torch.Tensor:
    """L1(|vn M(B)|, 1) per channel: a blurry image has large motion (20 px)."""
    return (m_blurry.abs() - 1.0).abs().mean()


def residual_blur_loss(m_deblurred: torch.Tensor, m_blurry: torch.Tensor) -> torch.Tensor:
    """L1(vn M(Ŝ), sg[vn M(B)]): M must find the blur left in Ŝ (adversarial to G)."""
    return F.l1_loss(m_deblurred, m_blurry.detach())


def never_blurrier_loss(m_deblurred: torch.Tensor, m_blurry: torch.Tensor) -> torch.Tensor:
    """mean(relu(‖vn M(Ŝ)‖ − ‖vn M(B)‖)): Ŝ is never blurrier than B."""
    return F.relu(m_deblurred.norm(dim=1) - m_blurry.norm(dim=1)).mean()


# --- motion targets (issue #13): known blur of synthetic pairs, flow-derived blur of real video ----

def sign_invariant_l1(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Per pixel min(|p − t|₁, |p + t|₁) over (dy, dx), mean over pixels: a symmetric blur has no direction
    sign, so m and −m are one blur; unlike comparing vn(p) with vn(t) it does not jump where dx crosses 0.

    ``valid`` (B,) bool: the mean over those images only (0 when none), for batches where only some images
    have a target; the others' target must still be finite (no NaN reaches the gradient)."""
    per_pixel = torch.minimum((pred - target).abs().sum(1), (pred + target).abs().sum(1))
    if valid is None:
        return per_pixel.mean()
    w = valid.to(per_pixel.dtype)
    return (per_pixel.flatten(1).mean(1) * w).sum() / w.sum().clamp(min=1.0)


# --- deblur-net prior ------------------------------------------------------------------------------

def sharpness_prior_loss(m_deblurred: torch.Tensor, mu_sharp: torch.Tensor) -> torch.Tensor:
    """mean((|vn M(Ŝ)| − μ_sharp)²): Ŝ should carry as little motion as real sharp images do."""
    return ((m_deblurred.abs() - mu_sharp.view(1, -1, 1, 1)) ** 2).mean()


class SharpMotionPool:
    """μ_sharp: running mean of per-channel |vn M(S)| over the last ``size`` batches of sharp images."""

    def __init__(self, size: int = 50, channels: int = 2) -> None:
        self.size, self.channels = size, channels
        self.values: deque[torch.Tensor] = deque(maxlen=size)

    def update(self, m_sharp: torch.Tensor) -> None:
        self.values.append(m_sharp.detach().abs().mean(dim=(0, 2, 3)).float().cpu())

    def mean(self, device: torch.device | str = "cpu") -> torch.Tensor:
        if not self.values:
            return torch.zeros(self.channels, device=device)
        return torch.stack(list(self.values)).mean(0).to(device)

    def state_dict(self) -> dict:
        return {"size": self.size, "values": [v.clone() for v in self.values]}

    def load_state_dict(self, state: dict) -> None:
        self.values = deque((v.clone() for v in state["values"]), maxlen=state["size"])
        self.size = state["size"]


class SharpMotionImagePool(SharpMotionPool):
    """μ_sharp as the official code keeps it: an image pool of the last ``size`` sharp images' motion maps,
    μ = mean |vn M(S)| over all of them (each image's per-channel mean is kept: crops share one size, so
    the mean of means is the mean over the pool's pixels). Ours pools the last ``size`` *batches*."""

    def update(self, m_sharp: torch.Tensor) -> None:
        self.values.extend(m_sharp.detach().abs().mean(dim=(2, 3)).float().cpu().unbind(0))


# --- natural-image prior (LSGAN, summed over discriminator scales) ----------------------------------

def discriminator_loss(d_fake: list[torch.Tensor], d_real: list[torch.Tensor]) -> torch.Tensor:
    """Σ_scales MSE(D(Ŝ), 0) + MSE(D(real), 1); "real" mixes sharp and blurry natural images."""
    return sum(F.mse_loss(f, torch.zeros_like(f)) + F.mse_loss(r, torch.ones_like(r))
               for f, r in zip(d_fake, d_real))


def generator_adversarial_loss(d_fake: list[torch.Tensor]) -> torch.Tensor:
    """Σ_scales MSE(D(Ŝ), 1): Ŝ must look like a natural image to D."""
    return sum(F.mse_loss(f, torch.ones_like(f)) for f in d_fake)
