"""PyTorch -> ONNX for the deblur nets and the motion net, with metadata that travels with the file.

Decision: the artifact holds the **bare network with the value-range offset folded in**, so it always takes
and returns [0, 1] images (``neurmap.input_range`` is "0,1" whatever range the weights were trained in),
but it does **no padding**: H and W must be multiples of ``neurmap.pad_multiple``. The runtime reflect-pads
bottom/right and crops (``neurmap.core.models.wrapper.pad_to_multiple`` does exactly that), which keeps the
graph free of data-dependent Pad/Slice ops that TensorRT, Core ML and the quantizers handle badly.

Graph I/O: deblur ``blurry`` (N,3,H,W) float32 [0,1] -> ``sharp`` (N,3,H,W); motion ``image`` -> ``motion``
(N,2,H,W) (dy, dx) in units of 20 px.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Iterable, Optional

import torch
from torch import nn

from neurmap.core.errors import NeurmapError

META_PREFIX = "neurmap."
DEFAULT_OPSET = 17  # GridSample-safe for TensorRT (16-19) and what ORT quantization tools expect


def toolkit_version() -> str:
    try:
        from neurmap import __version__
        return __version__
    except Exception:  # pragma: no cover
        return "unknown"


class RangeFolded(nn.Module):
    """The bare net seen from [0, 1]: ``net(x + offset) - offset``; no input checks, no padding."""

    def __init__(self, net: nn.Module, offset: float) -> None:
        super().__init__()
        self.net, self.offset = net, float(offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.offset == 0.0:
            return self.net(x)
        return self.net(x + self.offset) - self.offset


def bare_for_export(model: nn.Module) -> tuple[nn.Module, dict]:
    """(module to trace, facts) for a DeblurModel / MotionModel / bare net."""
    from neurmap.core.models.wrapper import DeblurModel, MotionModel

    if isinstance(model, DeblurModel):
        return RangeFolded(model.net, model.offset).eval(), {
            "architecture": model.name or type(model.net).__name__, "pad_multiple": model.pad_multiple,
            "role": "deblur", "state": model.net.state_dict(), "net_input_range": model.input_range}
    if isinstance(model, MotionModel):
        return model.net.eval(), {"architecture": "motion", "pad_multiple": model.pad_multiple, "role": "motion",
                                  "state": model.net.state_dict()}
    if isinstance(model, nn.Module):
        return model.eval(), {"architecture": type(model).__name__, "pad_multiple": int(getattr(model, "pad_multiple", 1)),
                              "role": "deblur", "state": model.state_dict()}
    raise NeurmapError(f"cannot export a {type(model).__name__}; pass a model from neurmap.core.load_weights")


def check_export_size(height: int, width: int, multiple: int) -> None:
    if height <= 0 or width <= 0:
        raise NeurmapError(f"export size {height}x{width} must be positive")
    if height % multiple or width % multiple:
        up = (-(-height // multiple) * multiple, -(-width // multiple) * multiple)
        raise NeurmapError(f"export size {height}x{width} is not a multiple of this net's pad multiple {multiple}; "
                           f"use {up[0]}x{up[1]} (the runtime pads frames to it and crops the result)")


def _shape_text(height: Optional[int], width: Optional[int], dynamic: bool) -> str:
    if dynamic:
        return "N,3,H,W"
    return f"1,3,{height},{width}"


def set_metadata(model: Any, meta: dict) -> None:
    """Write ``neurmap.*`` metadata_props (strings) into an onnx ModelProto, replacing same-named keys."""
    keep = [p for p in model.metadata_props if p.key not in {META_PREFIX + k for k in meta}]
    del model.metadata_props[:]
    for p in keep:
        model.metadata_props.add(key=p.key, value=p.value)
    for k, v in meta.items():
        model.metadata_props.add(key=META_PREFIX + k, value=v if isinstance(v, str) else json.dumps(v))


def read_artifact_metadata(path: str | Path) -> dict[str, str]:
    """The ``neurmap.*`` metadata of an exported artifact (prefix removed), without loading its weights.

    Works for ONNX files and for TensorRT engines / Core ML packages with a JSON sidecar."""
    import onnx

    p = Path(path)
    if not p.exists():
        raise NeurmapError(f"artifact {p} does not exist")
    side = sidecar_path(p)
    if p.suffix != ".onnx" and side.exists():
        return json.loads(side.read_text())
    try:
        m = onnx.load(str(p), load_external_data=False)
    except Exception as e:
        raise NeurmapError(f"{p}: not a readable ONNX file ({str(e).splitlines()[0][:120]})") from None
    return {q.key[len(META_PREFIX):]: q.value for q in m.metadata_props if q.key.startswith(META_PREFIX)}


def sidecar_path(path: str | Path) -> Path:
    p = Path(path)
    return p.with_name(p.name + ".json")


def save_onnx_atomic(model: Any, path: str | Path, check: bool = True) -> Path:
    """onnx.checker then write to a temp file and rename over ``path``."""
    import onnx

    from neurmap.core.checkpoint import atomic_write

    if check:
        try:
            onnx.checker.check_model(model, full_check=False)
        except Exception as e:
            raise NeurmapError(f"exported graph fails onnx.checker: {str(e).splitlines()[0][:200]}") from None
    data = model.SerializeToString()
    return atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(data))


def simplify_onnx(model: Any) -> Any:
    """onnxslim (constant folding, dead-code, fusion of trivial ops); the input is returned on failure."""
    try:
        import onnxslim
    except ImportError:  # pragma: no cover - onnxslim is a dependency
        return model
    try:
        return onnxslim.slim(model)
    except Exception:  # pragma: no cover - never lose an export to the simplifier
        return model


def _trace_to_onnx(module: nn.Module, example: torch.Tensor, in_name: str, out_name: str, dynamic: bool,
                   opset: int) -> Any:
    import onnx

    dyn = {in_name: {0: "N", 2: "H", 3: "W"}, out_name: {0: "N", 2: "H", 3: "W"}} if dynamic else None
    buf = io.BytesIO()
    import warnings
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), buf, input_names=[in_name], output_names=[out_name],
                          dynamic_axes=dyn, opset_version=opset, do_constant_folding=True, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def export_graph(model: nn.Module, path: str | Path, in_name: str, out_name: str, height: Optional[int],
                 width: Optional[int], dynamic: bool, opset: int, simplify: bool, extra_meta: dict | None) -> Path:
    from neurmap.core.checkpoint import weights_hash

    module, facts = bare_for_export(model)
    mult = facts["pad_multiple"]
    if height is None or width is None:
        if not dynamic:
            raise NeurmapError("give the export size (height and width) or dynamic=True")
        height = height or 8 * mult
        width = width or 8 * mult
    check_export_size(height, width, mult)
    module = module.to("cpu").float().eval()
    example = torch.rand(1, 3, height, width)
    onnx_model = _trace_to_onnx(module, example, in_name, out_name, dynamic, opset)
    if simplify:
        onnx_model = simplify_onnx(onnx_model)
    meta = {"architecture": facts["architecture"], "role": facts["role"], "input_range": "0,1",
            "pad_multiple": str(mult), "weights_hash": weights_hash(facts["state"]), "precision": "fp32",
            "toolkit_version": toolkit_version(), "shape": _shape_text(height, width, dynamic),
            "input": in_name, "output": out_name, "opset": str(opset),
            # the range the weights were trained in (folded into the graph): what maps the graph back to torch
            "net_input_range": facts.get("net_input_range", "0,1")}
    meta.update(extra_meta or {})
    set_metadata(onnx_model, meta)
    return save_onnx_atomic(onnx_model, path)


def export_onnx(model: nn.Module, path: str | Path, height: Optional[int] = None, width: Optional[int] = None,
                dynamic: bool = False, opset: int = DEFAULT_OPSET, simplify: bool = True,
                extra_meta: dict | None = None) -> Path:
    """Export a deblur model (``DeblurModel`` from ``load_weights``) to ONNX; returns the path.

    The artifact takes ``blurry`` (N,3,H,W) float32 in [0, 1] and returns ``sharp``; H and W must be multiples
    of the ``neurmap.pad_multiple`` metadata value (the runtime pads). ``dynamic=True`` leaves N, H and W free
    (``height``/``width`` then only size the trace example). Written atomically, ``onnx.checker``-clean.
    """
    return export_graph(model, path, "blurry", "sharp", height, width, dynamic, opset, simplify, extra_meta)


def export_motion_onnx(motion_model: nn.Module, path: str | Path, height: Optional[int] = None,
                       width: Optional[int] = None, dynamic: bool = False, opset: int = DEFAULT_OPSET,
                       simplify: bool = True) -> Path:
    """Export the motion net: ``image`` (N,3,H,W) [0, 1] -> ``motion`` (N,2,H,W) (dy, dx) in 20-px units."""
    return export_graph(motion_model, path, "image", "motion", height, width, dynamic, opset, simplify,
                        {"motion_scale": "20"})


def onnx_session(path: str | Path, threads: int = 0, providers: Iterable[str] | None = None, opt_level: str = "all"):
    """An onnxruntime InferenceSession (CPU by default) with sane options."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    so.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                   "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                   "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}[opt_level]
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=list(providers or ["CPUExecutionProvider"]))
