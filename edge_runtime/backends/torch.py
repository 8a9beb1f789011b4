"""PyTorch backend: our safetensors checkpoints, official DMPHN folders, state-dict pickles, shipped names.

Runs the model as trained (eager), on CUDA when asked and available. Useful on a workstation, as the
reference the exported engines are compared against, and wherever no exported artifact exists yet.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Backend, HotSwap, InputSpec, missing_engine


class TorchBackend(Backend):
    name = "torch"
    install_hint = "pip install torch"

    def load(self, artifact: Path) -> None:
        try:
            import torch
            from neurmap.core import load_weights
        except ImportError:
            raise missing_engine("torch", self.install_hint) from None
        self._torch = torch
        want = self.options.get("device") or "cpu"
        if want.startswith("cuda") and not torch.cuda.is_available():
            from neurmap.core.errors import NeurmapError
            raise NeurmapError("--device cuda asked, but this PyTorch has no CUDA device; use --device cpu")
        self.device = want
        model, meta = load_weights(str(artifact))
        self.model = model.to(self.device).eval()
        self.meta = meta
        self.spec = InputSpec(fixed_hw=None, multiple=int(model.pad_multiple), max_batch=4,
                              metadata={"architecture": meta.get("architecture"),
                                        "input_range": meta.get("input_range"),
                                        "weights_hash": meta.get("weights_hash"), "precision": "fp32"})

    def infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            y = self.model(x)
            return y.float().cpu().numpy()

    def swapper(self, artifact, model=None, source_onnx=None) -> "TorchSwap":
        return TorchSwap(self)

    def close(self) -> None:
        self.model = None


class TorchSwap(HotSwap):
    """PyTorch backend: ``load_state_dict`` into the served net between frames."""

    kind = "torch"

    def _prepare(self, state):
        net = self.backend.model.net
        dev = next(net.parameters()).device
        return {k: v.detach().to(dev, copy=True) for k, v in state.items()}

    def _apply(self, prepared) -> None:
        with self.backend._torch.no_grad():
            self.backend.model.net.load_state_dict(prepared)
