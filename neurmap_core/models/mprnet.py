"""MPRNet (Zamir et al., CVPR 2021): multi-stage progressive restoration, deblurring configuration.

Parameter names and shapes equal the official ``models/MPRNet.py`` (316 state-dict tensors,
20,127,073 parameters), so official checkpoints load unchanged. As in the official code one single
``nn.PReLU`` instance is shared by every channel-attention block, so its one weight appears under 55
state-dict names but is counted once by ``parameters()``.

Differences from the official forward, all with identical math:

* patches are cut with ``torch.chunk`` instead of Python ``int(H/2)`` slicing, so traced graphs
  (TorchScript, ONNX, CoreML) carry no baked-in sizes;
* the patches that share an encoder/decoder are stacked on the batch axis and go through it in one
  call (4 patches in stage 1, 2 in stage 2), then are put back in place. No layer mixes samples of a
  batch (channel attention pools per sample), so this is exact.

:meth:`MPRNet.forward` returns the final (stage 3) image; :meth:`MPRNet.forward_stages` returns
``[stage3, stage2, stage1]`` for the multi-stage training loss. Like the official net, the stage-3
output is the tail residual plus the input image and the SAM images are residuals on their inputs.
"""
from __future__ import annotations

import torch
from torch import nn


def _conv(cin: int, cout: int, k: int, bias: bool = False) -> nn.Conv2d:
    """Same-size convolution."""
    return nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias)


