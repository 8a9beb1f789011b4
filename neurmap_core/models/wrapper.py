"""The [0, 1]-in / [0, 1]-out face of every deblur net: input checks, value range, padding."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

# value range a checkpoint works in -> offset added to a [0, 1] image before the net
RANGE_OFFSETS = {"0,1": 0.0, "-0.5,0.5": -0.5}


def check_image(x: torch.Tensor, min_size: int = 1, channels: int = 3) -> None:
    """Raise :class:`InputError` with a one-line fix unless ``x`` is a finite float (B,C,H,W) batch."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"expected a torch.Tensor, got {type(x).__name__}; convert with torch.from_numpy")
    if x.dim() != 4:
        raise InputError(f"expected a (B, {channels}, H, W) batch, got shape {tuple(x.shape)}; add a batch axis with x[None]")
    if x.shape[1] != channels:
        raise InputError(f"expected {channels} colour channels (RGB), got {x.shape[1]} in shape {tuple(x.shape)}; "
                         "convert grayscale/RGBA to RGB first")
    if not x.is_floating_point():
        raise InputError(f"expected a float image in [0, 1], got dtype {x.dtype}; use x.float() / 255")
    h, w = x.shape[-2:]
    if min(h, w) < min_size:
        raise InputError(f"image {h}x{w} is smaller than this net's minimum {min_size}x{min_size}; upscale or pad it")
    if x.device.type != "meta" and not torch.isfinite(x).all():
        raise InputError("image contains NaN or Inf values; clean the input (e.g. torch.nan_to_num)")


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad bottom/right so H and W are multiples of ``multiple``; returns the original size."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


def prefers_channels_last(net: nn.Module) -> bool:
    """True when the net's conv weights are stored channels-last (then inputs should be too)."""
    for p in net.parameters():
        if p.dim() == 4:
            return p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
    return False


def to_channels_last(model: nn.Module) -> nn.Module:
    """Channels-last weights: measured 1.5-1.7x faster convolutions on CPU (bench/core_bench.py)."""
    return model.to(memory_format=torch.channels_last)


def _match_layout(x: torch.Tensor, net: nn.Module) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if prefers_channels_last(net) else x


class DeblurModel(nn.Module):
    """Wraps a backbone: takes and returns [0, 1] images of any size, whatever range the weights use."""

    def __init__(self, net: nn.Module, input_range: str = "0,1", name: str = "") -> None:
        super().__init__()
        if input_range not in RANGE_OFFSETS:
            raise InputError(f"unknown input range {input_range!r}; use one of {sorted(RANGE_OFFSETS)}")
        self.net, self.input_range, self.name = net, input_range, name
        self.offset = RANGE_OFFSETS[input_range]
        self.pad_multiple = int(getattr(net, "pad_multiple", 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image(x, min_size=self.pad_multiple)
        xp, (h, w) = pad_to_multiple(x, self.pad_multiple)
        y = self.net(_match_layout(xp + self.offset, self.net)) - self.offset
        return y[..., :h, :w]


class MotionModel(nn.Module):
    """Wraps the motion net: any [0, 1] image size in, (dy, dx) map in 20-px units of the same size out."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.pad_multiple = int(net.pad_multiple)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image(x, min_size=self.pad_multiple)
        xp, (h, w) = pad_to_multiple(x, self.pad_multiple)
        return self.net(_match_layout(xp, self.net))[..., :h, :w]
