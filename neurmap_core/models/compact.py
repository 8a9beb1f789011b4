"""CompactDeblur: our own small U-Net deblur backbone for real time on edge devices.

Design goals (issue 7): about 1/24 of DMPHN 1-2-4's compute at 1280×720, only operations every exporter,
quantizer and accelerator handles well, and activations without huge dynamic ranges.

Layout (``c = channels``, default 32/64/128)::

    x (3, H, W) ──pixel_unshuffle(2)──> 12 @ H/2 ── conv3 ──> c0 ── ResBlock×e0 ───────────────┐ skip
                                                              └─ conv2 s2 ─> c1 @ H/4 ResBlock×e1 ─┐ skip
                                                                  └─ conv2 s2 ─> c2 @ H/8 ResBlock×m
       ┌───────────────────────── conv1 + pixel_shuffle(2) ──────────────────────────────┘
       c1 @ H/4  (+ skip)  ResBlock×d1 ── conv1 + pixel_shuffle(2) ─> c0 @ H/2 (+ skip) ResBlock×d0
       ── conv3 → 12 ── pixel_shuffle(2) → 3 @ H, W   ──>  out = x + residual

* ResBlock = ``y + conv3(relu(conv3(y)))`` with plain 3×3 convolutions (oneDNN / cuDNN / TensorRT / the
  Apple Neural Engine all run dense 3×3 convs near peak; depthwise convs are memory-bound on CPUs).
* Down-sampling by 2×2 stride-2 convs, up-sampling by 1×1 conv + pixel_shuffle (no transposed convs, no
  interpolation), skips by addition. The whole graph is Conv, Relu, Add and the depth/space reshuffles.
* The global residual ``out = x + net(x)`` keeps the output in the input's [0, 1] range up to the small
  correction the net adds; there is no normalisation layer, no GELU, no attention, no grid sampling.
* ``pad_multiple = 8``: H and W must be multiples of 8 (the wrapper pads and crops); 16 with a ``deep`` level.

Optional fourth level (``deep`` channels at 1/16, ``compact_deep``): the middle stage is split in two and a
1/16 branch ``down3 → ResBlock×deep_blocks → up3`` is added between its halves, as a residual. It doubles the
receptive field (heavy blur is where the 3-level net gains least: +0.3 dB on the heaviest quarter of held-out
camera shake, +0.6 on the rest) for a small share of the MACs, and :meth:`CompactDeblur.grow_from` starts it
from a trained 3-level net as exactly that net (``up3`` zero), so a warm restart only has to learn the branch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResBlock(nn.Module):
    """``x + conv3(relu(conv3(x)))``."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class RepConv(nn.Module):
    """Training-time 3×3 conv with a parallel 1×1 branch and a scaled identity (RepVGG-style structural
    re-parameterisation, without BN). All three are linear, so :meth:`fold` merges them into one plain
    3×3 conv exactly: the extra branches shape the optimisation and cost nothing at inference.

    ``expand > 0`` adds an ExpandNets-style branch, a bias-free 1×1 conv to ``expand × ch`` channels followed
    by a bias-free 3×3 back to ``ch``: a product of linear maps that folds into the same 3×3 (zero padding
    commutes with a bias-free 1×1), so the training net is over-parameterised at no inference cost."""

    def __init__(self, ch: int, expand: int = 0) -> None:
        super().__init__()
        self.conv3 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv1 = nn.Conv2d(ch, ch, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(ch))
        self.expand = int(expand)
        if self.expand:
            self.expand_in = nn.Conv2d(ch, self.expand * ch, 1, bias=False)
            self.expand_out = nn.Conv2d(self.expand * ch, ch, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3(x) + self.conv1(x) + self.gamma.view(1, -1, 1, 1) * x
        return y + self.expand_out(self.expand_in(x)) if self.expand else y

    @torch.no_grad()
    def fold(self) -> nn.Conv2d:
        conv = nn.Conv2d(self.conv3.in_channels, self.conv3.out_channels, 3, padding=1)
        w = self.conv3.weight.clone()
        w[:, :, 1, 1] += self.conv1.weight[:, :, 0, 0] + torch.diag(self.gamma)
        if self.expand:
            w += torch.einsum("omhw,mi->oihw", self.expand_out.weight, self.expand_in.weight[:, :, 0, 0])
        conv.weight.copy_(w)
        conv.bias.copy_(self.conv3.bias)
        return conv


class RepResBlock(ResBlock):
    """:class:`ResBlock` whose two convs are :class:`RepConv` while training."""

    def __init__(self, ch: int, expand: int = 0) -> None:
        nn.Module.__init__(self)
        self.conv1, self.conv2 = RepConv(ch, expand), RepConv(ch, expand)


class ExpandRepResBlock(RepResBlock):
    """:class:`RepResBlock` with the 2× expand branch in both convs (folds into the same plain block)."""

    def __init__(self, ch: int) -> None:
        super().__init__(ch, expand=2)


class GatedBlock(nn.Module):
    """NAFNet-style block with plain convs: ``x + conv1(SCA(SimpleGate(conv3(x))))``.

    SimpleGate multiplies the two halves of a 2c-channel 3×3 conv (a gated non-linearity with no
    activation function); SCA re-weights channels by a 1×1 conv of their global mean. 19·c² MACs per
    pixel against the ResBlock's 18·c². Ops: Conv, Mul, GlobalAveragePool — all exporters take them.
    """

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, 2 * ch, 3, padding=1)
        self.sca = nn.Conv2d(ch, ch, 1)
        self.conv2 = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.conv1(x).chunk(2, dim=1)
        t = a * b
        t = t * self.sca(F.adaptive_avg_pool2d(t, 1))
        return x + self.conv2(t)


