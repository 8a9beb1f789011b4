"""Core ML ``.mlpackage`` (ML Program) from a deblur model; converts on Linux, predicts only on macOS.

- ``precision``: ``fp16`` (default; what the Neural Engine runs), ``fp32``, ``w8`` (int8 weights,
  ``ct.optimize.coreml.linear_quantize_weights``, per channel) or ``w8a8`` (int8 weights and activations via
  ``coremltools.optimize.torch`` ``LinearQuantizer`` before conversion, calibrated on calibration frames —
  the coreml-side activation quantizer needs macOS, this route does not).
- ``shapes``: one (H, W) gives a fixed input; several give ``ct.EnumeratedShapes`` (the Neural Engine runs
  enumerated shapes; ranged shapes run there only at the default shape).
- ``image_io``: ``ct.ImageType`` input (RGB, scaled by 1/255) and output (the graph multiplies by 255 and
  clamps), for camera pipelines that hand over CVPixelBuffers.
Like the ONNX artifact, the graph has the value-range offset folded in and does no padding: H and W must be
multiples of ``neurmap.pad_multiple`` (stored in ``user_defined_metadata`` and in the JSON sidecar).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from neurmap.core.errors import NeurmapError

from .onnx_export import bare_for_export, check_export_size, sidecar_path, toolkit_version

PRECISIONS = ("fp16", "fp32", "w8", "w8a8")
TARGETS = {"iOS15": "iOS15", "iOS16": "iOS16", "iOS17": "iOS17", "iOS18": "iOS18", "iOS26": "iOS26",
           "macOS12": "iOS15", "macOS13": "iOS16", "macOS14": "iOS17", "macOS15": "iOS18", "macOS26": "iOS26"}


def import_coremltools():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import logging
            logging.getLogger("coremltools").setLevel(logging.ERROR)
            import coremltools as ct
        return ct
    except Exception:
        raise NeurmapError("Core ML export needs coremltools (pip install 'coremltools>=8')") from None


class _ImageOut(nn.Module):
    """[0,1] model -> 0..255 clamped, for an ImageType output."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(self.m(x) * 255.0, 0.0, 255.0)


def _w8a8(module: nn.Module, example: torch.Tensor, calib: Optional[np.ndarray]) -> nn.Module:
    """Insert int8 weight+activation fake quantizers with coremltools' LinearQuantizer, observe ``calib``
    frames, and finalize (the converter turns them into quantize/dequantize ops)."""
    if calib is None or len(calib) == 0:
        raise NeurmapError("Core ML w8a8 needs calibration frames (--calib DIR|VIDEO) to set activation ranges")
    from coremltools.optimize.torch.quantization import (LinearQuantizer, LinearQuantizerConfig,
                                                          ModuleLinearQuantizerConfig)

    cfg = LinearQuantizerConfig(global_config=ModuleLinearQuantizerConfig(
        quantization_scheme="symmetric", milestones=[0, 1000, 1000, 0]))
    q = LinearQuantizer(module, cfg)
    prepared = q.prepare(example_inputs=(example,), inplace=False)
    prepared.eval()
    q.step()
    h, w = example.shape[-2:]
    with torch.no_grad():
        for f in calib:
            x = torch.from_numpy(np.ascontiguousarray(f[None], dtype=np.float32))
            if x.shape[-2:] != (h, w):
                x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
            prepared(x)
    return q.finalize(inplace=False).eval()


