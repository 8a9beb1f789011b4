"""Parameter count, fp32 size and MACs of a network, measured by hooks on a forward on the meta device.

The meta device carries shapes only — no arithmetic — so the count is instant at any resolution and is
never a hard-coded table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn


@dataclass
class Cost:
    name: str
    params: int
    mb: float
    gmacs: float
    height: int
    width: int


def count_macs(net: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of one forward of ``net`` on ``x`` (convolutions, transposed convs, linears)."""
    total = 0

    def hook(m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.ConvTranspose2d):
            total += inp[0].numel() * (m.out_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            total += out.numel() * m.in_features

    forward_with_hooks(net, x, [(m, hook) for m in net.modules()
                                if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))])
    return total


def forward_with_hooks(net: nn.Module, x: torch.Tensor, hooks: Iterable[tuple[nn.Module, Callable]]) -> None:
    """One no-grad forward of ``net`` on ``x`` with forward ``hooks`` (module, fn) attached, all removed after
    it whatever happens: how MACs are counted here and how adaptation finds the order convolutions run in."""
    handles = [m.register_forward_hook(fn) for m, fn in hooks]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()


def network_cost(name: str, height: int, width: int) -> Cost:
    """Cost of registered network ``name`` on one (3, height, width) image, padded as the net requires."""
    from .models import build_network

    with torch.device("meta"):
        net = build_network(name)
    mult = int(getattr(net, "pad_multiple", 1))
    h, w = -(-height // mult) * mult, -(-width // mult) * mult
    params = sum(p.numel() for p in net.parameters())
    macs = count_macs(net, torch.empty(1, 3, h, w, device="meta"))
    return Cost(name, params, params * 4 / 1e6, macs / 1e9, height, width)
