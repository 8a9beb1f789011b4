"""Core ML backend (``.mlpackage`` / ``.mlmodel``): predicts on macOS only (coremltools can read, not run,
a model on Linux). Takes multi-array inputs (N,3,H,W) and ``ImageType`` inputs (fed as RGB PIL images);
enumerated shapes are offered to the pipeline as fixed shapes so the Neural Engine stays usable.
"""
from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from .base import Backend, HotSwap, InputSpec, metadata_int, missing_engine, sidecar_metadata


class CoreMLBackend(Backend):
    name = "coreml"
    install_hint = "pip install coremltools (prediction needs macOS)"

    def load(self, artifact: Path) -> None:
        try:
            import coremltools as ct
        except ImportError:
            raise missing_engine("coremltools", self.install_hint) from None
        from neurmap.core.errors import NeurmapError

        if platform.system() != "Darwin":
            raise NeurmapError(f"{artifact}: Core ML models run only on macOS/iOS (coremltools on "
                               f"{platform.system()} converts but cannot predict); use the .onnx or a TensorRT "
                               "engine here")
        units = {"all": ct.ComputeUnit.ALL, "cpu": ct.ComputeUnit.CPU_ONLY,
                 "gpu": ct.ComputeUnit.CPU_AND_GPU, "ane": ct.ComputeUnit.CPU_AND_NE}
        try:
            self.model = ct.models.MLModel(str(artifact),
                                           compute_units=units.get(self.options.get("compute_units", "all")))
        except Exception as e:
            raise NeurmapError(f"{artifact}: Core ML cannot load it ({str(e).splitlines()[0][:200]})") from None
        desc = self.model.get_spec().description
        if len(desc.input) != 1:
            raise NeurmapError(f"{artifact}: expected one image input, found {len(desc.input)}")
        inp = desc.input[0]
        self.input_name = inp.name
        self.output_name = next((o.name for o in desc.output if o.name == "sharp"), desc.output[0].name)
        meta = sidecar_metadata(Path(artifact))
        meta.update({k.removeprefix("neurmap."): v for k, v in dict(self.model.user_defined_metadata).items()})
        kind = inp.type.WhichOneof("Type")
        self.image_input = kind == "imageType"
        if self.image_input:
            fixed = (int(inp.type.imageType.height), int(inp.type.imageType.width))
            batch = 1
        else:
            arr = inp.type.multiArrayType
            shape = [int(v) for v in arr.shape]
            ranged = arr.WhichOneof("ShapeFlexibility") == "shapeRange"
            fixed = None if ranged else (shape[2], shape[3])
            batch = shape[0] if shape else 1
        self.spec = InputSpec(fixed_hw=fixed, multiple=1 if fixed else metadata_int(meta, "pad_multiple", 16),
                              max_batch=max(1, batch), metadata=meta)
        self.fixed_batch = True
        self.device = self.options.get("compute_units", "all")

    def infer(self, batch: np.ndarray) -> np.ndarray:
        outs = []
        for x in batch:  # Core ML predicts one sample at a time for these models
            if self.image_input:
                from PIL import Image
                img = Image.fromarray((np.clip(x.transpose(1, 2, 0), 0, 1) * 255 + 0.5).astype(np.uint8))
                y = self.model.predict({self.input_name: img})[self.output_name]
            else:
                y = self.model.predict({self.input_name: x[None].astype(np.float32)})[self.output_name]
            if not isinstance(y, np.ndarray):  # ImageType output -> PIL image
                y = np.asarray(y.convert("RGB"), np.float32).transpose(2, 0, 1)[None] / 255.0
            outs.append(np.asarray(y, np.float32).reshape((1,) + x.shape))
        return np.concatenate(outs)

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
        self.backend.model = mlmodel
