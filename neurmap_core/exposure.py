"""Exposure fraction from the footage, for cameras that do not report it.

The blur of frame t is the sharp scene convolved with a streak of e·v_t (:mod:`.flow_motion`); only e is
unknown. Blur along locally uniform motion commutes, so for two neighbouring frames a, b (both warped
half-way by flow onto a middle grid, so both carry the same interpolation blur)
``S ∗ k(e·v_a) ∗ k(e·v_b)`` can be reached two ways:

    R(warp(B_a), e·v_b)   and   R(warp(B_b), e·v_a)

— blur each frame with the *other's* motion. At the true e both are the same image (whatever the scene);
at a wrong e they differ where v_a ≠ v_b. Both sides get smoother as e grows, so the residual is compared
as a ratio of gradient energies, ‖∇(L − R)‖² / (‖∇L‖² + ‖∇R‖²), which an over-blurred pair does not win
by blurring. The estimate is the fraction on a grid over (0, 1] with the lowest ratio summed over the
clip's neighbouring pairs, refined by a parabola through the minimum and its neighbours.

Measured on camera-shake clips with known fractions (``bench/adapt_stream.py``, ``tests/test_flow_motion.py``):
it reads the *effective* fraction of the flow-derived velocities — fast shake that the central difference
under-reads (sin(ω)/ω) pushes it up, which is the fraction that makes flow-derived blur right.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import cv2
import numpy as np
import torch

from .errors import InputError
from .flow_motion import FlowEstimator, FrameLike, to_gray_u8, velocity, velocity_to_motion
from .reblur import reblur

GRID = tuple(np.round(np.linspace(0.1, 1.0, 10), 3).tolist())


@dataclass
class ExposureEstimate:
    exposure: float
    grid: list = field(default_factory=list)
    residual: list = field(default_factory=list)     # the ratio per grid value (lower is better)
    pairs: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"exposure": round(self.exposure, 4), "pairs": self.pairs, "seconds": round(self.seconds, 3),
                "grid": self.grid, "residual": [round(v, 5) for v in self.residual]}


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Sample ``image`` (H×W or H×W×C float32) at p + flow(p); ``flow`` (2,H,W) (dy, dx) pixels."""
    h, w = flow.shape[1:]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return cv2.remap(np.ascontiguousarray(image, dtype=np.float32), xs + flow[1], ys + flow[0],
                     cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)


def _grad_energy(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean(dim=(-3, -2, -1)) + \
        (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean(dim=(-3, -2, -1))


def _downscale(frames: Sequence[FrameLike], max_side: int) -> list[np.ndarray]:
    gray = [to_gray_u8(f) for f in frames]
    h, w = gray[0].shape
    s = min(1.0, max_side / max(h, w))
    if s < 1.0:
        size = (max(8, int(round(w * s))), max(8, int(round(h * s))))
        gray = [cv2.resize(g, size, interpolation=cv2.INTER_AREA) for g in gray]
    return gray


@torch.no_grad()
def estimate_exposure(frames: Sequence[FrameLike], max_side: int = 256, max_pairs: int = 8,
                      grid: Sequence[float] = GRID, flow: Optional[FlowEstimator] = None,
                      margin: int = 12, points: int = 3) -> ExposureEstimate:
    """The exposure fraction of a clip of >= 3 consecutive frames (see the module's docstring).

    Works on grey frames downscaled to ``max_side`` pixels (the fraction does not depend on scale), over up
    to ``max_pairs`` neighbouring pairs spread along the whole clip (the fraction is the camera's, while the
    motion changes along a clip: give it all the frames there are). ``points``: the velocity stencil
    (:func:`~.flow_motion.velocity`) the fraction is for — estimate it with the one the motion will use."""
    import time

    t0 = time.perf_counter()
    if len(frames) < 3:
        raise InputError(f"estimating the exposure needs >= 3 consecutive frames, got {len(frames)}; "
                         "give it with --exposure (shutter time × frame rate)")
    gray = _downscale(frames, max_side)
    if len({g.shape for g in gray}) != 1:
        raise InputError("estimating the exposure needs frames of one size")
    flow = flow or FlowEstimator()
    starts = sorted(set(np.linspace(0, len(gray) - 2, min(max_pairs, len(gray) - 1)).round().astype(int).tolist()))
    # only the pairs' frames need a velocity, so a long clip costs no more than ``max_pairs`` pairs
    vel = {t: velocity(gray, t, flow, points) for t in sorted({t for a in starts for t in (a, a + 1)})}
    grid_t = torch.tensor([float(e) for e in grid])
    tot = torch.zeros(len(grid_t))
    h, w = gray[0].shape
    c = (slice(margin, h - margin), slice(margin, w - margin)) if min(h, w) > 4 * margin else (slice(None),) * 2
    for a in starts:
        b = a + 1
        # both frames warped half-way onto a middle grid, so both sides carry the same interpolation blur
        half = flow(gray[b], gray[a]) / 2.0                    # b's grid -> where it is in a, halved
        wa = torch.from_numpy(warp(gray[a].astype(np.float32) / 255.0, half))[None, None]
        gb = torch.from_numpy(warp(gray[b].astype(np.float32) / 255.0, -half))[None, None]
        va = np.stack([warp(vel[a][i], half) for i in range(2)])
        vb = np.stack([warp(vel[b][i], -half) for i in range(2)])
        n = len(grid_t)
        mb = torch.stack([velocity_to_motion(vb, float(e)) for e in grid_t])          # (n,2,H,W)
        ma = torch.stack([velocity_to_motion(va, float(e)) for e in grid_t])
        left = reblur(wa.expand(n, -1, -1, -1), mb)[..., c[0], c[1]]
        right = reblur(gb.expand(n, -1, -1, -1), ma)[..., c[0], c[1]]
        tot += _grad_energy(left - right) / (_grad_energy(left) + _grad_energy(right)).clamp_min(1e-12)
    i = int(tot.argmin())
    e = float(grid_t[i])
    if 0 < i < len(grid_t) - 1:                                   # parabola through the minimum and neighbours
        y0, y1, y2 = (float(tot[j]) for j in (i - 1, i, i + 1))
        den = y0 - 2 * y1 + y2
        if den > 0:
            step = float(grid_t[i + 1] - grid_t[i])
            e = float(np.clip(e + 0.5 * step * (y0 - y2) / den, grid_t[i - 1], grid_t[i + 1]))
    return ExposureEstimate(e, [float(g) for g in grid_t], (tot / len(starts)).tolist(), len(starts),
                            time.perf_counter() - t0)
