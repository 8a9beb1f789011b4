"""Joint geometric transforms for training samples: resize, pad, random crop, horizontal flip.

A sample is a dict whose tensor values are (C,H,W) maps of one size (``blurry``, ``sharp``, ``motion``,
...). Every tensor gets the same crop and flip. Keys named in ``motion_keys`` hold motion maps
(channels dy, dx): a horizontal flip negates dx, a resize scales dy/dx with the height/width, and
mirrored padding negates the component it mirrors, so a flipped/padded blurry image still equals the
reblur of the flipped/padded sharp image with the transformed motion. Values that are not tensors pass
through untouched.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F

from ..errors import InputError

MOTION_KEYS = ("motion",)
#: (height, width) every image is resized to by the official NeurMAP loaders
OFFICIAL_SIZE = (720, 1280)

Size = Union[int, tuple[int, int]]


def _hw(size: Size) -> tuple[int, int]:
    if isinstance(size, int):
        h = w = size
    else:
        h, w = (int(v) for v in size)
    if h < 1 or w < 1:
        raise InputError(f"sizes must be positive, got {size!r}")
    return h, w


def _maps(sample: dict) -> dict:
    maps = {k: v for k, v in sample.items() if isinstance(v, torch.Tensor)}
    sizes = {tuple(v.shape[-2:]) for v in maps.values()}
    if any(v.dim() != 3 for v in maps.values()):
        raise InputError(f"sample tensors must be (C,H,W), got {({k: tuple(v.shape) for k, v in maps.items()})}")
    if len(sizes) > 1:
        raise InputError(f"sample tensors differ in size: {({k: tuple(v.shape) for k, v in maps.items()})}")
    return maps


def hflip(sample: dict, motion_keys=MOTION_KEYS) -> dict:
    """Mirror every map left-right; motion maps also get their dx channel negated."""
    out = dict(sample)
    for k, v in _maps(sample).items():
        f = v.flip(-1)
        if k in motion_keys:
            f = torch.cat((f[0:1], -f[1:2]), 0)
        out[k] = f
    return out


def pad_to(t: torch.Tensor, h: int, w: int, mode: str = "reflect", motion: bool = False) -> torch.Tensor:
    """Pad a (C,H,W) map (centred) to at least (h, w). ``reflect`` falls back to ``replicate`` where a
    side is too small to mirror; mirrored motion gets the mirrored component negated."""
    ih, iw = t.shape[-2:]
    ph, pw = max(0, h - ih), max(0, w - iw)
    if ph == 0 and pw == 0:
        return t
    top, left = ph // 2, pw // 2
    bottom, right = ph - top, pw - left
    if mode not in ("reflect", "replicate", "constant"):
        raise InputError(f"pad mode must be 'reflect', 'replicate' or 'constant', got {mode!r}")
    if mode == "reflect" and (max(top, bottom) >= ih or max(left, right) >= iw):
        mode = "replicate"
    x = t.unsqueeze(0)
    if mode == "replicate" and x.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        x = x.float()
    out = F.pad(x, (left, right, top, bottom), mode=mode)[0].to(t.dtype)
    if motion and mode == "reflect":
        sy = torch.ones(out.shape[-2], dtype=out.dtype)
        sy[:top] = -1
        sy[top + ih:] = -1
        sx = torch.ones(out.shape[-1], dtype=out.dtype)
        sx[:left] = -1
        sx[left + iw:] = -1
        out = torch.stack((out[0] * sy[:, None], out[1] * sx[None, :]))
    return out


def pad_sample(sample: dict, h: int, w: int, mode: str = "reflect", motion_keys=MOTION_KEYS) -> dict:
    """:func:`pad_to` on every map of ``sample``."""
    out = dict(sample)
    for k, v in _maps(sample).items():
        out[k] = pad_to(v, h, w, mode=mode, motion=k in motion_keys)
    return out


def resize_sample(sample: dict, size: Size, motion_keys=MOTION_KEYS) -> dict:
    """Resize every map to ``size`` = (height, width) (bilinear, antialiased when shrinking); motion
    values are rescaled with the image (dy by the height ratio, dx by the width ratio)."""
    h, w = _hw(size)
    out = dict(sample)
    for k, v in _maps(sample).items():
        ih, iw = v.shape[-2:]
        if (ih, iw) == (h, w):
            continue
        x = v.unsqueeze(0).float()
        r = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=(h < ih or w < iw))[0]
        if k in motion_keys:
            r = torch.stack((r[0] * (h / ih), r[1] * (w / iw)))
        else:
            r = r.clamp(0.0, 1.0)
        out[k] = r.to(v.dtype)
    return out


def crop_sample(sample: dict, top: int, left: int, h: int, w: int) -> dict:
    """Cut the same (h, w) window at (top, left) out of every map."""
    out = dict(sample)
    for k, v in _maps(sample).items():
        out[k] = v[:, top:top + h, left:left + w]
    return out


class RandomCropFlip:
    """Resize (optional) -> pad to the crop size if smaller -> random crop -> random horizontal flip.

    ``crop_size``: int or (h, w); None keeps the full image. ``flip``: flip with probability 1/2.
    ``resize``: (height, width) applied first (``OFFICIAL_SIZE`` = 720x1280 reproduces the official
    loaders); off by default. ``pad_mode``: how images smaller than the crop are padded (``reflect``,
    falling back to ``replicate`` where the image is too small to mirror). Randomness comes from
    ``generator`` (torch's global RNG when None).
    """

    def __init__(self, crop_size: Optional[Size] = None, flip: bool = True, resize: Optional[Size] = None,
                 pad_mode: str = "reflect", motion_keys=MOTION_KEYS) -> None:
        self.crop = _hw(crop_size) if crop_size is not None else None
        self.flip = bool(flip)
        self.resize = _hw(resize) if resize is not None else None
        self.pad_mode = pad_mode
        self.motion_keys = tuple(motion_keys)

    def __call__(self, sample: dict, generator: Optional[torch.Generator] = None) -> dict:
        out = sample
        if self.resize is not None:
            out = resize_sample(out, self.resize, self.motion_keys)
        if self.crop is not None:
            ch, cw = self.crop
            out = pad_sample(out, ch, cw, self.pad_mode, self.motion_keys)
            maps = _maps(out)
            if maps:
                ih, iw = next(iter(maps.values())).shape[-2:]
                top = int(torch.randint(0, ih - ch + 1, (1,), generator=generator))
                left = int(torch.randint(0, iw - cw + 1, (1,), generator=generator))
                out = crop_sample(out, top, left, ch, cw)
        if self.flip and bool(torch.rand((), generator=generator) < 0.5):
            out = hflip(out, self.motion_keys)
        return out

    def __repr__(self) -> str:
        return f"RandomCropFlip(crop_size={self.crop}, flip={self.flip}, resize={self.resize}, pad_mode={self.pad_mode!r})"
