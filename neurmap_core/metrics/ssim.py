"""SSIM and MS-SSIM (Wang et al. 2004 / 2003) in torch, differentiable.

SSIM follows the standard definition used by MATLAB ``ssim`` and by
``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``:
an 11x11 Gaussian window (sigma 1.5), K1=0.01, K2=0.03, population (biased) local statistics, the
map averaged over the "valid" region (no padding) and over channels.

MS-SSIM uses 5 scales with the standard weights, downsampling by 2x2 averaging between scales:
``MS-SSIM = prod_{j<M} cs_j^w_j * ssim_M^w_M``.

Why MS-SSIM here is robust (it is used as a training loss on the outputs of freshly initialised nets):
the per-scale terms ``cs_j`` and ``ssim_M`` lie in [-1, 1], not [0, 1]. For out-of-range or
anti-correlated images (a new net outputs values like -3..4) a term can be negative, and a negative
number raised to a fractional weight (0.0448, 0.2856, ...) is NaN; a term that is exactly 0 has an
infinite derivative ``w * 0**(w-1)``. Both poison the loss and every gradient. We therefore floor each
per-scale, per-channel term at ``eps`` (a relu, as pytorch_msssim does, plus a small positive floor)
before the power. For natural image pairs all terms are far above ``eps`` and the value is the
standard one; below the floor a term contributes ``eps**w`` and no gradient (like a relu), and
above it the derivative is at most ``w * eps**(w-1)``, finite. The local statistics are computed on
the images minus their means (less cancellation in E[x^2]-E[x]^2), and the variance denominator is
floored at C2/100 against rounding, so nothing divides by zero, whatever the input.
Images too small for 5 scales use fewer (the first M that fit the 11-pixel window, weights renormalised
to sum to 1); images under 11 pixels use one scale with the window shrunk to the image.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import InputError
from ._common import as_pair

WIN_SIZE = 11
SIGMA = 1.5
K1 = 0.01
K2 = 0.03
MS_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_EPS = 1e-4
"""Floor for each MS-SSIM term before the fractional power (see the module docstring)."""


def gaussian_window_1d(size: int = WIN_SIZE, sigma: float = SIGMA, dtype=torch.float32, device=None) -> torch.Tensor:
    """Normalised 1-D Gaussian of odd length ``size``; its outer product is the 2-D SSIM window."""
    r = (size - 1) / 2.0
    t = torch.arange(size, dtype=torch.float64) - r
    g = torch.exp(-(t * t) / (2.0 * sigma * sigma))
    return (g / g.sum()).to(dtype=dtype, device=device)


def _window_for(h: int, w: int, win_size: int) -> int:
    win = min(win_size, h, w)
    return win if win % 2 == 1 else win - 1


def _filter_valid(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter of every channel of x (B,C,H,W), 'valid' region only."""
    c = x.shape[1]
    k = g.numel()
    x = F.conv2d(x, g.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)
    return F.conv2d(x, g.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)


def _ssim_cs(x: torch.Tensor, y: torch.Tensor, data_range: float, win: int, sigma: float):
    """Per-image, per-channel mean SSIM and mean contrast-structure term cs, each (B,C)."""
    c = x.shape[1]
    g = gaussian_window_1d(win, sigma, dtype=x.dtype, device=x.device)
    # (co)variances are shift-invariant: filter images minus their (constant) global means so that
    # E[x^2]-E[x]^2 does not cancel catastrophically on bright or out-of-range images
    a = x.detach().mean(dim=(2, 3), keepdim=True)
    b = y.detach().mean(dim=(2, 3), keepdim=True)
    xc, yc = x - a, y - b
    # one depthwise pass over the five statistics
    stats = _filter_valid(torch.cat([xc, yc, xc * xc, yc * yc, xc * yc], dim=1), g)
    mu_xc, mu_yc, e_xx, e_yy, e_xy = torch.split(stats, c, dim=1)
    var_x = e_xx - mu_xc * mu_xc
    var_y = e_yy - mu_yc * mu_yc
    cov_xy = e_xy - mu_xc * mu_yc
    mu_x, mu_y = mu_xc + a, mu_yc + b
    c1 = (K1 * data_range) ** 2
    c2 = (K2 * data_range) ** 2
    # var_x + var_y >= 0 exactly; the floor only guards against rounding, never active on real images,
    # and leaves x == y giving exactly 1 (numerator and denominator are then bitwise equal)
    cs_map = (2.0 * cov_xy + c2) / (var_x + var_y + c2).clamp_min(0.01 * c2)
    lum_map = (2.0 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)
    ssim_map = lum_map * cs_map
    return ssim_map.mean(dim=(2, 3)), cs_map.mean(dim=(2, 3))