def _slice_patches(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """DMPHN's to_patches with size-derived slices instead of torch.chunk: with EnumeratedShapes H and W are
    symbolic, and coremltools cannot convert ``chunk`` on a symbolic size ("Cannot convert expression to
    float"); slicing converts. Same result whenever H, W are multiples of the pad multiple."""
    if rows > 1:
        h = x.shape[2] // rows
        x = torch.cat([x[:, :, i * h:(i + 1) * h] for i in range(rows)], dim=0)
    if cols > 1:
        w = x.shape[3] // cols
        x = torch.cat([x[:, :, :, i * w:(i + 1) * w] for i in range(cols)], dim=0)
    return x


def _slice_unpatches(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    # the batch is a constant 1 in every Core ML model: trace it as a number so the output stays (1,3,H,W)
    if cols > 1:
        b = int(x.shape[0]) // cols
        x = torch.cat([x[i * b:(i + 1) * b] for i in range(cols)], dim=3)
    if rows > 1:
        b = int(x.shape[0]) // rows
        x = torch.cat([x[i * b:(i + 1) * b] for i in range(rows)], dim=2)
    return x


def _slicing_patches(module: nn.Module) -> nn.Module:
    """A private copy of ``module`` whose DMPHN nets cut patches by slicing (:func:`_slice_patches`), for
    tracing with EnumeratedShapes. The copy's ``forward`` is DMPHN's own code run with the slicing helpers
    in its globals: nothing global is touched, so a DMPHN serving frames in another thread is unaffected."""
    import copy
    import types

    from neurmap.core.models import dmphn

    module = copy.deepcopy(module)
    fn = dmphn.DMPHN.forward
    scope = {**fn.__globals__, "to_patches": _slice_patches, "from_patches": _slice_unpatches}
    sliced = types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__)
    for m in module.modules():
        if isinstance(m, dmphn.DMPHN):
            m.forward = types.MethodType(sliced, m)
    return module


def deployment_target(ct, minimum_target: str):
    """``ct.target.<name>`` for a TARGETS key; a one-line error when this coremltools predates it (iOS26 needs
    coremltools 9; ``pyproject.toml`` allows 8)."""
    if minimum_target not in TARGETS:
        raise NeurmapError(f"minimum deployment target {minimum_target!r}: use one of {', '.join(TARGETS)}")
    name = TARGETS[minimum_target]
    target = getattr(ct.target, name, None)
    if target is None:
        known = [k for k, v in TARGETS.items() if hasattr(ct.target, v)]
        raise NeurmapError(f"minimum target {minimum_target} needs a newer coremltools than {ct.__version__} "
                           f"(pip install -U coremltools), or use one of {', '.join(known)}")
    return target


def export_coreml(model: nn.Module, path: str | Path, shapes: Sequence[tuple[int, int]] = ((256, 256),),
                  precision: str = "fp16", image_io: bool = False, minimum_target: str = "iOS17",
                  calib: Optional[np.ndarray] = None, extra_meta: Optional[dict] = None):
    """Convert to an ML Program ``.mlpackage`` at ``path``; returns the ``ct.models.MLModel``."""
    ct = import_coremltools()
    if precision not in PRECISIONS:
        raise NeurmapError(f"Core ML precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if minimum_target not in TARGETS:
        raise NeurmapError(f"minimum deployment target {minimum_target!r}: use one of {', '.join(TARGETS)}")
    if precision == "w8a8" and TARGETS[minimum_target] in ("iOS15", "iOS16"):
        raise NeurmapError("activation quantization (w8a8) needs minimum target iOS17/macOS14 or later")
    module, facts = bare_for_export(model)
    mult = facts["pad_multiple"]
    shapes = [tuple(int(v) for v in s) for s in shapes]
    if not shapes:
        raise NeurmapError("give at least one input size for Core ML")
    for h, w in shapes:
        check_export_size(h, w, mult)
    module = module.cpu().float().eval()
    example = torch.rand(1, 3, *shapes[0])
    if precision == "w8a8":
        module = _w8a8(module, example, calib)
    if image_io:        # ImageType scales the input by 1/255 itself; the output needs 0..255
        module = _ImageOut(module).eval()
    if len(shapes) > 1:  # symbolic H, W: DMPHN's torch.chunk does not convert, slices do
        module = _slicing_patches(module)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, example, check_trace=False)
    in_shape = (1, 3, *shapes[0]) if len(shapes) == 1 else ct.EnumeratedShapes(
        shapes=[(1, 3, h, w) for h, w in shapes], default=(1, 3, *shapes[0]))
    if image_io:
        inputs = [ct.ImageType(name="blurry", shape=in_shape, scale=1.0 / 255.0, color_layout=ct.colorlayout.RGB)]
        outputs = [ct.ImageType(name="sharp", color_layout=ct.colorlayout.RGB)]
    else:
        inputs = [ct.TensorType(name="blurry", shape=in_shape, dtype=np.float32)]
        outputs = [ct.TensorType(name="sharp", dtype=np.float32)]
    target = deployment_target(ct, minimum_target)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ml = ct.convert(traced, inputs=inputs, outputs=outputs, convert_to="mlprogram",
                            compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
                            minimum_deployment_target=target, skip_model_load=True)
    except Exception as e:
        raise NeurmapError(f"Core ML conversion failed: {str(e).splitlines()[0][:200]}") from None
    if precision == "w8":
        ml = quantize_weights_w8(ml)
    from neurmap.core.checkpoint import weights_hash

    meta = {"architecture": facts["architecture"], "role": facts["role"], "input_range": "0,1" if not image_io else "0,255",
            "pad_multiple": str(mult), "weights_hash": weights_hash(facts["state"]), "precision": precision,
            "toolkit_version": toolkit_version(), "shape": ";".join(f"1,3,{h},{w}" for h, w in shapes),
            "input": "blurry", "output": "sharp", "minimum_target": minimum_target,
            "image_io": str(bool(image_io)).lower(), **(extra_meta or {})}
    for k, v in meta.items():
        ml.user_defined_metadata[f"neurmap.{k}"] = str(v)
    ml.short_description = f"NeurMAP {facts['architecture']} deblurring ({precision}); input [0,1] RGB, H,W multiple of {mult}"
    save_mlpackage(ml, Path(path))
    Path(sidecar_path(path)).write_text(json.dumps({**meta, "format": "coreml-mlpackage"}, indent=2))
    return ml


def reexport_options(meta: dict) -> dict:
    """``export_coreml`` keywords that rebuild a package like the one ``meta`` (its neurmap metadata)
    describes: the same shapes (every enumerated one), precision, image I/O and deployment target."""
    shapes = []
    for s in str(meta.get("shape", "")).split(";"):
        parts = s.split(",")
        if len(parts) != 4 or not all(p.strip().isdigit() for p in parts[2:]):
            raise NeurmapError(f"the Core ML package records no input shapes (neurmap.shape={meta.get('shape')!r}); "
                               "re-export it with `neurmap export --target coreml --weights W`")
        shapes.append((int(parts[2]), int(parts[3])))
    precision = str(meta.get("precision", "fp16"))
    if precision == "w8a8":
        raise NeurmapError("a w8a8 Core ML package needs calibration frames to re-quantize adapted weights; adapt "
                           "offline (`neurmap adapt`) and re-export with --calib, or serve a w8/fp16 package")
    if precision not in PRECISIONS:
        raise NeurmapError(f"the Core ML package records precision {precision!r}; re-export it")
    return {"shapes": shapes, "precision": precision, "image_io": str(meta.get("image_io", "false")) == "true",
            "minimum_target": str(meta.get("minimum_target", "iOS17"))}


def quantize_weights_w8(ml):
    """Int8 per-channel symmetric weights (``linear_quantize_weights``): half the size, fp16 compute."""
    from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights

    cfg = OptimizationConfig(global_config=OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8",
                                                                   granularity="per_channel", weight_threshold=512))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = linear_quantize_weights(ml, config=cfg)
    out.user_defined_metadata.update({k: v for k, v in ml.user_defined_metadata.items()})
    if "neurmap.precision" in out.user_defined_metadata:
        out.user_defined_metadata["neurmap.precision"] = "w8"
    return out