BLOCKS = {"res": ResBlock, "rep": RepResBlock, "repx": ExpandRepResBlock, "gated": GatedBlock}
#: training-time block types that :meth:`CompactDeblur.fold` turns into plain ``res`` blocks
FOLDABLE = ("rep", "repx")


def _stage(ch: int, n: int, block: str = "res") -> nn.Sequential:
    return nn.Sequential(*[BLOCKS[block](ch) for _ in range(n)])


class CompactDeblur(nn.Module):
    """Small 3-level U-Net on a 2× space-to-depth input with a global residual; [0, 1] in and out.

    ``channels``: widths at 1/2, 1/4 and 1/8 resolution; ``blocks``: residual blocks of the five stages
    (encoder 1/2, encoder 1/4, middle 1/8, decoder 1/4, decoder 1/2). Defaults: 29.0 GMAC at 1280×720,
    0.86 M parameters.
    """

    pad_multiple = 8

    def __init__(self, channels: tuple[int, int, int] = (32, 64, 128),
                 blocks: tuple[int, int, int, int, int] = (1, 1, 2, 1, 1), block: str = "res",
                 deep: int = 0, deep_blocks: int = 2) -> None:
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"block {block!r} unknown; use one of {', '.join(BLOCKS)}")
        c0, c1, c2 = (int(c) for c in channels)
        e0, e1, m, d1, d0 = (int(b) for b in blocks)
        self.channels, self.blocks, self.block = (c0, c1, c2), (e0, e1, m, d1, d0), block
        self.deep, self.deep_blocks = int(deep), int(deep_blocks)
        self.head = nn.Conv2d(12, c0, 3, padding=1)
        self.enc0 = _stage(c0, e0, block)
        self.down1 = nn.Conv2d(c0, c1, 2, stride=2)
        self.enc1 = _stage(c1, e1, block)
        self.down2 = nn.Conv2d(c1, c2, 2, stride=2)
        self.mid = _stage(c2, m, block)
        self.up2 = nn.Conv2d(c2, c1 * 4, 1)
        self.dec1 = _stage(c1, d1, block)
        self.up1 = nn.Conv2d(c1, c0 * 4, 1)
        self.dec0 = _stage(c0, d0, block)
        self.tail = nn.Conv2d(c0, 12, 3, padding=1)
        if self.deep:
            self.pad_multiple = 16
            self.down3 = nn.Conv2d(c2, self.deep, 2, stride=2)
            self.deep_stage = _stage(self.deep, self.deep_blocks, block)
            self.up3 = nn.Conv2d(self.deep, c2 * 4, 1)

    def init_identity(self) -> "CompactDeblur":
        """Start as the identity: a zero last conv, so a fresh net returns its input exactly.

        :func:`neurmap.core.models.build_network` Xavier-initialises every conv (SPEC); training from
        scratch calls this afterwards so the first iterations refine the blurry input instead of
        fighting a random residual.
        """
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)
        # residual branches start small too (the second conv of every block), so depth adds no gain
        for blk in self.modules():
            if isinstance(blk, (ResBlock, GatedBlock)):
                if isinstance(blk.conv2, RepConv):
                    lasts = [blk.conv2.conv3] + ([blk.conv2.expand_out] if blk.conv2.expand else [])
                else:
                    lasts = [blk.conv2]
                for last in lasts:
                    last.weight.data.mul_(0.1)
        if self.deep:
            nn.init.zeros_(self.up3.weight)
            nn.init.zeros_(self.up3.bias)
        return self

    @torch.no_grad()
    def grow_from(self, smaller: "CompactDeblur") -> bool:
        """Take a trained net without the ``deep`` level (same widths, blocks and block type) and become it
        exactly: its weights copied, the new branch Xavier-initialised as built with a zero ``up3``, so the
        branch adds nothing until training moves it. False when ``smaller`` does not fit."""
        if (not self.deep or getattr(smaller, "deep", 0) or smaller.channels != self.channels
                or smaller.blocks != self.blocks or smaller.block != self.block):
            return False
        missing, unexpected = self.load_state_dict(smaller.state_dict(), strict=False)
        if unexpected or not all(k.split(".")[0] in ("down3", "deep_stage", "up3") for k in missing):
            return False
        nn.init.zeros_(self.up3.weight)
        nn.init.zeros_(self.up3.bias)
        return True

    @torch.no_grad()
    def fold(self) -> "CompactDeblur":
        """The inference net: every :class:`RepConv` merged into a plain 3×3 conv (same outputs, to float
        rounding); a net without RepConvs is returned as it is."""
        if self.block not in FOLDABLE:
            return self
        plain = CompactDeblur(self.channels, self.blocks, "res", self.deep, self.deep_blocks)
        state = {}
        for name, mod in self.named_modules():
            if isinstance(mod, RepConv):
                folded = mod.fold()
                state[f"{name}.weight"], state[f"{name}.bias"] = folded.weight, folded.bias
        for k, v in self.state_dict().items():
            if not any(k.startswith(f"{n}.") for n, m in self.named_modules() if isinstance(m, RepConv)):
                state[k] = v
        plain.load_state_dict(state)
        return plain.to(next(self.parameters()).device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = self.enc0(self.head(F.pixel_unshuffle(x, 2)))
        s1 = self.enc1(self.down1(s0))
        y = self.down2(s1)
        if self.deep:                   # the 1/16 level sits between the two halves of the middle stage
            half = len(self.mid) // 2
            y = self.mid[:half](y)
            y = y + F.pixel_shuffle(self.up3(self.deep_stage(self.down3(y))), 2)
            y = self.mid[half:](y)
        else:
            y = self.mid(y)
        y = self.dec1(F.pixel_shuffle(self.up2(y), 2) + s1)
        y = self.dec0(F.pixel_shuffle(self.up1(y), 2) + s0)
        return x + F.pixel_shuffle(self.tail(y), 2)
