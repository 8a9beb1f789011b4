"""TensorRT backend: the engine runs through export's one TensorRT runner (:class:`neurmap.export.trt_runtime.TRTRunner`:
``execute_async_v3``, device buffers per input shape); this file maps it onto the backend interface and keeps
the engine's weight swap (a refit) beside it.

TensorRT engines carry no metadata of ours: the pad multiple of a dynamic-shape engine is read from a
sidecar ``<engine>.json`` (as ``neurmap export`` writes it) (``{"pad_multiple": 8, ...}``) when present, else a safe 16 is used.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Backend, HotSwap, InputSpec, metadata_int, missing_engine, sidecar_metadata

DEFAULT_MULTIPLE = 16


class TensorRTBackend(Backend):
    name = "tensorrt"
    install_hint = ("on Jetson use JetPack's TensorRT (system Python); on x86 pip install 'neurmap-edge[tensorrt]'")

    def load(self, artifact: Path) -> None:
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            raise missing_engine("tensorrt", self.install_hint) from None
        from neurmap.export.trt_runtime import TRTRunner

        self.runner = TRTRunner(artifact)
        r = self.runner
        self.trt, self.engine, self.logger = r.trt, r.engine, r.logger
        meta = sidecar_metadata(Path(artifact))
        multiple = 1 if r.fixed_hw else metadata_int(meta, "pad_multiple", DEFAULT_MULTIPLE)
        self.fixed_batch = r.fixed_batch
        self.spec = InputSpec(fixed_hw=r.fixed_hw, multiple=multiple, max_batch=r.max_batch, min_hw=r.min_hw,
                              max_hw=r.max_hw, metadata=meta)
        self.device = "cuda"

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.runner(batch)

    def close(self) -> None:
        if getattr(self, "runner", None) is not None:
            self.runner.close()
        self.runner = self.engine = None

    def swapper(self, artifact, model=None, source_onnx=None) -> "TensorRTSwap":
        from neurmap.core.errors import NeurmapError

        ref = model.net.state_dict() if model is not None else None
        src = Path(source_onnx) if source_onnx else onnx_beside_engine(artifact)
        if src is None:
            raise NeurmapError(f"{artifact}: refitting needs the ONNX the engine was built from; put it beside the "
                               "engine (same stem) or pass --adapt-opts onnx=PATH")
        return TensorRTSwap(self, src, reference=ref)


class TensorRTSwap(HotSwap):
    """TensorRT: refit a REFIT engine from the patched ONNX between frames (``trt.OnnxParserRefitter``)."""

    kind = "tensorrt"

    def __init__(self, backend, onnx_path, reference=None) -> None:
        import onnx

        from neurmap.core.errors import NeurmapError

        engine = backend.engine
        if not getattr(engine, "refittable", False):
            raise NeurmapError("this TensorRT engine was built without the REFIT flag, so it cannot take new weights; "
                               "rebuild it with `neurmap export --target trt --weights W` (its engines are refittable) "
                               "or adapt offline with `neurmap adapt` and rebuild")
        super().__init__(backend)
        self.path = Path(onnx_path)
        self.proto = onnx.load(str(self.path))
        self.reference = {k: v.detach().cpu().clone() for k, v in (reference or {}).items()}

    def _prepare(self, state) -> bytes:
        from neurmap.core.errors import NeurmapError
        from neurmap.export.onnx_weights import patch_onnx_initializers

        try:
            return patch_onnx_initializers(self.proto, state, self.reference).SerializeToString()
        except KeyError as e:
            raise NeurmapError(f"{self.path}: the engine's ONNX has no initializer for a changed tensor ({e}); a "
                               "refit needs the exact ONNX the engine was built from") from None

    def _apply(self, model_bytes: bytes) -> None:
        from neurmap.core.errors import NeurmapError

        trt = self.backend.trt
        refitter = trt.Refitter(self.backend.engine, self.backend.logger)
        parser = trt.OnnxParserRefitter(refitter, self.backend.logger)
        if not parser.refit_from_bytes(model_bytes):
            errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise NeurmapError(f"TensorRT refit from ONNX failed: {errs or 'see the TensorRT log'}")
        if not refitter.refit_cuda_engine():
            raise NeurmapError("TensorRT refit_cuda_engine failed; the engine keeps its previous weights")


def onnx_beside_engine(engine_path) -> "Path | None":
    """The ONNX a TensorRT engine was built from: sidecar metadata ``onnx``/``source_onnx``, else ``<stem>.onnx``."""
    p = Path(engine_path)
    meta = sidecar_metadata(p)
    for key in ("onnx", "source_onnx", "source"):
        v = meta.get(key)
        if v and str(v).endswith(".onnx"):
            q = Path(v) if Path(v).is_absolute() else p.parent / v
            if q.exists():
                return q
    q = p.with_suffix(".onnx")
    return q if q.exists() else None
