"""One table of export targets, one function per target (as the CLI and the bench call them).

Each target function takes an :class:`ExportRequest` and returns an :class:`Artifact`; the table says which
precisions and options a target takes, so callers validate before any work starts.
"""
from __future__ import annotations

import difflib
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from neurmap.core.errors import NeurmapError


@dataclass
class ExportRequest:
    model: object                               # DeblurModel
    weights_meta: dict
    out: Path
    precision: str
    shapes: list[tuple[int, int]]               # one for static; several: Core ML enumerated / TRT profile
    dynamic: bool = False
    calib: Optional[np.ndarray] = None          # calibration crops (N,3,h,w)
    method: str = "percentile"          # 99.999th: see export/ort_quant.py and bench/results/export.json
    exclude: str = "auto"                       # auto | none | comma-separated node names
    exclude_budget: Optional[int] = None        # None: the architecture's measured default (int8_float_budget)
    qat_steps: int = 0
    workspace_gb: float = 2.0
    image_io: bool = False
    min_target: str = "iOS17"
    opset: int = 17
    log: Callable[[str], None] = print
    extra_meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.exclude_budget is None:
            from neurmap.core.models import int8_float_budget
            self.exclude_budget = int8_float_budget(getattr(self.model, "name", ""))


@dataclass
class Artifact:
    path: Path
    target: str
    precision: str
    shapes: list
    dynamic: bool
    info: dict = field(default_factory=dict)

    @property
    def size_mb(self) -> float:
        p = Path(self.path)
        if p.is_dir():
            return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 1e6
        return p.stat().st_size / 1e6 if p.exists() else 0.0


@dataclass(frozen=True)
class TargetSpec:
    name: str
    suffix: str
    precisions: tuple
    default_precision: str
    options: frozenset                         # option names (CLI spelling without --) this target takes
    build: Callable[[ExportRequest], Artifact]
    about: str


# ---------------------------------------------------------------------------------------------------------

def _meta(req: ExportRequest) -> dict:
    src = req.weights_meta.get("provenance", {}).get("source")
    return {**({"weights_source": str(src)} if src else {}), **req.extra_meta}


def build_onnx(req: ExportRequest) -> Artifact:
    from .onnx_export import export_onnx
    from .ort_quant import convert_fp16

    h, w = req.shapes[0]
    if req.precision == "fp16":
        with tempfile.TemporaryDirectory() as tmp:
            f32 = export_onnx(req.model, Path(tmp) / "f32.onnx", h, w, dynamic=req.dynamic, opset=req.opset,
                              extra_meta=_meta(req))
            path = convert_fp16(f32, req.out)
    else:
        path = export_onnx(req.model, req.out, h, w, dynamic=req.dynamic, opset=req.opset, extra_meta=_meta(req))
    return Artifact(path, "onnx", req.precision, req.shapes, req.dynamic)


def build_ort(req: ExportRequest) -> Artifact:
    if req.precision != "int8":
        return build_onnx(req)
    art = build_ort_int8(req)
    return art