def ssim_per_image(x, y, data_range: float = 1.0, win_size: int = WIN_SIZE, sigma: float = SIGMA) -> torch.Tensor:
    """SSIM of each image pair, (B,), averaged over channels; differentiable."""
    xt, yt = as_pair(x, y)
    if data_range <= 0:
        raise InputError(f"data_range must be positive, got {data_range}")
    win = _window_for(xt.shape[-2], xt.shape[-1], win_size)
    s, _ = _ssim_cs(xt, yt, float(data_range), win, sigma)
    return s.mean(dim=1)


def ssim(x, y, data_range: float = 1.0, win_size: int = WIN_SIZE, sigma: float = SIGMA) -> torch.Tensor:
    """Mean SSIM over the batch (0-dim tensor, differentiable).

    ``x``, ``y``: tensors (B,C,H,W)/(C,H,W) or numpy HxWxC arrays (uint8, or float in [0,1]).
    """
    return ssim_per_image(x, y, data_range, win_size, sigma).mean()


def _num_scales(h: int, w: int, win_size: int, max_scales: int) -> int:
    n, s = 0, min(h, w)
    while n < max_scales and s >= win_size:
        n += 1
        s = (s + 1) // 2
    return n


def ms_ssim_per_image(x, y, data_range: float = 1.0, weights=MS_WEIGHTS, eps: float = MS_EPS,
                      win_size: int = WIN_SIZE, sigma: float = SIGMA) -> torch.Tensor:
    """MS-SSIM of each image pair, (B,); finite with finite gradients for any finite input."""
    xt, yt = as_pair(x, y)
    if data_range <= 0:
        raise InputError(f"data_range must be positive, got {data_range}")
    if eps <= 0:
        raise InputError(f"eps must be positive (it keeps fractional powers finite), got {eps}")
    h, w = xt.shape[-2:]
    levels = _num_scales(h, w, win_size, len(weights))
    win = win_size
    if levels == 0:  # smaller than the window: one scale, window shrunk to the image
        levels, win = 1, _window_for(h, w, win_size)
    wts = torch.tensor(weights[:levels], dtype=xt.dtype, device=xt.device)
    wts = wts / wts.sum()
    terms = []
    for level in range(levels):
        s, cs = _ssim_cs(xt, yt, float(data_range), win, sigma)
        if level == levels - 1:
            terms.append(s)
        else:
            terms.append(cs)
            # 2x2 mean; a trailing odd row/column is averaged on its own (ceil_mode)
            xt = F.avg_pool2d(xt, kernel_size=2, stride=2, ceil_mode=True)
            yt = F.avg_pool2d(yt, kernel_size=2, stride=2, ceil_mode=True)
    v = torch.stack(terms, dim=0).clamp_min(eps)        # (levels, B, C): relu + floor, see module doc
    val = torch.exp((wts.view(-1, 1, 1) * torch.log(v)).sum(dim=0))
    return val.mean(dim=1)


def ms_ssim(x, y, data_range: float = 1.0, weights=MS_WEIGHTS, eps: float = MS_EPS,
            win_size: int = WIN_SIZE, sigma: float = SIGMA) -> torch.Tensor:
    """Mean MS-SSIM over the batch (0-dim tensor, differentiable; use ``1 - ms_ssim`` as a loss)."""
    return ms_ssim_per_image(x, y, data_range, weights, eps, win_size, sigma).mean()


# --- the official NeurMAP code's MS-SSIM (jorge-pessoa ``pytorch_msssim.msssim``), for official_compat --------

def _official_range(img: torch.Tensor) -> float:
    """Data range as pytorch_msssim guesses it from its *first* image: 255 if max > 128 else 1, minus -1 if
    min < -0.5 else 0 (so 1, 2, 255 or 256)."""
    hi = 255.0 if float(img.detach().max()) > 128 else 1.0
    lo = -1.0 if float(img.detach().min()) < -0.5 else 0.0
    return hi - lo


