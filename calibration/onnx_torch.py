"""Run an ONNX graph — in particular ORT's QDQ INT8 graph — as a differentiable PyTorch module.

QuantizeLinear / DequantizeLinear become fake quantization (round with a straight-through gradient, clamp to
the integer range), so the module computes what ``onnxruntime`` computes for the QDQ model (up to the
integer kernels' accumulation order). Weight DequantizeLinear nodes fed by an int8 initializer are replaced
by a **trainable float weight** that is fake-quantized on the fly with ORT's own rule (symmetric, per output
channel, scale = max|w| / 127), and int32 biases by trainable float biases; activation scales and zero
points stay as calibrated. That makes three things possible with one small interpreter:

- sensitivity: switch individual quantization points off (``disabled``) and measure the output error;
- quantization-aware fine-tuning: optimise the float weights through the fake quantizers (``calibration.qat``)
  and write them back into the float ONNX, which ORT then quantizes to exactly the graph that was trained;
- checking: compare with the ORT run of the same file.

Supported ops are the ones our exports use (convs, elementwise, shape arithmetic, slicing, padding,
pixel (un)shuffle, resize by nearest/linear); anything else raises NotImplementedError naming the op.
"""
from __future__ import annotations

from typing import Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

_QRANGE = {2: (0, 255), 3: (-128, 127), 4: (0, 65535), 5: (-32768, 32767), 6: (-(2 ** 31), 2 ** 31 - 1)}
_NP_TO_TORCH = {np.dtype("float32"): torch.float32, np.dtype("float16"): torch.float16,
                np.dtype("int64"): torch.int64, np.dtype("int32"): torch.int32, np.dtype("int8"): torch.int8,
                np.dtype("uint8"): torch.uint8, np.dtype("bool"): torch.bool, np.dtype("float64"): torch.float64}
_ONNX_TO_TORCH = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 6: torch.int32, 7: torch.int64, 9: torch.bool,
                  10: torch.float16, 11: torch.float64}


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def fake_quant(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, qmin: int, qmax: int,
               axis: Optional[int] = None) -> torch.Tensor:
    """(clamp(round(x/s)+zp) - zp) * s with a straight-through gradient inside the range."""
    if axis is not None and scale.dim() == 1:
        shape = [1] * x.dim()
        shape[axis] = -1
        scale, zp = scale.view(shape), zp.view(shape)
    q = torch.clamp(_round_ste(x / scale) + zp, qmin, qmax)
    return (q - zp) * scale


def weight_scale(w: torch.Tensor, axis: int, qmax: int = 127) -> torch.Tensor:
    """ORT's symmetric per-channel weight scale: max |w| over all axes but ``axis``, / qmax."""
    dims = [d for d in range(w.dim()) if d != axis]
    return (w.detach().abs().amax(dim=dims) / qmax).clamp_min(1e-12)