def build_ort_int8(req: ExportRequest) -> Artifact:
    """Float export (a dynamic twin for calibration on crops) -> histograms -> ranges -> sensitivity-chosen
    float nodes -> optional QAT -> QDQ INT8, frozen to the static shape unless --dynamic."""
    from .onnx_export import export_onnx
    from .ort_quant import QuantConfig, collect_histograms, prepare, quantize_int8, ranges_from_histograms

    if req.calib is None or len(req.calib) == 0:
        raise NeurmapError("INT8 needs calibration frames: pass --calib DIR|VIDEO (frames like the ones the model will "
                           "see; a folder of 240 fps sharp frames is turned into GoPro-protocol blurry frames)")
    h, w = req.shapes[0]
    t0 = time.perf_counter()
    info: dict = {}
    with tempfile.TemporaryDirectory(prefix="neurmap-ort-") as tmp:
        tmp = Path(tmp)
        dyn = export_onnx(req.model, tmp / "dyn.onnx", h, w, dynamic=True, opset=req.opset, extra_meta=_meta(req))
        pre = prepare(dyn, tmp / "pre.onnx")
        req.log(f"calibrating on {len(req.calib)} frames of {req.calib.shape[2]}x{req.calib.shape[3]} ({req.method})")
        hists = collect_histograms(pre, req.calib)
        ranges = ranges_from_histograms(hists, req.method)
        exclude: list[str] = []
        if req.exclude == "auto":
            exclude, share = auto_exclusions(dyn, pre, ranges, req.calib, req.method, req.exclude_budget, tmp, req.log)
            info["excluded_share_predicted"] = round(share, 3)
        elif req.exclude not in ("none", ""):
            exclude = [s.strip() for s in req.exclude.split(",") if s.strip()]
        cfg = QuantConfig(method=req.method, exclude=exclude)
        source = dyn
        if req.qat_steps > 0:
            source = qat_weights(req, dyn, pre, ranges, cfg, tmp)
            info["qat_steps"] = req.qat_steps
        static = None if req.dynamic else (1, h, w)
        res = quantize_int8(source, req.out, req.calib, cfg, ranges=ranges, static_shape=static,
                            extra_meta={"quant.qat_steps": str(req.qat_steps)})
    info.update({"method": req.method, "excluded": exclude, "calib_frames": int(len(req.calib)),
                 "seconds": round(time.perf_counter() - t0, 1)})
    return Artifact(res.path, "ort", "int8", req.shapes, req.dynamic, info)