def save_mlpackage(ml, path: Path) -> Path:
    """Save a package directory atomically: write beside, then swap in with renames."""
    path = Path(path)
    if path.suffix != ".mlpackage":
        raise NeurmapError(f"Core ML output must end in .mlpackage, got {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.stem}.", dir=path.parent)) / path.name
    try:
        ml.save(str(tmp))
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)
    return path


def spec_summary(ml_or_path) -> dict:
    """I/O names/types/shapes, op inventory and weight dtypes of an ML Program (no prediction needed)."""
    ct = import_coremltools()
    ml = ml_or_path if not isinstance(ml_or_path, (str, Path)) else ct.models.MLModel(str(ml_or_path), skip_model_load=True)
    spec = ml.get_spec()

    def io(desc):
        out = []
        for f in desc:
            t = f.type.WhichOneof("Type")
            d = {"name": f.name, "type": t}
            if t == "multiArrayType":
                d["shape"] = list(f.type.multiArrayType.shape)
                d["enumerated"] = [list(s.shape) for s in f.type.multiArrayType.enumeratedShapes.shapes]
            elif t == "imageType":
                d["shape"] = [f.type.imageType.height, f.type.imageType.width]
                d["enumerated"] = [[s.height, s.width] for s in f.type.imageType.enumeratedSizes.sizes]
            out.append(d)
        return out

    ops: dict[str, int] = {}
    const_dtypes: dict[str, int] = {}

    def walk(block):
        for op in block.operations:
            ops[op.type] = ops.get(op.type, 0) + 1
            if op.type == "const":
                for o in op.outputs:
                    dt = o.type.tensorType.dataType
                    const_dtypes[str(dt)] = const_dtypes.get(str(dt), 0) + 1
            elif op.type.startswith("constexpr"):    # compressed weights: the stored data's dtype
                for key in ("quantized_data", "data", "indices"):
                    if key in op.attributes:
                        dt = op.attributes[key].type.tensorType.dataType
                        const_dtypes[str(dt)] = const_dtypes.get(str(dt), 0) + 1
            for b in op.blocks:
                walk(b)

    for fn in spec.mlProgram.functions.values():
        for blk in fn.block_specializations.values():
            walk(blk)
    from coremltools.proto import MIL_pb2

    names = {v: k for k, v in MIL_pb2.DataType.items()}
    return {"inputs": io(spec.description.input), "outputs": io(spec.description.output), "ops": ops,
            "const_dtypes": {names.get(int(k), k): v for k, v in const_dtypes.items()},
            "spec_version": spec.specificationVersion,
            "metadata": dict(spec.description.metadata.userDefined)}


