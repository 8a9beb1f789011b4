"""The guard of an adaptation round: the held-out score (objective by component, NIQE) and the deblurring probe.

The objective alone can be lowered by drifting toward the identity when the motion net underestimates the
blur; the probe (held-out outputs re-blurred with random camera shake must be restored as well as before)
catches that. :class:`~.adaptation.Adapter` compares these before and after a round.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import torch
from torch import nn

from .adapt_config import AdaptConfig
from .adapt_losses import adaptation_terms


@dataclass
class Score:
    total: float
    reblur: float
    sharp: float                        # SPEC's motion-net sharpness term; on the stream path the sharp anchor
    niqe: Optional[float] = None
    probe_psnr: Optional[float] = None
    sharp_psnr: Optional[float] = None  # G on already-sharp images (see sharp_psnr)
    blur_px: Optional[float] = None     # mean |motion| M reads in the (blurry) held-out crops

    def as_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@torch.no_grad()
def score(G: nn.Module, M: nn.Module, crops: torch.Tensor, mu: torch.Tensor, cfg: AdaptConfig,
          chunk: int = 2, with_niqe: bool = False) -> Score:
    """Held-out score (lower is better): the adaptation objective on fixed crops, by component; NIQE of the
    outputs laid side by side (crops of 96·k keep NIQE's blocks whole) when asked."""
    rb = sh = tv = blur = 0.0
    outs = []
    n = crops.shape[0]
    for i in range(0, n, chunk):
        x = crops[i:i + chunk]
        t = adaptation_terms(G, M, x, mu, with_tv=bool(cfg.w_tv))
        k = x.shape[0] / n
        rb += k * float(t["reblur"])
        sh += k * float(t["sharp"])
        tv += k * float(t.get("tv", 0.0))
        blur += k * float(t["_blur_px"])
        if with_niqe:
            outs.append(t["_s_hat"].clamp(0, 1).cpu())
    total = cfg.w_reblur * rb + cfg.w_sharp * sh + cfg.w_tv * tv
    nq = None
    if with_niqe:
        from neurmap.core.metrics import niqe
        mosaic = torch.cat(list(torch.cat(outs)), dim=-1)     # (3, h, n·w)
        nq = float(niqe(mosaic))
    return Score(total, rb, sh, nq, blur_px=blur)


@torch.no_grad()
def probe_pairs(G: nn.Module, held: torch.Tensor, seed: int = 0, max_px: float = 20.0,
                chunk: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """A no-ground-truth regression test of deblurring on this camera's content.

    Targets: the *current* model's outputs on the held-out crops (the best sharp estimate there is);
    inputs: those targets blurred with seeded random camera-shake fields (``random_motion_field``, up to
    ``max_px``). An update that makes G lean toward the identity — the degenerate solution a weak motion
    net lets the reblur term reach — or that stops deblurring in general, loses PSNR here. It checks that
    nothing was forgotten; it does not decide what improved (the unsupervised score and NIQE do)."""
    from neurmap.core.data import kernel_blur, random_motion_field

    target = torch.cat([G(held[i:i + chunk]).float().clamp(0, 1) for i in range(0, held.shape[0], chunk)])
    g = torch.Generator().manual_seed(seed + 104729)
    h, w = target.shape[-2:]
    m = torch.stack([random_motion_field(h, w, generator=g, max_px=max_px) for _ in range(target.shape[0])])
    blurry = kernel_blur(target, m.to(target.device), border="replicate").clamp(0, 1)
    return blurry, target


@torch.no_grad()
def probe_psnr(G: nn.Module, pairs: tuple[torch.Tensor, torch.Tensor], chunk: int = 2) -> float:
    from neurmap.core.metrics import psnr_per_image

    blurry, target = pairs
    vals = [psnr_per_image(G(blurry[i:i + chunk]).float(), target[i:i + chunk]) for i in range(0, len(blurry), chunk)]
    return float(torch.cat(vals).mean())


@torch.no_grad()
def sharp_psnr(G: nn.Module, pairs: tuple[torch.Tensor, torch.Tensor], chunk: int = 2) -> float:
    """PSNR of G on images that are already sharp — the probe's targets, the current model's outputs — against
    themselves. A deblurrer should leave them as they are; a round that taught G to sharpen beyond the blur
    (a motion source that over-reads, or a reblur objective that rewards halos) lowers it. That is the failure
    that makes nearly sharp frames worse, which the blurred probe does not see."""
    from neurmap.core.metrics import psnr_per_image

    target = pairs[1]
    vals = [psnr_per_image(G(target[i:i + chunk]).float().clamp(0, 1), target[i:i + chunk])
            for i in range(0, len(target), chunk)]
    return float(torch.cat(vals).mean())


def probe_if_guarded(G: nn.Module, held: torch.Tensor, cfg: AdaptConfig, seed: int):
    """The probe pairs when a probe guard (blurred or sharp) is on, else None."""
    return probe_pairs(G, held, seed) if cfg.probe_guard or cfg.sharp_guard else None


def measure_probes(G: nn.Module, probe, s: Score) -> None:
    """Fill ``s``'s probe readings (both are cheap: one forward of the held-out crops each)."""
    if probe is not None and math.isfinite(s.total):
        s.probe_psnr, s.sharp_psnr = probe_psnr(G, probe), sharp_psnr(G, probe)


def refusal(before: Score, after: Score, cfg: AdaptConfig) -> str:
    """Why a round whose score improved is still rejected by the reblur, probe, sharp and NIQE guards; "" to accept."""
    if cfg.reblur_guard and not after.reblur < before.reblur * (1.0 - cfg.min_gain):
        return (f"the reblur part of the score did not drop ({before.reblur:.5f} -> {after.reblur:.5f}): the round "
                "only made G leave the shrunk frames more alone, it did not explain the blur better")
    if cfg.probe_guard and after.probe_psnr is not None and after.probe_psnr < before.probe_psnr - cfg.probe_tol_db:
        return f"deblurring probe dropped {before.probe_psnr:.2f} -> {after.probe_psnr:.2f} dB"
    if cfg.sharp_guard and after.sharp_psnr is not None and after.sharp_psnr < before.sharp_psnr - cfg.sharp_tol_db:
        return (f"G now alters already-sharp images more (sharp probe {before.sharp_psnr:.2f} -> "
                f"{after.sharp_psnr:.2f} dB): the motion it learned from over-reads the blur")
    niqe = cfg.niqe_guard and before.niqe is not None and after.niqe is not None
    if niqe and after.niqe > before.niqe + cfg.niqe_tol:
        return f"NIQE rose {before.niqe:.3f} -> {after.niqe:.3f}"
    return ""
