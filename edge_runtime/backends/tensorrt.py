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
        from neurmap.export.trt import refit_source

        proto = refit_source(artifact, source_onnx)     # refuses here, before the stream, when it cannot refit
        return TensorRTSwap(self, proto, reference=model.net.state_dict() if model is not None else None)


class TensorRTSwap(HotSwap):
    """TensorRT: refit the REFIT engine in place (:class:`neurmap.export.trt.EngineRefit`, the one refit path).

    Everything runs in the adaptation thread: patching the refit ONNX (in the engine's dtypes), parsing it
    (``OnnxParserRefitter``) and the GPU update (``refit_cuda_engine``), the last under the runner's lock, so
    the inference thread waits at most for that update between two frames and never runs beside it. A failed
    refit is reported and the engine keeps serving its previous weights."""

    kind = "tensorrt"

    def __init__(self, backend, proto, reference=None) -> None:
        from neurmap.core.errors import NeurmapError
        from neurmap.export.trt import EngineRefit

        if not getattr(backend.engine, "refittable", False):
            raise NeurmapError("this TensorRT engine was built without the REFIT flag, so it cannot take new weights; "
                               "rebuild it with `neurmap export --target trt --weights W` (its engines are refittable) "
                               "or adapt offline with `neurmap adapt` and rebuild")
        super().__init__(backend)
        self.refit = EngineRefit(backend.engine, backend.trt, backend.logger, proto, reference)

    def _prepare(self, state):
        return self.refit.stage(self.refit.prepare(state))

    def _apply(self, staged) -> None:
        with self.backend.runner.lock:                 # no execution in flight during the update
            self.refit.commit(staged)

    def submit(self, state) -> bool:
        """Stage and commit here (off the inference thread); False (reported) when the refit failed."""
        import time

        try:
            staged = self._prepare(state)
            t0 = time.perf_counter()
            self._apply(staged)
        except Exception as e:  # noqa: BLE001 - a failed refit never ends the stream
            self._failed("refit", e)
            return False
        self.apply_ms.append((time.perf_counter() - t0) * 1000)
        self.swaps += 1
        return True
