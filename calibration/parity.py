"""Accuracy of an artifact against the float model and against ground truth.

Numbers (all on 8-bit-quantised images, as papers report PSNR):
- ``psnr_vs_float``: PSNR of the artifact's output against the float PyTorch model's output (the parity number);
- ``max_abs`` / ``p99_abs``: largest and 99th-percentile absolute difference to the float output ([0,1] units);
- ``psnr_gt`` / ``psnr_gt_float`` (and SSIM): both against the sharp ground truth when it is known, and
  ``loss_db = psnr_gt_float - psnr_gt`` — the number an INT8 artifact is accepted on.
PSNR is averaged per image (as GoPro benchmarks do); differences are pooled over all pixels.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Optional

import numpy as np
import torch

Runner = Callable[[np.ndarray], np.ndarray]


@dataclass
class Parity:
    n: int
    psnr_vs_float: float
    max_abs: float
    p99_abs: float
    psnr_gt: Optional[float] = None
    psnr_gt_float: Optional[float] = None
    ssim_gt: Optional[float] = None
    ssim_gt_float: Optional[float] = None
    psnr_blurry: Optional[float] = None

    @property
    def loss_db(self) -> Optional[float]:
        if self.psnr_gt is None or self.psnr_gt_float is None:
            return None
        return self.psnr_gt_float - self.psnr_gt

    def to_dict(self) -> dict:
        d = asdict(self)
        d["loss_db"] = self.loss_db
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}

    def summary(self) -> str:
        s = f"{self.psnr_vs_float:.2f} dB vs float (max |d| {self.max_abs:.4f}, p99 {self.p99_abs:.4f})"
        if self.psnr_gt is not None:
            s += f"; vs GT {self.psnr_gt:.2f} dB (float {self.psnr_gt_float:.2f}, loss {self.loss_db:+.2f} dB)"
        return s


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    from neurmap.core.metrics.psnr import psnr

    return float(psnr(torch.from_numpy(a), torch.from_numpy(b)))


def _ssim(a: np.ndarray, b: np.ndarray) -> Optional[float]:
    try:
        from neurmap.core.metrics.ssim import ssim
    except ImportError:  # pragma: no cover - metrics are part of core
        return None
    with torch.no_grad():
        return float(ssim(torch.from_numpy(a).clamp(0, 1), torch.from_numpy(b).clamp(0, 1)))


def run_batched(fn: Runner, frames: np.ndarray, batch: int = 1) -> np.ndarray:
    return np.concatenate([fn(frames[i:i + batch]) for i in range(0, len(frames), batch)])


def compare(outputs: np.ndarray, reference: np.ndarray, sharp: Optional[np.ndarray] = None,
            blurry: Optional[np.ndarray] = None, with_ssim: bool = True) -> Parity:
    """Parity numbers from already computed outputs (N,3,H,W) in [0,1]."""
    o = np.clip(outputs.astype(np.float32), 0, 1)
    r = np.clip(reference.astype(np.float32), 0, 1)
    d = np.abs(o - r).reshape(-1)
    step = max(1, d.size // 2_000_000)          # the p99 of a 2M-sample subset is exact enough
    p = Parity(n=len(o), psnr_vs_float=_psnr(o, r), max_abs=float(d.max()), p99_abs=float(np.quantile(d[::step], 0.99)))
    if sharp is not None:
        p.psnr_gt, p.psnr_gt_float = _psnr(o, sharp), _psnr(r, sharp)
        if with_ssim:
            p.ssim_gt, p.ssim_gt_float = _ssim(o, sharp), _ssim(r, sharp)
        if blurry is not None:
            p.psnr_blurry = _psnr(blurry, sharp)
    return p


def parity(artifact: Runner, reference: Runner, blurry: np.ndarray, sharp: Optional[np.ndarray] = None,
           ref_outputs: Optional[np.ndarray] = None) -> tuple[Parity, np.ndarray]:
    """Run both on ``blurry`` (N,3,H,W) and compare; returns (numbers, artifact outputs)."""
    out = run_batched(artifact, blurry)
    ref = ref_outputs if ref_outputs is not None else run_batched(reference, blurry)
    return compare(out, ref, sharp, blurry), out


def torch_runner(model: torch.nn.Module) -> Runner:
    """A float PyTorch model ([0,1] in/out) as a numpy runner."""
    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(np.ascontiguousarray(x))).float().numpy()
    return run
