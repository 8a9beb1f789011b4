"""Empirical bias correction of a QDQ graph, sequential and exact in one pass.

INT8 rounding and range clipping do not only add noise: they shift the mean of every channel a little (a ReLU
turns zero-mean noise into a positive offset; clipped tails pull means in), and the shifts add up through the
network into a visible brightness/colour cast of the output (measured here: up to ~1 grey level in the blue
channel of DMPHN 1-2-4). The fix (Nagel et al., "Data-Free Quantization", empirical variant): for every conv, in
graph order, with all earlier convs already corrected, add ``E[float output] - E[quantized output]`` per
output channel to its bias. :class:`OnnxTorch` runs the nodes in order, so one quantized forward with a hook at
each conv does the whole sequence; the float means come from one float forward of the same frames.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .onnx_torch import OnnxTorch


@torch.no_grad()
def bias_correction(qdq_path, float_path, frames: np.ndarray, damping: float = 1.0) -> dict[str, np.ndarray]:
    """{float bias initializer name: corrected bias} for every conv of the QDQ graph (write them back into the
    float ONNX with :func:`neurmap.calibration.onnx_torch.write_back` and quantize again with the same ranges)."""
    x_all = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32))
    ref = OnnxTorch(float_path, None, train_weights=False).eval()
    ref.quantize = False
    sums: dict[str, torch.Tensor] = {}

    def record(node, ins, out):
        m = out.mean(dim=(0, 2, 3)) * out.shape[0]
        sums[node.output[0]] = sums.get(node.output[0], 0) + m
        return None

    ref.node_hook = record
    ref(x_all)
    f_mean = {k: v / len(x_all) for k, v in sums.items()}

    q = OnnxTorch(qdq_path, float_path, train_weights=False).eval()
    # the bias of each conv: a trainable parameter (quantized graph) or a float constant (conv kept in float)
    deltas: dict[str, torch.Tensor] = {}

    def bias_name(node) -> Optional[str]:
        if len(node.input) < 3 or not node.input[2]:
            return None
        b = node.input[2]
        if b in q.param_of:
            return q.param_source[q.param_of[b]]
        return b if b in q.consts else None

    # one quantized forward over all frames at once: at each conv (earlier ones already corrected in this same
    # pass) measure the channel means, correct the output on the spot and remember the correction
    def hook(nd, ins, out):
        name = nd.output[0]
        if name not in f_mean or bias_name(nd) is None:
            return None
        d = damping * (f_mean[name] - out.mean(dim=(0, 2, 3)))
        deltas[name] = d
        return out + d.view(1, -1, 1, 1)

    order = [nd for nd in q.nodes if nd.op_type in ("Conv", "ConvTranspose")]
    q.node_hook = hook
    q(x_all)
    q.node_hook = None
    out: dict[str, np.ndarray] = {}
    for node in order:
        name = node.output[0]
        bn = bias_name(node)
        if bn is None or name not in deltas:
            continue
        if node.input[2] in q.param_of:
            base = q.params[q.param_of[node.input[2]]].detach()
        else:
            base = q.consts[bn].float()
        out[bn] = (base + deltas[name]).numpy().astype(np.float32)
    return out
