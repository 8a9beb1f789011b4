"""Weights in and out of an exported ONNX without re-tracing: patch initializers by name, rebuild the
PyTorch model behind a file, or re-export with the file's own shape and metadata.

Adaptation (edge_runtime) trains PyTorch weights; these are the ways they go back into an artifact: a hot
swap into ONNX Runtime, the refit ONNX of a TensorRT engine, or a re-export where patching cannot.
"""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import torch

from neurmap.core.errors import NeurmapError


def _initializer_index(proto) -> dict[str, int]:
    return {init.name: i for i, init in enumerate(proto.graph.initializer)}


def patch_onnx_initializers(proto, state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor] | None = None,
                            prefixes: tuple[str, ...] = ("net.", "")):
    """A copy of ``proto`` whose initializers named ``prefix + key`` hold ``state[key]`` (dtype of the file).

    Keys that are not found (folded, renamed, deduplicated by the exporter) are fine while they equal
    ``reference`` (the weights the file was exported from); a changed one that is not found raises
    :class:`KeyError` so the caller can re-export instead."""
    import onnx
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    index = _initializer_index(out)
    missing = []
    for key, value in state.items():
        name = next((p + key for p in prefixes if p + key in index), None)
        if name is None:
            if reference is None or key not in reference or not torch.equal(reference[key].cpu(), value.cpu()):
                missing.append(key)
            continue
        init = out.graph.initializer[index[name]]
        old = numpy_helper.to_array(init)
        arr = value.detach().cpu().numpy()
        if tuple(old.shape) != tuple(arr.shape):
            missing.append(key)
            continue
        init.CopyFrom(numpy_helper.from_array(arr.astype(old.dtype, copy=False), name))
    if missing:
        raise KeyError(f"{len(missing)} changed tensors have no initializer of the same name and shape "
                       f"(e.g. {missing[0]})")
    from neurmap.core.checkpoint import weights_hash
    for p in out.metadata_props:
        if p.key == "neurmap.weights_hash":
            p.value = weights_hash(state)
    return out


def model_from_onnx(path: str | Path):
    """The PyTorch DeblurModel behind an exported ONNX (architecture and weights' value range from its metadata,
    weights from its initializers by name). Raises NeurmapError when the file cannot be mapped back (give
    --adapt-opts weights=W): the range is read, never guessed from the graph."""
    import onnx
    from onnx import numpy_helper

    from neurmap.core import DeblurModel
    from neurmap.core.models import MODELS, build_network
    from neurmap.core.models.wrapper import RANGE_OFFSETS

    try:
        proto = onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 - protobuf raises several kinds for a corrupt or truncated file
        raise NeurmapError(f"{path} is not a readable ONNX file ({type(e).__name__}); re-export it with "
                           "`neurmap export --target onnx --weights W`") from None
    meta = {p.key.removeprefix("neurmap."): p.value for p in proto.metadata_props}
    arch = meta.get("architecture")
    if arch not in MODELS or MODELS[arch].role != "deblur":
        raise NeurmapError(f"{path}: its metadata names no known deblur architecture ({arch!r}); pass the PyTorch "
                           "weights to adapt (--adapt-opts weights=W)")
    if meta.get("precision", "fp32") not in ("fp32", "fp16"):
        raise NeurmapError(f"{path} is a {meta.get('precision')} graph: adapting it needs the fp32 PyTorch weights "
                           "(--adapt-opts weights=W) and re-quantization; not supported online")
    # the graph has the weights' value range folded in (net(x + o) - o); the export records which range
    rng = meta.get("net_input_range")
    if rng not in RANGE_OFFSETS:
        raise NeurmapError(f"{path}: its metadata does not record the value range its weights were trained in "
                           f"(neurmap.net_input_range={rng!r}); re-export it with `neurmap export --target onnx "
                           "--weights W`, or pass the PyTorch weights (--adapt-opts weights=W)")
    net = build_network(arch)
    index = {init.name: init for init in proto.graph.initializer}
    state = {}
    for k, v in net.state_dict().items():
        init = index.get("net." + k) or index.get(k)
        if init is None:
            raise NeurmapError(f"{path}: tensor {k} was folded or renamed by the export; pass the PyTorch weights "
                               "to adapt (--adapt-opts weights=W)")
        state[k] = torch.from_numpy(numpy_helper.to_array(init).astype(np.float32).copy())
    net.load_state_dict(state)
    return DeblurModel(net, rng, arch).eval()


def reexport_bytes(model, state, artifact) -> bytes:
    """Re-export the adapted model with the artifact's own shape/metadata (fallback when patching cannot)."""
    import onnx

    from .onnx_export import export_onnx, read_artifact_metadata, set_metadata

    meta = read_artifact_metadata(artifact)
    m = copy.deepcopy(model).cpu()
    m.net.load_state_dict({k: v.cpu() for k, v in state.items()})
    shape = meta.get("shape", "N,3,H,W").split(",")
    dynamic = not shape[-1].isdigit()
    h = int(shape[2]) if not dynamic else None
    w = int(shape[3]) if not dynamic else None
    with tempfile.TemporaryDirectory() as d:
        p = export_onnx(m, Path(d) / "adapted.onnx", h, w, dynamic=dynamic, opset=int(meta.get("opset", 17)))
        proto = onnx.load(str(p))
    keep = {k: v for k, v in meta.items() if k not in ("weights_hash",)}
    set_metadata(proto, {**keep, "adapted": "true"})
    return proto.SerializeToString()
