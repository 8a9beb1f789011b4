"""NIQE (Mittal et al. 2013, "Making a completely blind image quality analyzer"), MATLAB-compatible.

Follows the official MATLAB release (``niqe.m`` / ``computequality.m``) with the pristine model shipped
with it, as BasicSR's ``calculate_niqe`` does:

* the image is made grayscale (OpenCV's BGR2GRAY on the 8-bit image by default; BasicSR's default,
  the BT.601 studio-range Y channel, with ``convert="y"``; MATLAB ``rgb2gray`` with ``"rgb2gray"``) and
  rounded to integers in [0, 255];
* it is cropped to whole 96x96 blocks (no overlap);
* two scales: the image, then the image resized by 0.5 with MATLAB's antialiased bicubic ``imresize``
  (Keys cubic a=-0.5, kernel widened by 1/scale, symmetric borders), in float32 as BasicSR;
* at each scale MSCN coefficients with the 7x7 Gaussian window of the model (``imfilter`` with
  'replicate' borders), and per block 18 features: a GGD fit (shape, variance) of the MSCN
  coefficients and AGGD fits (shape, mean, left and right scale) of the products with the 4
  neighbours (horizontal, vertical, two diagonals);
* the 36-D block features are modelled by a Gaussian and compared with the pristine one:
  ``sqrt((mu_p - mu) pinv((C_p + C)/2) (mu_p - mu)^T)``. Lower is better (more natural).

The pristine parameters (``mu_pris_param`` 1x36, ``cov_pris_param`` 36x36, ``gaussian_window`` 7x7) are
looked up, in order: the ``params`` argument (a path, or a mapping of the three arrays); the
environment variable ``NEURMAP_NIQE_PARAMS``; ``basicsr/metrics/niqe_pris_params.npz`` inside an
installed ``basicsr`` package (found without importing it); ``../shared/data/metrics/niqe_pris_params.npz``
beside the repository checkout.
"""
from __future__ import annotations

import importlib.util
import math
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy.ndimage import convolve
from scipy.special import gamma as gamma_fn

from ..errors import InputError, NeurmapError

BLOCK = 96
ENV_VAR = "NEURMAP_NIQE_PARAMS"
PARAM_KEYS = ("mu_pris_param", "cov_pris_param", "gaussian_window")
_SHARED_PARAMS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "metrics" / "niqe_pris_params.npz"


# ------------------------------------------------------------------------------------------ parameters
def _basicsr_params_path() -> Path | None:
    try:
        spec = importlib.util.find_spec("basicsr")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "metrics" / "niqe_pris_params.npz"
        if p.is_file():
            return p
    return None


def niqe_params_path(path=None) -> Path:
    """Where the pristine NIQE model comes from (see the module docstring for the order)."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise NeurmapError(f"NIQE parameters file {p} does not exist")
        return p
    env = os.environ.get(ENV_VAR)
    if env:
        p = Path(env)
        if not p.is_file():
            raise NeurmapError(f"{ENV_VAR}={env} does not name an existing file")
        return p
    p = _basicsr_params_path()
    if p is not None:
        return p
    if _SHARED_PARAMS.is_file():
        return _SHARED_PARAMS
    raise NeurmapError(
        "NIQE needs the pristine model niqe_pris_params.npz (mu_pris_param, cov_pris_param, gaussian_window): "
        f"pass params=PATH, set {ENV_VAR}=PATH, install basicsr, or place it at {_SHARED_PARAMS}")


@lru_cache(maxsize=4)
def _load_npz(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrs = tuple(np.asarray(z[k], dtype=np.float64) for k in PARAM_KEYS)
    except (OSError, ValueError, KeyError) as e:
        raise NeurmapError(f"cannot read NIQE parameters from {path}: {e}") from e
    return _check_params(*arrs, source=path)


def _check_params(mu, cov, win, source) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mu = np.asarray(mu, dtype=np.float64).reshape(1, -1)
    cov = np.asarray(cov, dtype=np.float64)
    win = np.asarray(win, dtype=np.float64)
    if mu.shape != (1, 36) or cov.shape != (36, 36) or win.ndim != 2:
        raise NeurmapError(f"NIQE parameters from {source} have shapes {mu.shape}, {cov.shape}, {win.shape}; "
                           "expected (1,36), (36,36) and a 2-D window")
    return mu, cov, win


def load_niqe_params(params=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mu_pris 1x36, cov_pris 36x36, gaussian_window) from a path, a mapping, or the default lookup."""
    if isinstance(params, dict):
        return _check_params(*(params[k] for k in PARAM_KEYS), source="the given mapping")
    return _load_npz(str(niqe_params_path(params).resolve()))


