"""Motion net M (NeurMAP's OffsetNet): a per-pixel linear blur motion (dy, dx) from one image.

Layout and parameter names equal the official ``OffsetNet`` (including the bottlenecks' modules being
registered twice, as ``convN`` and inside ``model``), so official weights load unchanged (with our closed-form
prior off: ``prior_scale`` 0). The output is in units of 20 px (``MOTION_SCALE``); :func:`neurmap.core.reblur`
applies that scale.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blur_prior import MOTION_SCALE, frame_blur


class ResnetBlock(nn.Module):
    """x + conv5(relu(conv5(x))) with replication padding, as in the official block."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReplicationPad2d(2), nn.Conv2d(dim, dim, 5), nn.ReLU(True),
            nn.ReplicationPad2d(2), nn.Conv2d(dim, dim, 5),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


def _conv_tri_res(cin: int, cout: int, stride: int) -> nn.Sequential:
    pad = nn.ReflectionPad2d(2) if stride == 1 else nn.ReflectionPad2d((1, 2, 1, 2))
    return nn.Sequential(pad, nn.Conv2d(cin, cout, 5, stride=stride), nn.ReLU(True),
                         nn.Sequential(ResnetBlock(cout), ResnetBlock(cout), ResnetBlock(cout)))


class Bottleneck(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch * 2, 1)
        self.conv2 = nn.Conv2d(ch * 2, ch, 3, padding=1)
        self.model = nn.Sequential(self.conv1, nn.LeakyReLU(0.2, True), self.conv2, nn.LeakyReLU(0.2, True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def space_to_depth(x: torch.Tensor) -> torch.Tensor:
    """2x2 space-to-depth with the official channel order (dy, dx, C), built from export-safe ops."""
    y = F.pixel_unshuffle(x, 2)  # channel order (C, dy, dx)
    return y.unflatten(1, (x.shape[1], 4)).transpose(1, 2).flatten(1, 2)


class MotionNet(nn.Module):
    """OffsetNet: 1,128,002 parameters. H and W must be multiples of ``pad_multiple``.

    ``prior_scale`` (a buffer, saved with the weights): when > 0 the net's output is added to the closed-form
    blur of :func:`~.blur_prior.frame_blur` times it — its length calibration — so the net learns a correction
    to a reading that is already close (held-out shake: 0.39 of the blur, the net alone 0.76). 0 (the official
    net, and any checkpoint without it): off."""

    pad_multiple = 8

    def __init__(self, nf: int = 16, out_channels: int = 2, prior_scale: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("prior_scale", torch.tensor(float(prior_scale)))
        self.conv_1 = _conv_tri_res(12, nf, 1)
        self.conv_2 = _conv_tri_res(nf, nf * 2, 2)
        self.conv_3 = _conv_tri_res(nf * 2, nf * 4, 2)
        self.bottleneck_1 = Bottleneck(nf * 4)
        self.uconv_1 = nn.ConvTranspose2d(nf * 4, nf * 2, 4, stride=2, padding=1)
        self.bottleneck_2 = Bottleneck(nf * 4)
        self.uconv_2 = nn.ConvTranspose2d(nf * 4, nf, 4, stride=2, padding=1)
        self.bottleneck_3 = Bottleneck(nf * 2)
        self.uconv_3 = nn.ConvTranspose2d(nf * 2, nf * 2, 4, stride=2, padding=1)
        self.conv_out_0 = nn.Conv2d(nf * 2, out_channels, 5, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = self.conv_1(space_to_depth(x))
        d2 = self.conv_2(d1)
        d3 = self.bottleneck_1(self.conv_3(d2))
        u1 = torch.cat((F.leaky_relu(self.uconv_1(d3), 0.2), d2), dim=1)
        u2 = torch.cat((F.leaky_relu(self.uconv_2(self.bottleneck_2(u1)), 0.2), d1), dim=1)
        u3 = self.uconv_3(self.bottleneck_3(u2))
        out = self.conv_out_0(F.relu(u3))
        if self.prior_scale.device.type != "meta" and float(self.prior_scale) > 0:   # meta: MAC counts, no values
            out = out + self.prior_scale * frame_blur(x)
        return out

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints from before the prior (and the official weights) carry no prior_scale: theirs is 0
        state_dict.setdefault(prefix + "prior_scale", torch.zeros(()))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
