"""One image's linear blur, read in closed form: the motion net's prior (issue #13).

A learned motion net barely reads the direction of camera-shake blur at the compute we have (on held-out shake,
the shipped OffsetNet's direction with the *true* length scores no better than none;
``experiments/motion_bounds.py``), while two classical cues read it from the blurry image alone:

* **direction** — blur along u smooths the image's gradients along u, so u is the direction of least gradient
  energy: the minor eigenvector of the image's gradient structure tensor, weighted toward its strongest edges
  (the edges that stay sharp run along u; weak texture mostly reads the scene's own orientation);
* **length** — along u, the derivative of a blurred image is the difference of two copies of the sharp one a
  blur length L apart, so its autocorrelation along u has a deep minimum at lag L (Yitzhaky & Kopeika 1997).

Both are read once per image (camera shake blurs a frame nearly uniformly: the true direction with each frame's
mean length scores 0.05 on the held-out clips), so the prior is one (dy, dx) per image, spread over its pixels.
Pure tensor ops (no atan2), float32 whatever the autocast, no gradient to the image, exportable to ONNX
(GridSample, ArgMax).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

#: lags of the autocorrelation, px: 0.5 ... 16 in steps of 0.5. On 16 training-split shake clips (192×256, up to 15
#: px) the longest lag 12 / 16 / 24 px reads the blur with an error of 0.47 / 0.54 / 0.61 of it (uncalibrated):
#: long lags find spurious minima in small blurs. 16 covers the clips' blur; larger frames are read pooled (below).
LAG_STEP, MAX_LAG = 0.5, 16.0
#: the two rules below were chosen on camera-shake clips of training-split photos only
#: (``experiments/prior_select.py``: the scale fitted on 16 clips, the error read on 32 others):
#: the length is the *first* local minimum of the autocorrelation at least DEPTH times as deep as the global one —
#: periodic texture adds spurious far minima (a 0.9 px blur read as 9 px); with the plain tensor, depth 1.0 (the
#: global minimum) / 0.6 / 0.4 / 0.3 read with an error of 0.432 / 0.403 / 0.397 / 0.398.
DEPTH = 0.4
#: the structure tensor weighs each pixel's gradient by (|g|² / max |g|²)^(EDGE_POWER/2 − 1): power 2 (the plain
#: tensor) / 4 / 8 / 12 / 16 / 24 read with an error of 0.397 / 0.347 / 0.308 / 0.302 / 0.297 / 0.306.
EDGE_POWER = 16
#: frames are read at most this large (short side, px), pooled by a whole factor: blur in px grows with the
#: resolution while the lags stop at MAX_LAG. On frames 40-59 of the real 720p ``car`` clip (their flow-derived
#: blur up to 19 px long) reading at full size / at 360 / at 256 gives 0.49x / 0.64x / 0.73x of the flow's length
#: (EPE 0.64 / 0.56 / 0.59 against it), and a quarter of the full-size cost at 360. The selection clips (192×256)
#: are read as they are.
READ_SHORT_SIDE = 360
MOTION_SCALE = 20.0      # the motion net's unit (neurmap.core.models.motion.MOTION_SCALE)


def blur_direction(gray: torch.Tensor, edge_power: int = EDGE_POWER) -> torch.Tensor:
    """(B,1,H,W) luma → (B,2) unit (dy, dx) of least edge-weighted gradient energy over the whole image (sign
    arbitrary)."""
    gy = (gray[:, :, 2:, 1:-1] - gray[:, :, :-2, 1:-1]) * 0.5
    gx = (gray[:, :, 1:-1, 2:] - gray[:, :, 1:-1, :-2]) * 0.5
    peak = (gy * gy + gx * gx).amax((1, 2, 3), keepdim=True).clamp(min=1e-12).sqrt()
    gy, gx = gy / peak, gx / peak                      # |g| <= 1: the weight below neither overflows nor underflows
    w = (gy * gy + gx * gx) ** (edge_power // 2 - 1)
    syy, sxx, sxy = (w * gy * gy).mean((1, 2, 3)), (w * gx * gx).mean((1, 2, 3)), (w * gy * gx).mean((1, 2, 3))
    r = torch.sqrt((sxx - syy) ** 2 + 4 * sxy ** 2).clamp(min=1e-12)
    c2, s2 = (sxx - syy) / r, 2 * sxy / r             # cos, sin of twice the angle φ of the largest energy
    cos_phi = torch.sqrt(((1 + c2) * 0.5).clamp(min=1e-12))
    sign = (s2 >= 0).to(gray.dtype) * 2 - 1            # not torch.where(.., 1.0, -1.0): ONNX makes that double
    sin_phi = sign * torch.sqrt(((1 - c2) * 0.5).clamp(min=1e-12))
    return torch.stack([cos_phi, -sin_phi], 1)        # the perpendicular of (cos φ, sin φ) in (x, y), as (dy, dx)


def _base_grid(gray: torch.Tensor) -> torch.Tensor:
    """grid_sample's identity grid for (B,1,H,W), (B,H,W,2) (x, y) in [-1, 1] (align_corners=True)."""
    b, _, h, w = gray.shape
    ys = torch.linspace(-1.0, 1.0, h, dtype=gray.dtype, device=gray.device).view(1, h, 1).expand(b, h, w)
    xs = torch.linspace(-1.0, 1.0, w, dtype=gray.dtype, device=gray.device).view(1, 1, w).expand(b, h, w)
    return torch.stack([xs, ys], -1)


