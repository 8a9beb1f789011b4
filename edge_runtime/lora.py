"""Low-rank adapters (LoRA) on the convolutions of a network, merged back into the conv weights at the end.

Once merged (or removed) the state_dict keys are the ones before, so a merged network exports to the same graph
with the same initializer names (what the hot swap patches).
"""
from __future__ import annotations

import math
import re

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from neurmap.core.errors import NeurmapError


def conv_modules(net: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


class _LoRA(nn.Module):
    """delta W = (alpha/r) · (B @ A) reshaped to the conv weight; B starts at zero (no change at step 0).

    Registered as a ``torch.nn.utils.parametrize`` parametrization of the conv's ``weight``: the conv's own
    forward then computes with ``W + ΔW`` (no replaced forward, no private conv methods)."""

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

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        # the one expression both the adapter form and merge() use: identical bits either way
        return weight + self.delta()


class LoRAConvs:
    """Low-rank adapters on convolutions of ``net`` (its state_dict keys never change once detached).

    While attached, each targeted conv's ``weight`` is parametrized as ``W + ΔW``; :meth:`merge` writes
    ``W + ΔW`` into the conv weights and detaches, so the network is plain again (same graph, same names,
    bit-identical outputs to the adapter form); :meth:`remove` detaches without merging.
    """

    def __init__(self, net: nn.Module, rank: int = 4, alpha: float = 4.0, targets: str = "",
                 seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        pat = re.compile(targets) if targets else None
        self.adapters: dict[str, tuple[nn.Module, _LoRA]] = {}
        self._after: dict[str, list[str]] = {}      # parameters registered after "weight": re-added after it
        for name, m in conv_modules(net):
            if pat is not None and not pat.search(name):
                continue
            lora = _LoRA(m.weight.detach(), rank, alpha, g)
            names = [n for n, _ in m.named_parameters(recurse=False)]
            self._after[name] = names[names.index("weight") + 1:]
            parametrize.register_parametrization(m, "weight", lora)
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
        for name, (m, _) in self.adapters.items():
            w = m.weight                    # W + ΔW, computed by the parametrization
            self._detach(name, m)
            m.weight.copy_(w)               # into the original Parameter: same object, same storage and strides
        self.adapters = {}

    def remove(self) -> None:
        for name, (m, _) in self.adapters.items():
            self._detach(name, m)
        self.adapters = {}

    def _detach(self, name: str, m: nn.Module) -> None:
        """The original ``weight`` back in place, in its original position (state_dict key order unchanged)."""
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
            for n in self._after.get(name, []):
                p = getattr(m, n)
                delattr(m, n)
                m.register_parameter(n, p)
