"""Quantization-aware fine-tuning by self-distillation on calibration frames (no ground truth needed).

The student is ORT's own QDQ graph run in PyTorch (:class:`OnnxTorch`): the same quantization points, the same
activation ranges, weights fake-quantized with ORT's per-channel rule. The teacher is the float model. A few
hundred Adam steps on random crops of the calibration frames move the float weights so that the *quantized*
network reproduces the float network's output; the new weights are written back into the float ONNX and ORT
quantizes them with the same ranges, giving exactly the graph that was trained. On a 2-core CPU this costs
minutes, which is why it is opt-in (``--qat-steps``) and cached by the caller.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from .onnx_torch import OnnxTorch, iter_batches


@dataclass
class QATResult:
    state: dict            # float initializer name -> trained weights
    steps: int
    seconds: float
    loss_first: float
    loss_last: float


def qat_finetune(qdq_path, float_path, frames: np.ndarray, teacher: Optional[Callable] = None, steps: int = 200,
                 lr: float = 2e-5, batch: int = 2, crop: int = 128, seed: int = 0, multiple: int = 8,
                 log: Optional[Callable[[str], None]] = None, time_limit: Optional[float] = None) -> QATResult:
    """Fine-tune the float weights through the fake quantizers of ``qdq_path``; returns the new float state."""
    torch.manual_seed(seed)
    student = OnnxTorch(qdq_path, float_path, train_weights=True).train()
    if teacher is None:
        ref = OnnxTorch(float_path, None, train_weights=False).eval()
        ref.quantize = False

        def teacher(x):
            return ref(x)
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    rng = np.random.default_rng(seed)
    batches = iter_batches(frames, batch, rng, crop=crop, multiple=multiple)
    t0 = time.perf_counter()
    first = last = float("nan")
    ema = None
    done = 0
    for step in range(steps):
        x = next(batches)
        with torch.no_grad():
            y_t = teacher(x)
        y_s = student(x)
        loss = (y_s - y_t).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        v = float(loss)
        ema = v if ema is None else 0.9 * ema + 0.1 * v
        if step == 0:
            first = v
        last = ema
        done = step + 1
        if log and (step % 10 == 0 or step == steps - 1):
            log(f"qat step {step + 1}/{steps} mse {v:.3e} (ema {ema:.3e}) {time.perf_counter() - t0:.0f}s")
        if time_limit is not None and time.perf_counter() - t0 > time_limit:
            break
    return QATResult(student.float_state(), done, time.perf_counter() - t0, first, last)
