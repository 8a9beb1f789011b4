"""Natural-image discriminator D: a 2-scale PatchGAN (pix2pixHD style), official parameter names."""
from __future__ import annotations

import torch
from torch import nn


class MultiscaleDiscriminator(nn.Module):
    """Returns one patch map per scale, full resolution first (5,529,474 parameters)."""

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3, num_scales: int = 2) -> None:
        super().__init__()
        self.num_scales, self.depth = num_scales, n_layers + 2
        for s in range(num_scales):
            for j, layer in enumerate(self._patchgan(in_channels, ndf, n_layers)):
                setattr(self, f"scale{s}_layer{j}", layer)
        self.downsample = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)

    @staticmethod
    def _patchgan(cin: int, ndf: int, n_layers: int) -> list[nn.Sequential]:
        def block(a: int, b: int, stride: int, norm: bool) -> nn.Sequential:
            mods: list[nn.Module] = [nn.Conv2d(a, b, 4, stride=stride, padding=2)]
            if norm:
                mods.append(nn.InstanceNorm2d(b, affine=False))
            return nn.Sequential(*mods, nn.LeakyReLU(0.2, True))

        layers, nf = [block(cin, ndf, 2, False)], ndf
        for _ in range(1, n_layers):
            layers.append(block(nf, min(nf * 2, 512), 2, True))
            nf = min(nf * 2, 512)
        layers.append(block(nf, min(nf * 2, 512), 1, True))
        layers.append(nn.Sequential(nn.Conv2d(min(nf * 2, 512), 1, 4, stride=1, padding=2)))
        return layers

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for i in range(self.num_scales):
            scale = self.num_scales - 1 - i  # as the official code: the last scale sees full resolution
            y = x
            for j in range(self.depth):
                y = getattr(self, f"scale{scale}_layer{j}")(y)
            outputs.append(y)
            if i != self.num_scales - 1:
                x = self.downsample(x)
        return outputs