def _shift(gray: torch.Tensor, base: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """gray(p + offset) per image, bilinear, border-replicated; ``step`` (B,2) the offset in grid units (x, y).
    Built from GridSample alone (affine_grid needs ONNX opset 20)."""
    grid = (base + step[:, None, None, :]).to(gray.dtype)      # the ONNX tracer promotes scalars to double
    return F.grid_sample(gray, grid, mode="bilinear", padding_mode="border", align_corners=True)


def blur_length(gray: torch.Tensor, u: torch.Tensor, step: float = LAG_STEP, max_lag: float = MAX_LAG,
                depth: float = DEPTH) -> torch.Tensor:
    """(B,1,H,W) luma and (B,2) direction → (B,) full blur length in px: the first lag where the autocorrelation of
    the derivative along u (over the interior, away from the replicated border) has a local minimum at least
    ``depth`` times as deep as its most negative value."""
    n = int(round(max_lag / step))
    m = min(int(max_lag) + 1, gray.shape[-2] // 8, gray.shape[-1] // 8)
    inner = (slice(None), slice(None), slice(m, gray.shape[-2] - m), slice(m, gray.shape[-1] - m))
    base = _base_grid(gray)
    h, w = (int(v) for v in gray.shape[-2:])
    per_px = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], dtype=gray.dtype, device=gray.device)
    unit = u.flip(1) * per_px                        # one px along u, (dy, dx) -> (x, y) in grid units
    samples = [_shift(gray, base, unit * (j * step))[inner] for j in range(-1, n + 2)]   # offsets -step ... (n+1)·step
    # derivative along u, centred at half-steps: d_j = g(p + (j+1/2)·step·u) − g(p + (j−1/2)·step·u)
    d0 = samples[2] - samples[0]                                                 # at p (j = 0, offsets ±step)
    d0 = d0 - d0.mean((1, 2, 3), keepdim=True)
    energy = (d0 * d0).mean((1, 2, 3)).clamp(min=1e-12)
    corr = []
    for k in range(1, n + 1):          # lag k·step: the derivative at p + k·step·u
        dk = samples[k + 2] - samples[k]
        corr.append(((dk - dk.mean((1, 2, 3), keepdim=True)) * d0).mean((1, 2, 3)) / energy)
    c = torch.stack(corr, 1)
    gmin = c.min(1, keepdim=True).values
    local = torch.zeros_like(c, dtype=torch.bool)
    local[:, 1:-1] = (c[:, 1:-1] <= c[:, :-2]) & (c[:, 1:-1] <= c[:, 2:])
    deep = (local & (c <= depth * gmin)) | (c <= gmin)     # the global minimum always qualifies
    idx = deep.to(torch.int32).argmax(1)              # the first qualifying lag (ArgMax exports; nonzero does not)
    return (idx + 1).to(gray.dtype) * step


def frame_blur(x: torch.Tensor, edge_power: int = EDGE_POWER, depth: float = DEPTH) -> torch.Tensor:
    """(B,3,H,W) images in [0, 1] → (B,2,H,W) blur motion in the motion net's units, one vector per image:
    the blur direction with half the blur length (uncalibrated; the motion net scales it, ``prior_scale``)."""
    with torch.autocast(x.device.type, enabled=False):
        # a reading, not a path for gradients: through atan-free direction and first-minimum length they are zero or
        # explode where the image is nearly isotropic (a NeurMAP run's G went to NaN through M(G(B)))
        gray = x.detach().float().mean(1, keepdim=True)
        k = max(1, min(x.shape[-2:]) // READ_SHORT_SIDE)         # a Python int: static in an exported graph
        if k > 1:
            gray = F.avg_pool2d(gray, k)
        u = blur_direction(gray, edge_power)
        half = blur_length(gray, u, depth=depth) * (0.5 * k)
        m = u * (half / MOTION_SCALE)[:, None]
        return m[:, :, None, None].expand(-1, -1, x.shape[-2], x.shape[-1])