# ------------------------------------------------------------------------------- MATLAB-style imresize
def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return ((1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2)))


def _contributions(in_len: int, out_len: int, scale: float, antialias: bool):
    """Weights (out_len, P) and 0-based source indices (out_len, P) as MATLAB's ``contributions``."""
    width = 4.0
    if scale < 1 and antialias:
        kernel = lambda t: scale * _cubic(scale * t)  # noqa: E731
        width = width / scale
    else:
        kernel = _cubic
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)          # output pixel centre in input coordinates (1-based)
    left = np.floor(u - width / 2.0)
    taps = int(math.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]
    w = kernel(u[:, None] - idx)
    w = w / w.sum(axis=1, keepdims=True)
    # mirror out-of-range indices (MATLAB: aux = [1:n, n:-1:1], i.e. half-sample symmetric)
    aux = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    idx0 = aux[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]
    keep = np.any(w != 0, axis=0)                      # drop all-zero columns
    return w[:, keep], idx0[:, keep]


def imresize_matlab(img: np.ndarray, scale: float, antialias: bool = True) -> np.ndarray:
    """MATLAB ``imresize(img, scale)`` with the default bicubic kernel, for a 2-D (or HxWxC) float array.

    Output size is ``ceil(in * scale)``; no clipping or rounding (as MATLAB for double input).
    """
    a = np.asarray(img, dtype=np.float64)
    out = a
    for axis in (0, 1):                                 # MATLAB resizes rows first when scales are equal
        n = a.shape[axis]
        m = int(math.ceil(n * scale))
        w, idx = _contributions(n, m, scale, antialias)
        moved = np.moveaxis(out, axis, 0)               # (n, ...)
        gathered = moved[idx]                           # (m, P, ...)
        ww = w.reshape(w.shape + (1,) * (moved.ndim - 1))
        out = np.moveaxis((gathered * ww).sum(axis=1), 0, axis)
    return out


def _resize_weights_f32(n: int, m: int, scale: float):
    """MATLAB's antialiased bicubic weights for one axis in float32 torch, (m, P) and first taps (m,)."""
    import torch

    width = 4.0 / scale if scale < 1 else 4.0
    x = torch.linspace(1, m, m)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = torch.floor(u - width / 2)
    taps = math.ceil(width) + 2
    idx = left.view(m, 1) + torch.linspace(0, taps - 1, taps).view(1, taps)
    d = u.view(m, 1) - idx
    a = torch.abs(d * scale) if scale < 1 else torch.abs(d)
    k = ((1.5 * a ** 3 - 2.5 * a ** 2 + 1) * (a <= 1).type_as(a)
         + (-0.5 * a ** 3 + 2.5 * a ** 2 - 4 * a + 2) * ((a > 1) & (a <= 2)).type_as(a))
    w = scale * k if scale < 1 else k
    w = w / w.sum(1).view(m, 1)
    zeros = (w == 0).sum(0)
    if zeros[0] != 0:               # the first / last tap column goes when any row weights it zero
        idx, w = idx[:, 1:], w[:, 1:]
    if zeros[-1] != 0:
        idx, w = idx[:, :-1], w[:, :-1]
    return w.contiguous(), idx[:, 0].long()


