"""Core ML backend (``.mlpackage`` / ``.mlmodel``): predicts on macOS only (coremltools can read, not run,
a model on Linux), through export's one Core ML predictor (:class:`neurmap.export.coreml.CoreMLPredictor`:
multi-array and ``ImageType`` inputs); this file maps it onto the backend interface and keeps the weight swap
(a re-conversion) beside it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Backend, HotSwap, InputSpec, metadata_int, missing_engine


class CoreMLBackend(Backend):
    name = "coreml"
    install_hint = "pip install coremltools (prediction needs macOS)"

    def load(self, artifact: Path) -> None:
        try:
            import coremltools  # noqa: F401
        except ImportError:
            raise missing_engine("coremltools", self.install_hint) from None
        from neurmap.export.coreml import CoreMLPredictor

        self.predictor = CoreMLPredictor(artifact, self.options.get("compute_units", "all"))
        self._read_spec()
        self.fixed_batch = True
        self.device = self.options.get("compute_units", "all")

    def _read_spec(self) -> None:
        p = self.predictor
        meta = p.metadata
        self.image_input = p.image_input
        self.spec = InputSpec(fixed_hw=p.fixed_hw, multiple=1 if p.fixed_hw else metadata_int(meta, "pad_multiple", 16),
                              max_batch=p.max_batch, metadata=meta)

    @property
    def model(self):
        return self.predictor.model

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.predictor(batch)

    def swapper(self, artifact, model=None, source_onnx=None) -> "CoreMLSwap":
        from neurmap.core.errors import NeurmapError

        if model is None:
            raise NeurmapError("Core ML adaptation needs the PyTorch weights: --adapt-opts weights=W")
        return CoreMLSwap(self, model)


class CoreMLSwap(HotSwap):
    """Core ML: re-convert the adapted model and load a new MLModel (prediction needs macOS). Core ML's own
    on-device update API (``MLUpdateTask``) exists only for the old neuralnetwork format with MSE or
    cross-entropy losses: it cannot express the reblur/motion-net loss, so the adaptation runs in PyTorch and
    the model is re-converted."""

    kind = "coreml"

    def __init__(self, backend, model) -> None:
        super().__init__(backend)
        self.model = model

    def _prepare(self, state):
        import copy

        from neurmap.core.errors import NeurmapError
        try:
            from neurmap.export import coreml_export  # type: ignore[attr-defined]
        except ImportError:
            raise NeurmapError("Core ML hot swap needs the Core ML exporter (neurmap.export.coreml_export) and "
                               "macOS to load the result; adapt offline with `neurmap adapt` and re-export") from None
        import tempfile

        m = copy.deepcopy(self.model).cpu()
        m.net.load_state_dict(state)
        tmp = Path(tempfile.mkdtemp()) / "adapted.mlpackage"
        coreml_export.export_coreml(m, tmp)  # pragma: no cover - macOS only
        import coremltools as ct  # pragma: no cover
        return ct.models.MLModel(str(tmp))  # pragma: no cover

    def _apply(self, mlmodel) -> None:  # pragma: no cover - macOS only
        self.backend.predictor.set_model(mlmodel)
        self.backend._read_spec()
