"""neurmap.export: freeze a trained deblur net into deployable artifacts, with metadata that travels along.

Targets (one function each, see :mod:`neurmap.export.targets`): ``onnx`` (portable, opset 17), ``ort`` (ONNX
Runtime static QDQ INT8 for CPUs), ``trt`` (TensorRT engine, strongly typed, refittable) and ``coreml``
(``.mlpackage``). Every artifact takes [0,1] RGB ``blurry`` (N,3,H,W) with H, W multiples of
``neurmap.pad_multiple`` and returns ``sharp``; the runtime pads and crops.

    from neurmap.export import export_onnx, read_artifact_metadata
    export_onnx(model, "dmphn.onnx", 720, 1280)
"""
from .onnx_export import export_motion_onnx, export_onnx, read_artifact_metadata

__all__ = ["export_onnx", "export_motion_onnx", "read_artifact_metadata"]