class CALayer(nn.Module):
    """Channel attention: global average pool, squeeze/excite 1x1 convs, sigmoid gate."""

    def __init__(self, ch: int, reduction: int, bias: bool) -> None:
        super().__init__()
        self.conv_du = nn.Sequential(
            nn.Conv2d(ch, ch // reduction, 1, bias=bias), nn.ReLU(inplace=True),
            nn.Conv2d(ch // reduction, ch, 1, bias=bias), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.conv_du(x.mean(dim=(2, 3), keepdim=True))


class CAB(nn.Module):
    """Channel attention block: conv-act-conv, channel attention, identity skip."""

    def __init__(self, ch: int, k: int, reduction: int, bias: bool, act: nn.Module) -> None:
        super().__init__()
        self.CA = CALayer(ch, reduction, bias)
        self.body = nn.Sequential(_conv(ch, ch, k, bias), act, _conv(ch, ch, k, bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.CA(self.body(x)) + x


def _cabs(n: int, ch: int, k: int, reduction: int, bias: bool, act: nn.Module) -> nn.Sequential:
    return nn.Sequential(*[CAB(ch, k, reduction, bias, act) for _ in range(n)])


class SAM(nn.Module):
    """Supervised attention module: predicts a stage image and gates the features with it."""

    def __init__(self, ch: int, k: int, bias: bool) -> None:
        super().__init__()
        self.conv1 = _conv(ch, ch, k, bias)
        self.conv2 = _conv(ch, 3, k, bias)
        self.conv3 = _conv(3, ch, k, bias)

    def forward(self, x: torch.Tensor, x_img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.conv2(x) + x_img
        gate = torch.sigmoid(self.conv3(img))
        return self.conv1(x) * gate + x, img


def _resample(cin: int, cout: int, scale: float) -> nn.Sequential:
    """Bilinear resize (align_corners=False) then a bias-free 1x1 conv."""
    return nn.Sequential(nn.Upsample(scale_factor=scale, mode="bilinear", align_corners=False),
                         nn.Conv2d(cin, cout, 1, bias=False))


class DownSample(nn.Module):
    """Half size, ``ch`` -> ``ch + grow`` channels."""

    def __init__(self, ch: int, grow: int) -> None:
        super().__init__()
        self.down = _resample(ch, ch + grow, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(x)


class UpSample(nn.Module):
    """Double size, ``ch + grow`` -> ``ch`` channels."""

    def __init__(self, ch: int, grow: int) -> None:
        super().__init__()
        self.up = _resample(ch + grow, ch, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


class SkipUpSample(UpSample):
    """:class:`UpSample` plus a skip connection."""

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.up(x) + skip


class Encoder(nn.Module):
    """Three-level U-Net encoder (n, n+s, n+2s channels); optional cross-stage feature fusion."""

    def __init__(self, n: int, k: int, reduction: int, act: nn.Module, bias: bool, s: int, csff: bool) -> None:
        super().__init__()
        chans = (n, n + s, n + 2 * s)
        for i, c in enumerate(chans, 1):
            setattr(self, f"encoder_level{i}", _cabs(2, c, k, reduction, bias, act))
        self.down12 = DownSample(n, s)
        self.down23 = DownSample(n + s, s)
        self.csff = csff
        if csff:
            for i, c in enumerate(chans, 1):
                setattr(self, f"csff_enc{i}", nn.Conv2d(c, c, 1, bias=bias))
            for i, c in enumerate(chans, 1):
                setattr(self, f"csff_dec{i}", nn.Conv2d(c, c, 1, bias=bias))

    def forward(self, x: torch.Tensor, enc_prev: list[torch.Tensor] | None = None,
                dec_prev: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        fuse = enc_prev is not None and dec_prev is not None
        outs: list[torch.Tensor] = []
        for i in range(3):
            if i == 1:
                x = self.down12(x)
            elif i == 2:
                x = self.down23(x)
            x = getattr(self, f"encoder_level{i + 1}")(x)
            if fuse:
                x = x + getattr(self, f"csff_enc{i + 1}")(enc_prev[i]) + getattr(self, f"csff_dec{i + 1}")(dec_prev[i])
            outs.append(x)
        return outs


class Decoder(nn.Module):
    """Three-level U-Net decoder with channel-attention skip connections."""

    def __init__(self, n: int, k: int, reduction: int, act: nn.Module, bias: bool, s: int) -> None:
        super().__init__()
        self.decoder_level1 = _cabs(2, n, k, reduction, bias, act)
        self.decoder_level2 = _cabs(2, n + s, k, reduction, bias, act)
        self.decoder_level3 = _cabs(2, n + 2 * s, k, reduction, bias, act)
        self.skip_attn1 = CAB(n, k, reduction, bias, act)
        self.skip_attn2 = CAB(n + s, k, reduction, bias, act)
        self.up21 = SkipUpSample(n, s)
        self.up32 = SkipUpSample(n + s, s)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        enc1, enc2, enc3 = feats
        dec3 = self.decoder_level3(enc3)
        dec2 = self.decoder_level2(self.up32(dec3, self.skip_attn2(enc2)))
        dec1 = self.decoder_level1(self.up21(dec2, self.skip_attn1(enc1)))
        return [dec1, dec2, dec3]


class ORB(nn.Module):
    """Original-resolution block: ``num_cab`` CABs and a conv, identity skip."""

    def __init__(self, ch: int, k: int, reduction: int, act: nn.Module, bias: bool, num_cab: int) -> None:
        super().__init__()
        # as official, the closing conv has no bias whatever ``bias`` says
        self.body = nn.Sequential(*[CAB(ch, k, reduction, bias, act) for _ in range(num_cab)], _conv(ch, ch, k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + x


class ORSNet(nn.Module):
    """Stage 3: three ORBs at full resolution, each fed the stage-2 U-Net features of one level."""

    def __init__(self, n: int, o: int, k: int, reduction: int, act: nn.Module, bias: bool, s: int,
                 num_cab: int) -> None:
        super().__init__()
        for i in (1, 2, 3):
            setattr(self, f"orb{i}", ORB(n + o, k, reduction, act, bias, num_cab))
        self.up_enc1 = UpSample(n, s)
        self.up_dec1 = UpSample(n, s)
        self.up_enc2 = nn.Sequential(UpSample(n + s, s), UpSample(n, s))
        self.up_dec2 = nn.Sequential(UpSample(n + s, s), UpSample(n, s))
        for i in (1, 2, 3):
            setattr(self, f"conv_enc{i}", nn.Conv2d(n, n + o, 1, bias=bias))
        for i in (1, 2, 3):
            setattr(self, f"conv_dec{i}", nn.Conv2d(n, n + o, 1, bias=bias))

    def forward(self, x: torch.Tensor, enc: list[torch.Tensor], dec: list[torch.Tensor]) -> torch.Tensor:
        x = self.orb1(x) + self.conv_enc1(enc[0]) + self.conv_dec1(dec[0])
        x = self.orb2(x) + self.conv_enc2(self.up_enc1(enc[1])) + self.conv_dec2(self.up_dec1(dec[1]))
        x = self.orb3(x) + self.conv_enc3(self.up_enc2(enc[2])) + self.conv_dec3(self.up_dec2(dec[2]))
        return x


def _split(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Cut ``x`` in two halves along ``dim`` and stack them on the batch axis (first half first)."""
    return torch.cat(torch.chunk(x, 2, dim=dim), dim=0)


def _merge(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Inverse of :func:`_split`: un-stack the two batch halves and join them along ``dim``."""
    return torch.cat(torch.chunk(x, 2, dim=0), dim=dim)


class MPRNet(nn.Module):
    """MPRNet for deblurring. H and W must be multiples of :attr:`pad_multiple` (8).

    Why 8: the stage-1 patches are H/2 x W/2 and its U-Net halves them twice (bilinear, floor), then
    doubles back and adds the skips, so H/2 and W/2 must be multiples of 4. With H, W multiples of 8
    every other shape (stage-2 half images, ORSNet's 2x / 4x upsamplings) also lines up exactly.
    """

    pad_multiple = 8

    def __init__(self, in_c: int = 3, out_c: int = 3, n_feat: int = 96, scale_unetfeats: int = 48,
                 scale_orsnetfeats: int = 32, num_cab: int = 8, kernel_size: int = 3, reduction: int = 4,
                 bias: bool = False) -> None:
        super().__init__()
        n, s, o, k, r = n_feat, scale_unetfeats, scale_orsnetfeats, kernel_size, reduction
        act = nn.PReLU()  # one instance shared by every CAB, as official
        for i in (1, 2, 3):
            setattr(self, f"shallow_feat{i}", nn.Sequential(_conv(in_c, n, k, bias), CAB(n, k, r, bias, act)))
        self.stage1_encoder = Encoder(n, k, r, act, bias, s, csff=False)
        self.stage1_decoder = Decoder(n, k, r, act, bias, s)
        self.stage2_encoder = Encoder(n, k, r, act, bias, s, csff=True)
        self.stage2_decoder = Decoder(n, k, r, act, bias, s)
        self.stage3_orsnet = ORSNet(n, o, k, r, act, bias, s, num_cab)
        self.sam12 = SAM(n, 1, bias)
        self.sam23 = SAM(n, 1, bias)
        self.concat12 = _conv(2 * n, n, k, bias)
        self.concat23 = _conv(2 * n, n + o, k, bias)
        self.tail = _conv(n + o, out_c, k, bias)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[stage3, stage2, stage1]`` images, each (B, out_c, H, W)."""
        # stage 2 works on the top/bottom halves, stacked as [top; bottom] on the batch axis
        x2 = _split(x, 2)
        # stage 1 works on quarters: each half cut left/right -> [top-l; bottom-l; top-r; bottom-r]
        x1 = _split(x2, 3)

        # ---- stage 1: one encoder call for the 4 quarters, decoder on the 2 re-joined halves
        feat1 = [_merge(f, 3) for f in self.stage1_encoder(self.shallow_feat1(x1))]
        res1 = self.stage1_decoder(feat1)
        sam1_feats, img1 = self.sam12(res1[0], x2)
        stage1 = _merge(img1, 2)

        # ---- stage 2: one encoder call for both halves, decoder on the whole image
        x2_cat = self.concat12(torch.cat([self.shallow_feat2(x2), sam1_feats], dim=1))
        feat2 = [_merge(f, 2) for f in self.stage2_encoder(x2_cat, feat1, res1)]
        res2 = self.stage2_decoder(feat2)
        sam2_feats, stage2 = self.sam23(res2[0], x)

        # ---- stage 3: full resolution
        x3_cat = self.concat23(torch.cat([self.shallow_feat3(x), sam2_feats], dim=1))
        stage3 = self.tail(self.stage3_orsnet(x3_cat, feat2, res2)) + x
        return [stage3, stage2, stage1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The final (stage 3) restored image, (B, out_c, H, W). Training: see :meth:`forward_stages`."""
        return self.forward_stages(x)[0]
