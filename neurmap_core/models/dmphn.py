"""DMPHN (Zhang et al. 2019): a deep multi-patch hierarchy of encoder/decoder pairs.

Parameter names and shapes equal the official ``encoder_lvK`` / ``decoder_lvK`` modules, so official
per-level weight files load unchanged. Unlike the official forward, the patches of one level are stacked
on the batch axis and run through their encoder in one call (same math, fewer and larger convolutions),
and patches are cut with ``torch.chunk`` rather than Python ``int(H/2)`` casts, so the graph traces for
ONNX and CoreML at any size.
"""
from __future__ import annotations

import torch
from torch import nn


def _res_block(ch: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1), nn.ReLU(), nn.Conv2d(ch, ch, 3, padding=1))


class Encoder(nn.Module):
    """Three scales (32, 64, 128 ch), two residual blocks each; output at 1/4 resolution."""

    def __init__(self) -> None:
        super().__init__()
        self.layer1 = nn.Conv2d(3, 32, 3, padding=1)
        self.layer2, self.layer3 = _res_block(32), _res_block(32)
        self.layer5 = nn.Conv2d(32, 64, 3, stride=2, padding=1)
        self.layer6, self.layer7 = _res_block(64), _res_block(64)
        self.layer9 = nn.Conv2d(64, 128, 3, stride=2, padding=1)
        self.layer10, self.layer11 = _res_block(128), _res_block(128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer1(x)
        x = self.layer2(x) + x
        x = self.layer3(x) + x
        x = self.layer5(x)
        x = self.layer6(x) + x
        x = self.layer7(x) + x
        x = self.layer9(x)
        x = self.layer10(x) + x
        return self.layer11(x) + x


class Decoder(nn.Module):
    """Mirror of :class:`Encoder`: two transposed-conv upsamplings back to a 3-channel image."""

    def __init__(self) -> None:
        super().__init__()
        self.layer13, self.layer14 = _res_block(128), _res_block(128)
        self.layer16 = nn.ConvTranspose2d(128, 64, 4, stride=2, padding=1)
        self.layer17, self.layer18 = _res_block(64), _res_block(64)
        self.layer20 = nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1)
        self.layer21, self.layer22 = _res_block(32), _res_block(32)
        self.layer24 = nn.Conv2d(32, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer13(x) + x
        x = self.layer14(x) + x
        x = self.layer16(x)
        x = self.layer17(x) + x
        x = self.layer18(x) + x
        x = self.layer20(x)
        x = self.layer21(x) + x
        x = self.layer22(x) + x
        return self.layer24(x)


def to_patches(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """(B,C,H,W) -> (rows*cols*B, C, H/rows, W/cols), patches stacked on the batch axis."""
    if rows > 1:
        x = torch.cat(torch.chunk(x, rows, dim=2), dim=0)
    if cols > 1:
        x = torch.cat(torch.chunk(x, cols, dim=3), dim=0)
    return x


def from_patches(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Inverse of :func:`to_patches`."""
    if cols > 1:
        x = torch.cat(torch.chunk(x, cols, dim=0), dim=3)
    if rows > 1:
        x = torch.cat(torch.chunk(x, rows, dim=0), dim=2)
    return x


# Patch grid (rows, cols) of each level, coarse image first; as in the official code, level 2 splits
# H, level 3 splits W, level 4 splits H again.
_GRIDS = [(1, 1), (2, 1), (2, 2), (4, 2)]


class DMPHN(nn.Module):
    """DMPHN 1-2-4 (``levels=3``) or 1-2-4-8 (``levels=4``). Works in the range of its weights."""

    def __init__(self, levels: int = 4) -> None:
        super().__init__()
        if levels not in (3, 4):
            raise ValueError(f"DMPHN has 3 (1-2-4) or 4 (1-2-4-8) levels, not {levels}")
        self.levels = levels
        for k in range(1, levels + 1):
            setattr(self, f"encoder_lv{k}", Encoder())
            setattr(self, f"decoder_lv{k}", Decoder())
        # the finest patch is H/rows x W/cols and the encoder divides by 4
        rows, cols = _GRIDS[levels - 1]
        self.pad_multiple = 4 * max(rows, cols)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feature = residual = None
        for k in range(self.levels, 0, -1):
            rows, cols = _GRIDS[k - 1]
            encoder, decoder = getattr(self, f"encoder_lv{k}"), getattr(self, f"decoder_lv{k}")
            inp = x if residual is None else x + residual
            f = from_patches(encoder(to_patches(inp, rows, cols)), rows, cols)
            feature = f if feature is None else f + feature
            # the decoder of level k works on the (larger) patches of level k-1
            drows, dcols = _GRIDS[k - 2] if k > 1 else (1, 1)
            residual = from_patches(decoder(to_patches(feature, drows, dcols)), drows, dcols)
        return residual
