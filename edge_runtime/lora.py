"""Low-rank adapters (LoRA) on the convolutions of a network, merged back into the conv weights at the end.

The state_dict keys never change, so a merged network exports to the same graph with the same initializer
names (what the hot swap patches).
"""
from __future__ import annotations

import math
import re
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from neurmap.core.errors import NeurmapError


def conv_modules(net: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


class _LoRA(nn.Module):
    """delta W = (alpha/r) · (B @ A) reshaped to the conv weight; B starts at zero (no change at step 0)."""

    def __init__(self, weight: torch.Tensor, rank: int, alpha: float, g: torch.Generator) -> None:
        super().__init__()
        rows, cols = weight.shape[0], int(np.prod(weight.shape[1:]))
        r = max(1, min(rank, rows, cols))
        a = torch.randn(r, cols, generator=g) / math.sqrt(cols)
        self.A = nn.Parameter(a.to(weight.device, weight.dtype))
        self.B = nn.Parameter(torch.zeros(rows, r, device=weight.device, dtype=weight.dtype))
        self.scale = float(alpha) / r
        self.shape = tuple(weight.shape)

    def delta(self) -> torch.Tensor:
        return (self.B @ self.A).view(self.shape) * self.scale


def _effective_weight(conv: nn.Module, lora: _LoRA) -> torch.Tensor:
    # the one expression both the adapter form and merge() use: identical bits either way
    return conv.weight + lora.delta()


def _lora_forward(conv: nn.Module, lora: _LoRA) -> Callable:
    if isinstance(conv, nn.Conv2d):
        def fwd(x: torch.Tensor) -> torch.Tensor:
            return conv._conv_forward(x, _effective_weight(conv, lora), conv.bias)
    else:
        def fwd(x: torch.Tensor, output_size=None) -> torch.Tensor:
            op = conv._output_padding(x, output_size, list(conv.stride), list(conv.padding),
                                      list(conv.kernel_size), 2, list(conv.dilation))
            return F.conv_transpose2d(x, _effective_weight(conv, lora), conv.bias, conv.stride, conv.padding,
                                      op, conv.groups, conv.dilation)
    return fwd


class LoRAConvs:
    """Low-rank adapters on convolutions of ``net`` (its state_dict keys never change).

    While attached, each targeted conv computes with ``W + ΔW``; :meth:`merge` writes ``W + ΔW`` into the
    conv weights and detaches, so the network is plain again (same graph, same names, bit-identical
    outputs to the adapter form); :meth:`remove` detaches without merging.
    """

    def __init__(self, net: nn.Module, rank: int = 4, alpha: float = 4.0, targets: str = "",
                 seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        pat = re.compile(targets) if targets else None
        self.adapters: dict[str, tuple[nn.Module, _LoRA]] = {}
        for name, m in conv_modules(net):
            if pat is not None and not pat.search(name):
                continue
            lora = _LoRA(m.weight.detach(), rank, alpha, g)
            m.forward = _lora_forward(m, lora)      # instance attribute shadows the class forward
            self.adapters[name] = (m, lora)
        if not self.adapters:
            raise NeurmapError(f"LoRA targets {targets!r} match no convolution of this network")

    def parameters(self) -> list[nn.Parameter]:
        return [p for _, l in self.adapters.values() for p in (l.A, l.B)]

    def weight_names(self) -> set[str]:
        return {f"{n}.weight" for n in self.adapters}

    def numel(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def merge(self) -> None:
        for m, lora in self.adapters.values():
            w = _effective_weight(m, lora)
            m.weight.copy_(w)
        self.remove()

    def remove(self) -> None:
        for m, _ in self.adapters.values():
            if "forward" in m.__dict__:
                del m.forward
        self.adapters = {}
