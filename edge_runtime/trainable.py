"""The parameter set an adaptation round may change: LoRA adapters, biases, the last N convolutions, or all.

One place decides which state_dict keys can move, so the guard's rollback and the hot swap know what to patch.
"""
from __future__ import annotations

import time
from typing import Optional

import torch
from torch import nn

from neurmap.core.profile import forward_with_hooks

from .adapt_config import AdaptConfig
from .lora import LoRAConvs, conv_modules


def execution_order(net: nn.Module, sample: torch.Tensor) -> list[str]:
    """Names of the convolutions in the order a forward runs them (first call of each)."""
    order: list[str] = []
    forward_with_hooks(net, sample, [(m, lambda mod, i, o, n=name: order.append(n) if n not in order else None)
                                     for name, m in conv_modules(net)])
    return order


class TrainableSet:
    """The parameters an adaptation round may change, set up on ``model`` (a DeblurModel)."""

    def __init__(self, model: nn.Module, cfg: AdaptConfig) -> None:
        net = model.net if hasattr(model, "net") else model
        self.net = net
        self.lora: Optional[LoRAConvs] = None
        self.params: list[nn.Parameter] = []
        self.names: set[str] = set()            # state_dict keys that may change
        named = dict(net.named_parameters())
        for part in cfg.parts():
            if part == "all":
                self.names |= set(named)
            elif part == "bias":
                self.names |= {n for n in named if n.endswith(".bias")}
            elif part == "last":
                m = int(getattr(model, "pad_multiple", 8))
                sample = torch.zeros(1, 3, 4 * m, 4 * m, device=next(net.parameters()).device)
                order = execution_order(net, sample)
                for conv in order[-max(1, cfg.last_layers):]:
                    self.names |= {n for n in named if n.startswith(conv + ".")}
            elif part == "lora":
                self.lora = LoRAConvs(net, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets, cfg.seed)
        for p in net.parameters():
            p.requires_grad_(False)
        for n in sorted(self.names):
            named[n].requires_grad_(True)
            self.params.append(named[n])
        if self.lora is not None:
            for p in self.lora.parameters():    # registered in net as parametrizations: thawed again here
                p.requires_grad_(True)
            self.params += self.lora.parameters()
            self.names |= self.lora.weight_names()

    def numel(self) -> int:
        return sum(p.numel() for p in self.params)

    def finish(self) -> None:
        """Merge adapters into the weights and make every parameter frozen again."""
        self._end(merge=True)

    def discard(self) -> None:
        """Drop the adapters (weights as before them) and freeze every parameter again."""
        self._end(merge=False)

    def _end(self, merge: bool) -> None:
        if self.lora is not None:
            self.lora.merge() if merge else self.lora.remove()
            self.lora = None
        for p in self.net.parameters():
            p.requires_grad_(False)


def apply_step(opt: torch.optim.Optimizer, loss: torch.Tensor, params, grad_clip: Optional[float]) -> bool:
    """One optimiser step on ``loss`` (gradient norm clipped to ``grad_clip``); False, and nothing applied,
    when the loss is not finite — both adaptation paths stop their round there."""
    if not torch.isfinite(loss):
        return False
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()
    return True


def run_steps(steps: int, loss_fn, opt: torch.optim.Optimizer, params, grad_clip: Optional[float], stop_flag,
              on_step=None, pause=None) -> tuple[list[float], list[float], int, str]:
    """A round's optimiser loop, shared by the single-image and stream paths: ``loss_fn()`` per step, stop on
    ``stop_flag`` or a non-finite loss. Returns (losses, step seconds, steps done, reason — "" when complete);
    the caller rolls back on a reason or an exception."""
    losses: list[float] = []
    times: list[float] = []
    for i in range(steps):
        if stop_flag.is_set():
            return losses, times, i, "stopped"
        t0 = time.perf_counter()
        loss = loss_fn()
        if not apply_step(opt, loss, params, grad_clip):
            return losses, times, i, f"non-finite loss at step {i + 1}"
        times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(i + 1, losses[-1])
        if pause is not None:
            pause(times[-1])
    return losses, times, steps, ""