def _attrs(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _np(t):
    import onnx.numpy_helper as nh
    return nh.to_array(t)


class OnnxTorch(nn.Module):
    """A QDQ (or float) ONNX graph as a torch module. ``float_model``: the float ONNX the QDQ graph was made
    from, to initialise trainable weights from the unrounded float values."""

    def __init__(self, model, float_model=None, train_weights: bool = True) -> None:
        super().__init__()
        import onnx

        if not isinstance(model, onnx.ModelProto):
            model = onnx.load(str(model))
        if float_model is not None and not isinstance(float_model, onnx.ModelProto):
            float_model = onnx.load(str(float_model))
        g = model.graph
        self.nodes = list(g.node)
        self.input_names = [i.name for i in g.input if i.name not in {x.name for x in g.initializer}]
        self.output_names = [o.name for o in g.output]
        float_inits = {t.name: _np(t) for t in float_model.graph.initializer} if float_model is not None else {}
        consts: dict[str, torch.Tensor] = {}
        for t in g.initializer:
            a = _np(t)
            consts[t.name] = torch.from_numpy(np.array(a, copy=True))
        # weights/biases feeding DequantizeLinear: trainable float parameters
        self.params = nn.ParameterDict()
        self.param_of: dict[str, str] = {}      # DQ output name -> parameter key
        self.param_axis: dict[str, Optional[int]] = {}
        self.param_kind: dict[str, str] = {}    # "weight" | "bias"
        self.param_source: dict[str, str] = {}  # parameter key -> float initializer name
        for n in self.nodes:
            if n.op_type == "DequantizeLinear" and n.input[0] in consts and consts[n.input[0]].dtype in (torch.int8, torch.uint8, torch.int32):
                q = consts[n.input[0]]
                s = consts[n.input[1]].float()
                zp = consts[n.input[2]].float() if len(n.input) > 2 and n.input[2] in consts else torch.zeros_like(s)
                axis = _attrs(n).get("axis", 1) if s.dim() == 1 and s.numel() > 1 else None
                orig = n.input[0][: -len("_quantized")] if n.input[0].endswith("_quantized") else n.input[0]
                if orig in float_inits:
                    val = torch.from_numpy(np.array(float_inits[orig], np.float32))
                else:
                    shape = [1] * q.dim()
                    if axis is not None:
                        shape[axis] = -1
                    val = (q.float() - zp.view(shape if axis is not None else [])) * s.view(shape if axis is not None else [])
                key = f"p{len(self.params)}"
                self.params[key] = nn.Parameter(val.float(), requires_grad=train_weights)
                self.param_of[n.output[0]] = key
                self.param_axis[key] = axis
                self.param_kind[key] = "bias" if q.dtype == torch.int32 else "weight"
                self.param_source[key] = orig
                self.param_qmax = 127
        self.consts = consts
        self.disabled: set[str] = set()          # activation Q outputs / param keys to leave in float
        self.quantize = True
        self.probes: Optional[dict] = None        # float run with zero "probe" tensors at every Q point
        self.node_hook = None                     # f(conv node, inputs, output) -> replacement output or None

    # -------------------------------------------------------------------------------------------------
    def quant_points(self) -> list[str]:
        """Names of activation QuantizeLinear outputs and weight parameter keys (the switchable points)."""
        acts = [n.output[0] for n in self.nodes if n.op_type == "QuantizeLinear"]
        return acts + [k for k, kind in self.param_kind.items() if kind == "weight"]

    def producer_of(self) -> dict[str, str]:
        """{quant point: name of the node that owns it} — the Conv of a weight, the producer of an activation."""
        prod = {o: n.name for n in self.nodes for o in n.output}
        out = {}
        for n in self.nodes:
            if n.op_type == "QuantizeLinear":
                out[n.output[0]] = prod.get(n.input[0], n.input[0])
        for n in self.nodes:
            for i in n.input:
                if i in self.param_of:
                    out[self.param_of[i]] = n.name
        return out

    def consumer_map(self) -> dict[str, list]:
        out: dict[str, list] = {}
        for n in self.nodes:
            for i in n.input:
                out.setdefault(i, []).append(n)
        return out

    def float_state(self) -> dict[str, np.ndarray]:
        """{float initializer name: trained value} for writing back into the float ONNX."""
        return {self.param_source[k]: p.detach().cpu().numpy().astype(np.float32) for k, p in self.params.items()}

    def forward(self, *inputs: torch.Tensor):
        env: dict[str, object] = dict(zip(self.input_names, inputs))
        env[""] = None

        def get(name):
            if name in env:
                return env[name]
            if name in self.param_of:
                return self._param_value(name)
            if name in self.consts:
                return self.consts[name]
            raise KeyError(name)

        for n in self.nodes:
            if n.op_type == "DequantizeLinear" and n.output[0] in self.param_of:
                env[n.output[0]] = self._param_value(n.output[0])
                continue
            ins = [get(i) if i else None for i in n.input]
            outs = self._run(n, ins)
            if self.node_hook is not None and n.op_type in ("Conv", "ConvTranspose"):
                new = self.node_hook(n, ins, outs[0])
                if new is not None:
                    outs = [new]
            for name, v in zip(n.output, outs):
                env[name] = v
        res = [env[o] for o in self.output_names]
        return res[0] if len(res) == 1 else tuple(res)

    def _param_value(self, dq_out: str) -> torch.Tensor:
        key = self.param_of[dq_out]
        p = self.params[key]
        if self.param_kind[key] == "bias" or not self.quantize or key in self.disabled:
            return p
        axis = self.param_axis[key]
        if axis is None:
            s = (p.detach().abs().max() / 127).clamp_min(1e-12)
            return fake_quant(p, s, torch.zeros(()), -127, 127)
        s = weight_scale(p, axis)
        return fake_quant(p, s, torch.zeros_like(s), -127, 127, axis)

    # -------------------------------------------------------------------------------------------------
    def _run(self, n, x: list) -> list:  # noqa: C901 - one branch per op
        op, a = n.op_type, _attrs(n)
        if op == "QuantizeLinear":
            v, s, zp = x[0], x[1].float(), (x[2] if len(x) > 2 and x[2] is not None else None)
            qt = zp.dtype if zp is not None else torch.uint8
            zpf = zp.float() if zp is not None else torch.zeros_like(s)
            lo, hi = (0, 255) if qt == torch.uint8 else (-128, 127) if qt == torch.int8 else \
                (0, 65535) if qt == torch.int32 else (-128, 127)
            if not self.quantize or n.output[0] in self.disabled:
                # ORT drops a Relu in front of a Q whose range starts at 0 (zp == qmin): keep its effect
                if zpf.numel() == 1 and float(zpf) == lo:
                    v = F.relu(v)
                if self.probes is not None:
                    z = torch.zeros_like(v, requires_grad=True)
                    err = fake_quant(v.detach(), s, zpf, lo, hi, a.get("axis", 1) if s.dim() == 1 and s.numel() > 1 else None) - v.detach()
                    self.probes[n.output[0]] = (z, float(err.pow(2).mean()))
                    v = v + z
                return [("passthrough", v)]
            axis = a.get("axis", 1) if s.dim() == 1 and s.numel() > 1 else None
            if axis is not None:
                shape = [1] * v.dim()
                shape[axis] = -1
                s_, z_ = s.view(shape), zpf.view(shape)
            else:
                s_, z_ = s, zpf
            return [("q", torch.clamp(_round_ste(v / s_) + z_, lo, hi))]
        if op == "DequantizeLinear":
            v, s = x[0], x[1].float()
            if isinstance(v, tuple) and v[0] == "passthrough":
                return [v[1]]
            zp = x[2].float() if len(x) > 2 and x[2] is not None else torch.zeros_like(s)
            q = v[1] if isinstance(v, tuple) else v.float()
            axis = a.get("axis", 1) if s.dim() == 1 and s.numel() > 1 else None
            if axis is not None:
                shape = [1] * q.dim()
                shape[axis] = -1
                s, zp = s.view(shape), zp.view(shape)
            return [(q - zp) * s]
        if op == "Conv":
            w, b = x[1], (x[2] if len(x) > 2 else None)
            pads = a.get("pads", [0] * 4)
            inp = x[0]
            if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                raise NotImplementedError("Conv auto_pad")
            if pads[0] != pads[2] or pads[1] != pads[3]:
                inp = F.pad(inp, (pads[1], pads[3], pads[0], pads[2]))
                padding = 0
            else:
                padding = (pads[0], pads[1])
            return [F.conv2d(inp, w, b, stride=tuple(a.get("strides", [1, 1])), padding=padding,
                             dilation=tuple(a.get("dilations", [1, 1])), groups=a.get("group", 1))]
        if op == "ConvTranspose":
            w, b = x[1], (x[2] if len(x) > 2 else None)
            pads = a.get("pads", [0] * 4)
            if pads[0] != pads[2] or pads[1] != pads[3]:
                raise NotImplementedError("ConvTranspose with asymmetric pads")
            return [F.conv_transpose2d(x[0], w, b, stride=tuple(a.get("strides", [1, 1])), padding=(pads[0], pads[1]),
                                       output_padding=tuple(a.get("output_padding", [0, 0])), groups=a.get("group", 1),
                                       dilation=tuple(a.get("dilations", [1, 1])))]
        if op == "Relu":
            return [F.relu(x[0])]
        if op == "LeakyRelu":
            return [F.leaky_relu(x[0], a.get("alpha", 0.01))]
        if op == "Sigmoid":
            return [torch.sigmoid(x[0])]
        if op == "Clip":
            lo = x[1] if len(x) > 1 and x[1] is not None else None
            hi = x[2] if len(x) > 2 and x[2] is not None else None
            return [torch.clamp(x[0], None if lo is None else float(lo), None if hi is None else float(hi))]
        if op in ("Add", "Sub", "Mul", "Div"):
            l, r = x
            if l.dtype == torch.int64 and r.dtype == torch.int64 and op == "Div":
                return [torch.div(l, r, rounding_mode="floor")]
            f = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}[op]
            return [f(l, r)]
        if op == "Identity":
            return [x[0]]
        if op == "Constant":
            return [torch.from_numpy(np.array(_np(a["value"]), copy=True))]
        if op == "Shape":
            return [torch.tensor(list(x[0].shape), dtype=torch.int64)]
        if op == "Gather":
            axis = a.get("axis", 0)
            idx = x[1].long()
            return [torch.index_select(x[0], axis, idx.flatten()).reshape(
                list(x[0].shape[:axis]) + list(idx.shape) + list(x[0].shape[axis + 1:]))]
        if op == "Unsqueeze":
            axes = a.get("axes") or x[1].tolist()
            v = x[0]
            for ax in sorted(int(i) for i in axes):
                v = v.unsqueeze(ax)
            return [v]
        if op == "Squeeze":
            axes = a.get("axes") or (x[1].tolist() if len(x) > 1 and x[1] is not None else None)
            return [x[0].squeeze() if axes is None else x[0].squeeze(tuple(int(i) for i in axes))]
        if op == "Cast":
            return [x[0].to(_ONNX_TO_TORCH[a["to"]])]
        if op == "Concat":
            return [torch.cat(x, dim=a["axis"])]
        if op == "Slice":
            v, starts, ends = x[0], x[1].tolist(), x[2].tolist()
            axes = x[3].tolist() if len(x) > 3 and x[3] is not None else list(range(len(starts)))
            steps = x[4].tolist() if len(x) > 4 and x[4] is not None else [1] * len(starts)
            idx = [slice(None)] * v.dim()
            for s, e, ax, st in zip(starts, ends, axes, steps):
                if st != 1:
                    raise NotImplementedError("Slice with step != 1")
                dim = v.shape[ax]
                s = max(0, s + dim) if s < 0 else min(s, dim)
                e = max(0, e + dim) if e < 0 else min(e, dim)
                idx[ax] = slice(s, e)
            return [v[tuple(idx)]]
        if op == "Split":
            axis = a.get("axis", 0)
            sizes = x[1].tolist() if len(x) > 1 and x[1] is not None else a.get("split")
            if sizes is None:
                k = len(n.output)
                sizes = [x[0].shape[axis] // k] * k
            return list(torch.split(x[0], [int(s) for s in sizes], dim=axis))
        if op == "Reshape":
            shape = [int(s) for s in x[1].tolist()]
            shape = [x[0].shape[i] if s == 0 else s for i, s in enumerate(shape)]
            return [x[0].reshape(shape)]
        if op == "Transpose":
            return [x[0].permute(*a["perm"])]
        if op == "Flatten":
            return [x[0].flatten(a.get("axis", 1))]
        if op == "Pad":
            pads = x[1].tolist()
            mode = a.get("mode", b"constant")
            mode = mode.decode() if isinstance(mode, bytes) else mode
            r = x[0].dim()
            tp = []
            for d in reversed(range(r)):
                tp += [pads[d], pads[d + r]]
            while len(tp) > 2 and tp[-1] == 0 and tp[-2] == 0:
                tp = tp[:-2]
            m = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}[mode]
            val = float(x[2]) if m == "constant" and len(x) > 2 and x[2] is not None else 0.0
            return [F.pad(x[0], tp, mode=m, value=val) if m == "constant" else F.pad(x[0], tp, mode=m)]
        if op == "DepthToSpace":
            if a.get("mode", b"DCR") in (b"CRD", "CRD"):
                return [F.pixel_shuffle(x[0], a["blocksize"])]
            b_, c, h, w = x[0].shape
            bs = a["blocksize"]
            v = x[0].reshape(b_, bs, bs, c // bs // bs, h, w).permute(0, 3, 4, 1, 5, 2)
            return [v.reshape(b_, c // bs // bs, h * bs, w * bs)]
        if op == "SpaceToDepth":
            b_, c, h, w = x[0].shape
            bs = a["blocksize"]
            v = x[0].reshape(b_, c, h // bs, bs, w // bs, bs).permute(0, 3, 5, 1, 2, 4)
            return [v.reshape(b_, c * bs * bs, h // bs, w // bs)]
        if op == "ConstantOfShape":
            val = _np(a["value"]) if "value" in a else np.zeros(1, np.float32)
            return [torch.full([int(s) for s in x[0].tolist()], float(val.flatten()[0]),
                               dtype=_NP_TO_TORCH[val.dtype])]
        raise NotImplementedError(f"op {op} is not supported by the torch interpreter")


def with_initializers(float_onnx, state: dict[str, np.ndarray]):
    """The float ONNX (path or ModelProto) with named initializers replaced by new values (same shapes).

    Returns the model instead of saving it: saving an artifact is export's job, and calibration never
    imports export (imports run export -> calibration only)."""
    import onnx
    import onnx.numpy_helper as nh

    m = onnx.load(str(float_onnx)) if not isinstance(float_onnx, onnx.ModelProto) else float_onnx
    for i, t in enumerate(m.graph.initializer):
        if t.name in state:
            new = nh.from_array(state[t.name].astype(nh.to_array(t).dtype), t.name)
            m.graph.initializer[i].CopyFrom(new)
    return m


def iter_batches(frames: np.ndarray, batch: int, rng: np.random.Generator, crop: Optional[int] = None,
                 multiple: int = 8) -> Iterable[torch.Tensor]:
    """Endless random batches (random crops of ``crop`` px, random flips) from (N,3,H,W) frames."""
    n, _, h, w = frames.shape
    while True:
        idx = rng.integers(0, n, size=batch)
        out = []
        for i in idx:
            f = frames[i]
            if crop is not None:
                ch, cw = min(crop, h) // multiple * multiple, min(crop, w) // multiple * multiple
                t, l_ = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
                f = f[:, t:t + ch, l_:l_ + cw]
            if rng.random() < 0.5:
                f = f[:, :, ::-1]
            out.append(np.ascontiguousarray(f))
        yield torch.from_numpy(np.stack(out))
