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
                              max_batch=p.max_batch, metadata=meta, shapes=p.shapes)

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
    """Core ML: re-convert the adapted model like the served package (every enumerated shape, precision,
    image I/O, target: :func:`neurmap.export.coreml.reexport_options`), load it with the backend's compute
    units (prepared off the stream), and swap the backend's predictor model and input spec between frames.
    Core ML's own on-device update API (``MLUpdateTask``) exists only for the old neuralnetwork format with MSE
    or cross-entropy losses: it cannot express the reblur/motion-net loss, so the adaptation runs in PyTorch."""

    kind = "coreml"

    def __init__(self, backend, model) -> None:
        from neurmap.export.coreml import reexport_options

        self.options = reexport_options(backend.spec.metadata)   # refuse at setup, not mid-stream
        super().__init__(backend)
        self.model = model
        self.dirs: list = []

    def convert(self, state) -> Path:
        """The adapted package, written into a private temporary folder (kept while it is served)."""
        import copy
        import tempfile

        from neurmap.export.coreml import export_coreml

        m = copy.deepcopy(self.model).cpu()
        m.net.load_state_dict({k: v.detach().cpu() for k, v in state.items()})
        d = Path(tempfile.mkdtemp(prefix="neurmap-coreml-swap-"))
        self.dirs.append(d)
        path = d / "adapted.mlpackage"
        export_coreml(m, path, extra_meta={"adapted": "true"}, **self.options)
        return path

    def _prepare(self, state):
        import coremltools as ct

        from neurmap.export.coreml import CoreMLPredictor

        units = {"all": ct.ComputeUnit.ALL, "cpu": ct.ComputeUnit.CPU_ONLY,
                 "gpu": ct.ComputeUnit.CPU_AND_GPU, "ane": ct.ComputeUnit.CPU_AND_NE}
        path = self.convert(state)
        ml = ct.models.MLModel(str(path), compute_units=units.get(self.backend.predictor.compute_units))
        CoreMLPredictor.check_like(ml, self.backend.predictor)
        return ml

    def _apply(self, mlmodel) -> None:
        self.backend.predictor.set_model(mlmodel)
        self.backend._read_spec()
        while len(self.dirs) > 2:          # the served package and the one before it stay on disk
            import shutil
            shutil.rmtree(self.dirs.pop(0), ignore_errors=True)