def imresize_f32(img: np.ndarray, scale: float) -> np.ndarray:
    """``imresize_matlab`` for a 2-D image in float32 torch, one matrix-vector product per output line.

    NIQE's reference values (BasicSR's ``calculate_niqe``) come from this float32 arithmetic; on images
    with flat regions NIQE depends on its last bits, so the float64 resize does not reproduce them."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
    for axis in (0, 1):            # rows first, then columns, each in the layout the reference uses
        n = t.shape[axis]
        m = int(math.ceil(n * scale))
        w, first = _resize_weights_f32(n, m, scale)
        p = w.shape[1]
        lo = max(0, 1 - int(first.min()))                 # half-sample symmetric padding at both ends
        hi = max(0, int(first.max()) + p - 1 - n)         # (``first``: 1-based, as in MATLAB)
        parts = ([t.narrow(axis, 0, lo).flip(axis)] if lo else []) + [t]
        parts += [t.narrow(axis, n - hi, hi).flip(axis)] if hi else []
        padded = torch.cat(parts, axis).contiguous()
        out = torch.empty((m, t.shape[1]) if axis == 0 else (t.shape[0], m))
        for i in range(m):
            j = int(first[i]) - 1 + lo
            if axis == 0:
                out[i, :] = padded[j:j + p, :].t().mv(w[i])
            else:
                out[:, i] = padded[:, j:j + p].mv(w[i])
        t = out
    return t.contiguous().numpy()


# ------------------------------------------------------------------------------------------ features
_GAM = 0.2 + 0.001 * np.arange(9801)                   # MATLAB 0.2:0.001:10
_R_GAM = gamma_fn(2.0 / _GAM) ** 2 / (gamma_fn(1.0 / _GAM) * gamma_fn(3.0 / _GAM))


def _aggd_fit(v: np.ndarray) -> tuple[float, float, float]:
    """(alpha, beta_left, beta_right) of an asymmetric generalised Gaussian, moment matching as MATLAB."""
    v = v.ravel()
    neg, pos = v[v < 0], v[v > 0]
    if neg.size == 0 or pos.size == 0:
        return math.nan, math.nan, math.nan           # MATLAB gives NaN here too; such blocks are dropped
    left_std = math.sqrt(np.mean(neg * neg))
    right_std = math.sqrt(np.mean(pos * pos))
    gammahat = left_std / right_std
    mean_sq = np.mean(v * v)
    rhat = np.mean(np.abs(v)) ** 2 / mean_sq
    rhatnorm = rhat * (gammahat ** 3 + 1) * (gammahat + 1) / (gammahat ** 2 + 1) ** 2
    alpha = float(_GAM[np.argmin((_R_GAM - rhatnorm) ** 2)])
    f = math.sqrt(gamma_fn(1.0 / alpha) / gamma_fn(3.0 / alpha))
    return alpha, left_std * f, right_std * f


# neighbour offsets as in the MATLAB code's circshift: right, down, down-right, down-left
_SHIFTS = ((0, 1), (1, 0), (1, 1), (-1, 1))


def _block_features(block: np.ndarray) -> list[float]:
    alpha, bl, br = _aggd_fit(block)
    feats = [alpha, (bl + br) / 2.0]
    for s in _SHIFTS:
        prod = block * np.roll(block, s, axis=(0, 1))
        a, l, r = _aggd_fit(prod)
        mean = (r - l) * gamma_fn(2.0 / a) / gamma_fn(1.0 / a) if not math.isnan(a) else math.nan
        feats.extend([a, mean, l, r])
    return feats


def _mscn(img: np.ndarray, window: np.ndarray) -> np.ndarray:
    # convolve (not correlate) and float32: in flat regions img - mu is rounding noise that the product
    # features amplify, so the reference values depend on the exact float32 operations
    mu = convolve(img, window, mode="nearest")
    sigma = np.sqrt(np.abs(convolve(np.square(img), window, mode="nearest") - np.square(mu)))
    return (img - mu) / (sigma + 1)


def niqe_gray(gray: np.ndarray, params=None, block: int = BLOCK) -> float:
    """NIQE of a 2-D grayscale image with values in [0, 255] (used as given: round it first for MATLAB parity)."""
    mu_p, cov_p, window = load_niqe_params(params)
    img = np.asarray(gray, dtype=np.float32)     # float32 throughout, as BasicSR (its reference values)
    if img.ndim != 2:
        raise InputError(f"niqe_gray needs a 2-D image, got shape {img.shape}")
    nh, nw = img.shape[0] // block, img.shape[1] // block
    if nh < 1 or nw < 1:
        raise InputError(f"NIQE needs an image of at least {block}x{block} pixels, got {img.shape}")
    img = img[: nh * block, : nw * block]
    per_scale = []
    for scale in (1, 2):
        mscn = _mscn(img, window)
        bs = block // scale
        feats = [_block_features(mscn[i * bs:(i + 1) * bs, j * bs:(j + 1) * bs])
                 for j in range(nw) for i in range(nh)]
        per_scale.append(np.asarray(feats, dtype=np.float64))
        if scale == 1:
            img = imresize_f32(img / 255.0, 0.5) * 255.0
    feat = np.concatenate(per_scale, axis=1)           # (blocks, 36)
    mu_d = np.nanmean(feat, axis=0, keepdims=True)
    finite = feat[~np.isnan(feat).any(axis=1)]
    if finite.shape[0] < 2:
        raise InputError("NIQE: fewer than two image blocks have valid statistics (flat image?)")
    cov_d = np.cov(finite, rowvar=False)
    diff = mu_p - mu_d
    q = diff @ np.linalg.pinv((cov_p + cov_d) / 2.0) @ diff.T
    return float(np.sqrt(q.item()))


# --------------------------------------------------------------------------------------- colour input
def _rgb2gray_coef() -> np.ndarray:
    # MATLAB rgb2gray: first row of the inverse of the NTSC YIQ->RGB matrix (0.2989, 0.5870, 0.1140)
    t = np.linalg.inv(np.array([[1.0, 0.956, 0.621], [1.0, -0.272, -0.647], [1.0, -1.106, 1.703]]))
    return t[0]


def _to_uint8_rgb_array(img) -> np.ndarray:
    """HxWx3 (or HxW) float64 array with integer values 0..255 from a tensor/array in [0,1] or uint8."""
    try:
        import torch
        if isinstance(img, torch.Tensor):
            t = img.detach().cpu()
            if t.dim() == 4:
                if t.shape[0] != 1:
                    raise InputError(f"niqe takes one image, got a batch of {t.shape[0]}")
                t = t[0]
            if t.dim() == 3:
                t = t.permute(1, 2, 0)
            img = t.numpy() if t.is_floating_point() else t.to(torch.uint8).numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 3):
        raise InputError(f"niqe needs an HxW or HxWx3 image (or a (1,)3,H,W tensor), got shape {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float64)
    if not np.issubdtype(a.dtype, np.floating):
        raise InputError(f"niqe: image dtype {a.dtype} not supported (uint8, or float in [0,1])")
    return np.round(np.clip(a.astype(np.float64), 0.0, 1.0) * 255.0)


def to_gray_255(img, convert: str = "gray") -> np.ndarray:
    """Grayscale image in [0,255] with integer values (float32), as NIQE sees it.

    As BasicSR's ``calculate_niqe`` (whose values the tests match), in float32 from the 8-bit image:
    ``convert="gray"``: OpenCV's BGR2GRAY (0.299 R + 0.587 G + 0.114 B); ``convert="y"``: BT.601 studio
    range Y (16..235, BasicSR's default); ``convert="rgb2gray"``: MATLAB's ``rgb2gray`` (what ``niqe.m``
    users call). An HxW image counts as the three-channel image with that plane in every channel.
    """
    a = _to_uint8_rgb_array(img)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    bgr = np.ascontiguousarray(a[:, :, ::-1], dtype=np.float32)
    if convert == "gray":
        import cv2
        g = cv2.cvtColor(bgr / 255.0, cv2.COLOR_BGR2GRAY) * 255.0
    elif convert == "y":
        g = ((np.dot(bgr / 255.0, [24.966, 128.553, 65.481]) + 16.0) / 255.0).astype(np.float32) * 255.0
    elif convert == "rgb2gray":
        g = (a @ _rgb2gray_coef()).astype(np.float32)
    else:
        raise InputError(f"convert must be 'gray', 'y' or 'rgb2gray', got {convert!r}")
    return np.round(g)


def niqe(img, params=None, convert: str = "gray", crop_border: int = 0) -> float:
    """NIQE of one RGB or grayscale image (lower = more natural).

    ``img``: numpy HxWx3 / HxW (uint8, or float in [0,1]) or a tensor (3,H,W) / (1,3,H,W) in [0,1].
    ``params``: the pristine model (path or mapping; default lookup in the module docstring).
    ``convert``: 'gray' (OpenCV BGR2GRAY, default), 'y' (BasicSR's default Y channel) or 'rgb2gray'.
    """
    g = to_gray_255(img, convert)
    if crop_border:
        g = g[crop_border:-crop_border, crop_border:-crop_border]
    return niqe_gray(g, params)
