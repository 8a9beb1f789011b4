"""Which quantization points cost the most accuracy, and which nodes to keep in float.

Two measurements on the QDQ graph (run in PyTorch by :class:`~neurmap.calibration.onnx_torch.OnnxTorch`):

- ``linear_sensitivity``: one float forward with a zero probe at every Q point and a few backward passes with
  random output projections (Hutchinson). The expected squared output error that point i adds is
  ``E_r[ sum(g_i^2) ] * var(e_i)`` for an activation (g_i: gradient of r.y at the point, e_i: its actual
  quantization error on the frames), and ``E_r[(g_w . dw)^2]`` for a weight (dw: exact rounding error).
  Cheap (a handful of passes), and additive, so it ranks points and predicts the total.
- ``measured_drop``: the real output error with only the chosen points switched off, to check a choice.

``choose_exclusions`` turns point scores into ORT ``nodes_to_exclude``: a weight point goes away by excluding
its Conv; an activation point only when its producer **and every quantized consumer** are excluded, so
nodes are added as the closure that actually removes the quantizer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from .onnx_torch import OnnxTorch


@dataclass
class Sensitivity:
    points: dict[str, float]                 # quant point -> predicted output MSE contribution
    owner: dict[str, str]                    # quant point -> node name
    total_predicted: float
    total_measured: float
    output_numel: int
    by_node: dict[str, float] = field(default_factory=dict)

    def top(self, k: int = 10) -> list[tuple[str, float]]:
        return sorted(self.by_node.items(), key=lambda kv: -kv[1])[:k]

    def share(self, nodes: list[str]) -> float:
        tot = sum(self.by_node.values()) or 1.0
        return sum(self.by_node.get(n, 0.0) for n in nodes) / tot


def linear_sensitivity(qdq_path, float_path, frames: np.ndarray, n_probe: int = 4, seed: int = 0) -> Sensitivity:
    """Predicted output-MSE contribution of every quantization point on ``frames`` (a few small crops)."""
    m = OnnxTorch(qdq_path, float_path, train_weights=True).eval()
    x = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32))
    g = torch.Generator().manual_seed(seed)
    acts: dict[str, float] = {}
    wts: dict[str, float] = {}
    with torch.no_grad():
        y_q = m(x)
    m.quantize = False
    m.probes = {}
    y = m(x)
    # exact rounding error of each weight
    dws = {}
    for k, kind in m.param_kind.items():
        if kind == "weight":
            m.quantize = True
            with torch.no_grad():
                dws[k] = (m._param_value(next(o for o, kk in m.param_of.items() if kk == k)) - m.params[k]).detach()
            m.quantize = False
    params = {k: m.params[k] for k in dws}
    probes = dict(m.probes)
    tensors = [z for z, _ in probes.values()] + list(params.values())
    for _ in range(n_probe):
        r = torch.randn(y.shape, generator=g)
        grads = torch.autograd.grad((y * r).sum(), tensors, retain_graph=True, allow_unused=True)
        for (name, (z, var)), gz in zip(probes.items(), grads[:len(probes)]):
            if gz is not None:
                acts[name] = acts.get(name, 0.0) + float(gz.pow(2).sum()) * var / n_probe
        for (k, _), gw in zip(params.items(), grads[len(probes):]):
            if gw is not None:
                wts[k] = wts.get(k, 0.0) + float((gw * dws[k]).sum()) ** 2 / n_probe
    m.probes = None
    numel = y.numel()
    points = {k: v / numel for k, v in {**acts, **wts}.items()}
    owner = m.producer_of()
    by_node: dict[str, float] = {}
    for p, v in points.items():
        by_node[owner.get(p, p)] = by_node.get(owner.get(p, p), 0.0) + v
    measured = float((y_q - y.detach()).pow(2).mean())
    return Sensitivity(points, owner, sum(points.values()), measured, numel, by_node)


def measured_mse(qdq_path, float_path, frames: np.ndarray, disabled: Optional[set] = None) -> float:
    """Output MSE vs float with the given quant points left in float (None: all quantized)."""
    m = OnnxTorch(qdq_path, float_path, train_weights=False).eval()
    x = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32))
    with torch.no_grad():
        m.quantize = False
        y = m(x)
        m.quantize = True
        m.disabled = set(disabled or ())
        yq = m(x)
    return float((yq - y).pow(2).mean())


def choose_exclusions(sens: Sensitivity, qdq_path, budget: int = 4, min_share: float = 0.05) -> tuple[list[str], float]:
    """Nodes to keep in float (at most ``budget`` Conv/ConvTranspose/Add nodes) removing the largest share of
    the predicted error; returns (node names, predicted share of the error they remove)."""
    import onnx

    g = onnx.load(str(qdq_path)).graph
    # activation Q point -> (producer node, consumer nodes of its DQ outputs)
    prod = {o: n for n in g.node for o in n.output}
    cons: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)

    def real_consumers(tensor: str) -> list[str]:
        out = []
        for c in cons.get(tensor, []):
            if c.op_type in ("QuantizeLinear", "DequantizeLinear"):
                for o in c.output:
                    out += real_consumers(o)
            else:
                out.append(c.name)
        return out

    def real_producer(tensor: str) -> Optional[str]:
        n = prod.get(tensor)
        while n is not None and n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            n = prod.get(n.input[0])
        return None if n is None else n.name

    qnode = {n.output[0]: n for n in g.node if n.op_type == "QuantizeLinear"}
    cost: dict[str, set] = {}   # point -> nodes that must be excluded to remove it
    for p in sens.points:
        if p in qnode:
            src = qnode[p].input[0]
            need = set(real_consumers(p))
            pr = real_producer(src)
            if pr:
                need.add(pr)
            cost[p] = need
        else:
            cost[p] = {sens.owner.get(p, p)}
    heavy = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
    kind = {n.name: n.op_type for n in g.node}
    chosen: set[str] = set()
    total = sum(sens.points.values()) or 1.0
    removed = 0.0
    while True:
        best, best_gain, best_add = None, 0.0, set()
        for p, v in sens.points.items():
            need = cost[p] - chosen
            if not need:
                continue
            n_heavy = sum(1 for n in chosen | need if kind.get(n) in heavy)
            if n_heavy > budget:
                continue
            # gain = every point that becomes free with this addition
            gain = sum(vv for pp, vv in sens.points.items() if cost[pp] <= chosen | need and not cost[pp] <= chosen)
            score = gain / max(1, sum(1 for n in need if kind.get(n) in heavy))
            if score > best_gain:
                best, best_gain, best_add = p, score, need
        if best is None:
            break
        gain = sum(vv for pp, vv in sens.points.items() if cost[pp] <= chosen | best_add and not cost[pp] <= chosen)
        if gain / total < min_share / 4:
            break
        chosen |= best_add
        removed += gain
    return sorted(chosen), removed / total
