"""The adaptation objective: SPEC's unpaired deblur-net terms with the motion net frozen, and μ_sharp.

Shared by the training steps and the guard's held-out score, so both measure exactly the same thing.
"""
from __future__ import annotations

import torch
from torch import nn

from neurmap.core.errors import NeurmapError

from .adapt_config import AdaptConfig


def _motion(M: nn.Module, x: torch.Tensor) -> torch.Tensor:
    from neurmap.core.reblur import canonical_motion
    return canonical_motion(M(x).float())


def adaptation_terms(G: nn.Module, M: nn.Module, blurry: torch.Tensor, mu_sharp: torch.Tensor,
                     with_tv: bool = False) -> dict[str, torch.Tensor]:
    """SPEC's unpaired G terms on ``blurry`` crops (M frozen, m_rel constant). Differentiable in G."""
    from neurmap.core import losses as L
    from neurmap.core.reblur import reblur

    s_hat = G(blurry).float()
    if not torch.isfinite(s_hat.detach()).all():  # a diverged G: report an infinite loss, never crash M's checks
        inf = s_hat.new_tensor(float("inf"))
        return {"reblur": inf, "sharp": inf, "tv": inf, "_s_hat": s_hat, "_blur_px": inf}
    with torch.no_grad():
        m_b = _motion(M, blurry)
    m_f = _motion(M, s_hat)                      # grads reach Ŝ through the frozen M
    m_rel = (m_b - m_f).detach()
    out = {"reblur": L.reblur_loss(reblur(s_hat, m_rel), blurry),
           "sharp": L.sharpness_prior_loss(m_f, mu_sharp),
           "_blur_px": 20.0 * m_b.abs().mean()}     # the blur M reads in the input, in pixels
    if with_tv:
        out["tv"] = L.total_variation(s_hat)
    out["_s_hat"] = s_hat
    return out


def weighted(terms: dict, cfg: AdaptConfig) -> torch.Tensor:
    total = cfg.w_reblur * terms["reblur"] + cfg.w_sharp * terms["sharp"]
    if cfg.w_tv and "tv" in terms:
        total = total + cfg.w_tv * terms["tv"]
    return total


@torch.no_grad()
def estimate_mu_sharp(G: nn.Module, M: nn.Module, crops: torch.Tensor, quantile: float = 0.1,
                      chunk: int = 4) -> torch.Tensor:
    """μ_sharp for "auto": per channel, the ``quantile`` of |vn M(G₀(B))| over the crops' pixels.

    That is the residual motion M reports where the *initial* model already restored best: M's floor on
    this camera's images (its noise, texture, compression), which real sharp images of the camera would
    show too. Pushing the rest of the output toward that floor asks for sharper output without asking M for
    a zero it never gives on real frames (SPEC trains μ_sharp from sharp images, which a deployed camera
    does not have)."""
    ms = []
    for i in range(0, crops.shape[0], chunk):
        ms.append(_motion(M, G(crops[i:i + chunk]).float()).abs())
    m = torch.cat(ms).transpose(0, 1).flatten(1)          # (2, N·H·W)
    k = max(1, int(quantile * m.shape[1]))
    return m.kthvalue(k, dim=1).values


def resolve_mu(cfg: AdaptConfig, G, M, crops: torch.Tensor, device) -> torch.Tensor:
    mu = cfg.mu_sharp
    if isinstance(mu, str):
        if mu != "auto":
            try:
                mu = [float(v) for v in mu.split(",")]
            except ValueError:
                raise NeurmapError(f"mu_sharp {cfg.mu_sharp!r}: give 'auto', a number or 'dy,dx'") from None
        else:
            return estimate_mu_sharp(G, M, crops.to(device)).to(device)
    t = torch.as_tensor(mu, dtype=torch.float32, device=device).flatten()
    return t.expand(2).clone() if t.numel() == 1 else t