def auto_exclusions(dyn: Path, pre: Path, ranges: dict, calib: np.ndarray, method: str, budget: int, tmp: Path,
                    log: Callable[[str], None], rounds: int = 3) -> tuple[list[str], float]:
    """Nodes to keep in float, chosen by linearised sensitivity on two small crops of the calibration frames.

    ``rounds`` > 1 re-measures after keeping the first picks in float (the error then spreads differently) and
    spends the rest of the conv budget on the new ranking."""
    from neurmap.calibration.sensitivity import choose_exclusions, linear_sensitivity

    from .ort_quant import QuantConfig, quantize_int8

    if budget <= 0:
        return [], 0.0
    n = min(2, len(calib))
    c = min(128, calib.shape[2] // 8 * 8, calib.shape[3] // 8 * 8)
    crops = np.ascontiguousarray(calib[np.linspace(0, len(calib) - 1, n).astype(int), :, :c, :c])
    chosen: list[str] = []
    first_share = None
    left = budget
    for r in range(max(1, rounds)):
        b = left if r == rounds - 1 else -(-budget // rounds)
        if b <= 0:
            break
        probe = quantize_int8(dyn, tmp / f"probe{r}.onnx", None, QuantConfig(method=method, exclude=chosen), ranges=ranges)
        sens = linear_sensitivity(probe.path, pre, crops, n_probe=3)
        new, share = choose_exclusions(sens, probe.path, budget=b)
        new = [x for x in new if x not in chosen]
        if first_share is None:
            first_share = share
        chosen += new
        left -= sum(1 for x in new if x.endswith("Conv") or x.endswith("ConvTranspose"))
        if not new:
            break
    heavy = [c for c in chosen if c.endswith("Conv") or c.endswith("ConvTranspose")]
    log(f"sensitivity: keeping {len(chosen)} nodes in float ({len(heavy)} convs: "
        f"{', '.join('/'.join(x.split('/')[-3:-1]) for x in heavy[:12])})")
    return chosen, float(first_share or 0.0)


def qat_weights(req: ExportRequest, dyn: Path, pre: Path, ranges: dict, cfg, tmp: Path) -> Path:
    from neurmap.calibration.onnx_torch import with_initializers
    from neurmap.calibration.qat import qat_finetune

    from .onnx_export import RangeFolded, save_onnx_atomic
    from .ort_quant import quantize_int8

    probe = quantize_int8(dyn, tmp / "qat_probe.onnx", None, cfg, ranges=ranges)
    net = req.model
    teacher = RangeFolded(net.net, net.offset).eval()
    res = qat_finetune(probe.path, pre, req.calib, teacher=teacher, steps=req.qat_steps, log=req.log)
    out = tmp / "qat.onnx"
    save_onnx_atomic(with_initializers(dyn, res.state), out)
    return out


def build_trt(req: ExportRequest) -> Artifact:
    from .onnx_export import export_onnx
    from .trt import ShapeProfile, build_engine, import_tensorrt

    import_tensorrt()  # fail first, in one line, where there is no GPU / TensorRT
    h, w = req.shapes[0]
    dynamic = req.dynamic or len(req.shapes) > 1
    with tempfile.TemporaryDirectory(prefix="neurmap-trt-") as tmp:
        onnx_p = export_onnx(req.model, Path(tmp) / "model.onnx", h, w, dynamic=dynamic, opset=req.opset,
                             extra_meta=_meta(req))
        profile = ShapeProfile.from_sizes(req.shapes) if dynamic else ShapeProfile.static(1, h, w)
        path = build_engine(onnx_p, req.out, req.precision, profile, workspace_gb=req.workspace_gb, calib=req.calib)
    return Artifact(path, "trt", req.precision, req.shapes, dynamic)


def build_coreml(req: ExportRequest) -> Artifact:
    from .coreml import export_coreml

    prec = {"int8": "w8a8"}.get(req.precision, req.precision)
    export_coreml(req.model, req.out, shapes=req.shapes, precision=prec, image_io=req.image_io,
                  minimum_target=req.min_target, calib=req.calib, extra_meta=_meta(req))
    return Artifact(req.out, "coreml", prec, req.shapes, len(req.shapes) > 1)


COMMON = frozenset({"weights", "precision", "shape", "out", "no_parity", "parity_frames"})
TARGETS: dict[str, TargetSpec] = {t.name: t for t in [
    TargetSpec("onnx", ".onnx", ("fp32", "fp16"), "fp32", COMMON | {"dynamic", "opset"}, build_onnx,
               "portable ONNX (opset 17), [0,1] in/out, H,W multiples of the pad multiple"),
    TargetSpec("ort", ".onnx", ("int8", "fp16", "fp32"), "int8",
               COMMON | {"dynamic", "calib", "calib_frames", "method", "exclude", "exclude_budget", "qat_steps", "opset"},
               build_ort, "ONNX Runtime static QDQ INT8 (U8 activations, S8 per-channel weights)"),
    TargetSpec("trt", ".engine", ("fp16", "int8", "fp32"), "fp16",
               COMMON | {"dynamic", "shapes", "calib", "calib_frames", "workspace", "opset"}, build_trt,
               "TensorRT engine (strongly typed, refittable) for this GPU and TensorRT version"),
    TargetSpec("coreml", ".mlpackage", ("fp16", "fp32", "w8", "int8", "w8a8"), "fp16",
               COMMON | {"shapes", "calib", "calib_frames", "image_io", "min_target"}, build_coreml,
               "Core ML ML Program (.mlpackage); converts anywhere, predicts on macOS"),
]}
ALIASES = {"tensorrt": "trt", "engine": "trt", "ios": "coreml", "mlpackage": "coreml", "mlmodel": "coreml",
           "apple": "coreml", "onnxruntime": "ort", "ort-int8": "ort", "int8": "ort"}


def resolve_target(name: str) -> TargetSpec:
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key in TARGETS:
        return TARGETS[key]
    choices = list(TARGETS) + list(ALIASES)
    near = difflib.get_close_matches(key, choices, n=1, cutoff=0.5)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    raise NeurmapError(f"unknown export target {name!r}{hint}; choose one of: {', '.join(TARGETS)} "
                       f"(aliases: {', '.join(f'{a}->{t}' for a, t in ALIASES.items())})")


def default_out(spec: TargetSpec, arch: str, precision: str, shapes: list, dynamic: bool) -> Path:
    shape = "dyn" if dynamic else "_".join(f"{h}x{w}" for h, w in shapes)
    return Path(f"{arch}-{spec.name}-{precision}-{shape}{spec.suffix}")


def artifact_json(a: Artifact, parity=None) -> dict:
    d = {"path": str(a.path), "target": a.target, "precision": a.precision, "size_mb": round(a.size_mb, 2),
         "shapes": [f"{h}x{w}" for h, w in a.shapes], "dynamic": a.dynamic, **a.info}
    if parity is not None:
        d["parity"] = parity.to_dict()
    return json.loads(json.dumps(d, default=str))