class CoreMLPredictor:
    """The one Core ML predictor (macOS): ``predictor(x) -> y`` on float32 (N,3,H,W) batches in [0, 1], for
    multi-array and ``ImageType`` inputs (fed as RGB PIL images). Used by ``neurmap check``/``bench`` and
    by the video runtime's Core ML backend. ``fixed_hw``/``max_batch``/``metadata`` describe the input."""

    UNITS = ("all", "cpu", "gpu", "ane")

    def __init__(self, path: str | Path, compute_units: str = "all", model=None) -> None:
        """Load ``path`` for prediction (macOS); ``model``: an already open ``MLModel`` of it (read-only on
        Linux: ``skip_model_load=True``) whose input is described without loading."""
        import platform

        self.path, self.compute_units = Path(path), compute_units
        if model is not None:
            self.set_model(model)
            return
        ct = import_coremltools()
        if platform.system() != "Darwin":
            raise NeurmapError(f"{path}: Core ML models run only on macOS/iOS (coremltools on "
                               f"{platform.system()} converts but cannot predict); use the .onnx or a TensorRT "
                               "engine here")
        units = {"all": ct.ComputeUnit.ALL, "cpu": ct.ComputeUnit.CPU_ONLY,
                 "gpu": ct.ComputeUnit.CPU_AND_GPU, "ane": ct.ComputeUnit.CPU_AND_NE}
        try:
            model = ct.models.MLModel(str(path), compute_units=units.get(compute_units))
        except Exception as e:
            raise NeurmapError(f"{path}: Core ML cannot load it ({str(e).splitlines()[0][:200]})") from None
        self.set_model(model)

    def set_model(self, model) -> None:
        """Serve ``model`` (an ``MLModel``): its input name, kind and shapes are read again."""
        desc = model.get_spec().description
        if len(desc.input) != 1:
            raise NeurmapError(f"{self.path}: expected one image input, found {len(desc.input)}")
        inp = desc.input[0]
        self.input_name = inp.name
        self.output_name = next((o.name for o in desc.output if o.name == "sharp"), desc.output[0].name)
        meta = {}
        side = sidecar_path(self.path)
        if side.is_file():
            try:
                meta = {str(k).removeprefix("neurmap."): v for k, v in json.loads(side.read_text()).items()}
            except (OSError, ValueError):
                meta = {}
        meta.update({k.removeprefix("neurmap."): v for k, v in dict(model.user_defined_metadata).items()})
        self.metadata = meta
        kind = inp.type.WhichOneof("Type")
        self.image_input = kind == "imageType"
        if self.image_input:
            img = inp.type.imageType
            self.fixed_hw = (int(img.height), int(img.width))
            self.shapes = tuple((int(z.height), int(z.width)) for z in img.enumeratedSizes.sizes)
            self.max_batch = 1
        else:
            arr = inp.type.multiArrayType
            shape = [int(v) for v in arr.shape]
            ranged = arr.WhichOneof("ShapeFlexibility") == "shapeRange"
            self.fixed_hw = None if ranged else (shape[2], shape[3])
            self.shapes = tuple((int(e.shape[2]), int(e.shape[3])) for e in arr.enumeratedShapes.shapes
                                if len(e.shape) == 4)
            self.max_batch = max(1, shape[0] if shape else 1)
        self.model = model

    @staticmethod
    def check_like(model, served: "CoreMLPredictor") -> None:
        """Refuse a replacement whose input differs from the served one (name, kind, shapes)."""
        spec = model.get_spec().description.input
        kind = spec[0].type.WhichOneof("Type") if len(spec) == 1 else None
        if len(spec) != 1 or spec[0].name != served.input_name or (kind == "imageType") != served.image_input:
            raise NeurmapError("the re-exported Core ML model's input differs from the served one; not swapped")

    def __call__(self, batch: np.ndarray) -> np.ndarray:
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
