"""Backends, chosen from the artifact's suffix.

:data:`REGISTRY` maps a suffix to ``"module:Class"`` inside this package; adding an engine means one new
file with one :class:`~.base.Backend` subclass plus its line here. Modules are imported only when an
artifact of theirs is opened, so the engine libraries stay optional.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from .base import Backend, InputSpec

#: artifact suffix -> "module:Class" (a folder is a Core ML .mlpackage or an official DMPHN folder)
REGISTRY: dict[str, str] = {
    ".onnx": "onnxruntime:OnnxRuntimeBackend",
    ".engine": "tensorrt:TensorRTBackend",
    ".plan": "tensorrt:TensorRTBackend",
    ".trt": "tensorrt:TensorRTBackend",
    ".mlpackage": "coreml:CoreMLBackend",
    ".mlmodel": "coreml:CoreMLBackend",
    ".safetensors": "torch:TorchBackend",
    ".pt": "torch:TorchBackend",
    ".pth": "torch:TorchBackend",
    ".pkl": "torch:TorchBackend",
    "": "torch:TorchBackend",  # official DMPHN folder or a shipped weights name
}


def backend_class(artifact: str | Path) -> type[Backend]:
    """The Backend class for ``artifact`` (by suffix), or a one-line error listing the known suffixes."""
    from neurmap.core.errors import NeurmapError

    suffix = Path(str(artifact)).suffix.lower()
    if suffix not in REGISTRY and Path(str(artifact)).is_dir():
        suffix = ""
    if suffix not in REGISTRY:
        known = ", ".join(s for s in REGISTRY if s)
        raise NeurmapError(f"no backend runs {str(artifact)!r}: artifacts end in one of {known} "
                           "(or are an official DMPHN folder / a shipped weights name)")
    module, cls = REGISTRY[suffix].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def load_backend(artifact: str | Path, **options) -> Backend:
    """Pick the backend for ``artifact`` by suffix, load it and return it ready to ``infer``."""
    from neurmap.core.errors import NeurmapError

    p = Path(str(artifact))
    if p.suffix.lower() in REGISTRY and p.suffix and not p.exists():
        raise NeurmapError(f"engine artifact {p} does not exist; check the path (export one with `neurmap export`)")
    backend = backend_class(artifact)(**options)
    backend.load(p)
    return backend


__all__ = ["Backend", "InputSpec", "REGISTRY", "backend_class", "load_backend"]