def _official_window_1d(size: int, sigma: float = SIGMA, dtype=torch.float32, device=None) -> torch.Tensor:
    """pytorch_msssim's Gaussian: centred on tap ``size // 2`` (off-centre for the even sizes it falls back to),
    rounded to float32 and normalised in float32 as it does (the rounding shows at 1e-6 in the result)."""
    g = torch.tensor([math.exp(-((k - size // 2) ** 2) / (2.0 * sigma * sigma)) for k in range(size)],
                     dtype=torch.float32)
    return (g / g.sum()).to(dtype=dtype, device=device)


def ms_ssim_official(img1: torch.Tensor, img2: torch.Tensor, eps: float = MS_EPS) -> torch.Tensor:
    """MS-SSIM exactly as the official NeurMAP training computes it (``pytorch_msssim.msssim``, jorge-pessoa),
    so that ``official_compat`` reproduces the published iteration; :func:`ms_ssim` stays our default.

    What differs from the standard :func:`ms_ssim` (all on purpose, to match): the result is
    ``prod_{j<5}(cs_j^w_j · ssim_5^w_5)``, so the last-scale SSIM is raised to 4·w_5 = 0.5332; ``cs_j`` and
    ``ssim_5`` are means over the whole batch (one number, not per image); the data range is guessed from
    ``img1`` at every scale (:func:`_official_range`: argument order matters); always 5 scales, 2×2
    average pooling that drops an odd row/column, the window shrunk to ``min(11, H, W)`` when a scale is
    smaller (8×8 at the 5th scale of a 128² crop), no padding.

    The one deliberate departure: the official formula is NaN when a ``cs_j`` or ``ssim_5`` is negative (a
    fractional power of a negative number) and has an infinite gradient at 0. Here every term is floored at
    ``eps`` before the power (a relu with a floor, as in :func:`ms_ssim`): wherever the official value is
    finite and every term is above ``eps`` (all natural-image pairs) the two agree; where it would be NaN
    this is finite, and a floored term passes no gradient. Images under 16 px have no 5th scale: refused.
    """
    x, y = as_pair(img1, img2)
    if min(x.shape[-2:]) < 2 ** (len(MS_WEIGHTS) - 1):
        raise InputError(f"official MS-SSIM needs images of at least {2 ** (len(MS_WEIGHTS) - 1)} px for its "
                         f"5 scales, got {tuple(x.shape[-2:])}; use larger crops or official_compat: off")
    c = x.shape[1]
    ssim_last, terms = x.new_zeros(()), []
    for level in range(len(MS_WEIGHTS)):
        rng = _official_range(x)
        win = min(WIN_SIZE, x.shape[-2], x.shape[-1])
        g = _official_window_1d(win)                       # float32, multiplied out in float32 as published
        w2 = g.view(-1, 1).mm(g.view(1, -1)).to(dtype=x.dtype, device=x.device).expand(c, 1, win, win)
        mu1, mu2 = F.conv2d(x, w2, groups=c), F.conv2d(y, w2, groups=c)
        s11 = F.conv2d(x * x, w2, groups=c) - mu1 * mu1
        s22 = F.conv2d(y * y, w2, groups=c) - mu2 * mu2
        s12 = F.conv2d(x * y, w2, groups=c) - mu1 * mu2
        c1, c2 = (K1 * rng) ** 2, (K2 * rng) ** 2
        v1, v2 = 2.0 * s12 + c2, s11 + s22 + c2
        terms.append((v1 / v2).mean())
        if level == len(MS_WEIGHTS) - 1:     # only the last scale's SSIM enters the formula
            ssim_last = ((2.0 * mu1 * mu2 + c1) * v1 / ((mu1 * mu1 + mu2 * mu2 + c1) * v2)).mean()
        else:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    wts = torch.tensor(MS_WEIGHTS, dtype=x.dtype, device=x.device)
    cs = torch.stack(terms[:-1]).clamp_min(eps)            # finite where the official turns NaN (docstring)
    last = ssim_last.clamp_min(eps)
    return torch.prod(cs ** wts[:-1] * last ** wts[-1])
