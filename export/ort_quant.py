"""ONNX Runtime INT8 (static QDQ) and FP16 artifacts from a float ONNX export.

INT8 route (x86 CPUs with VNNI, ARM): ``quant_pre_process`` -> activation histograms on calibration frames
(one pass, every method computed from the same histograms) -> a range per tensor -> ``quantize_static`` in QDQ
format, U8 activations / S8 per-channel weights by default (``activation="s8"`` gives the symmetric S8S8 graph
TensorRT wants). Calibration runs on a **dynamic-shape twin** of the model with native-scale crops, because
the calibrator keeps every intermediate tensor in memory (gigabytes per 720p frame); the quantized graph is
then frozen to the export's static shape when it has one. Ranges per tensor:

- ``minmax``: the observed extremes (what the naive recipe uses; one outlier pixel widens the step for all);
- ``percentile``: two-sided cut at ``percentile`` (default 99.999; ``neurmap export``'s default): for a
  dense-prediction net the rare large activations (highlights, strong edges) matter — MSE ranges clip ~1e-5 of
  the values of DMPHN, and those few clipped values spread into visible errors (bench/export_bench.py:
  p99 error vs float 0.037 → 0.007 and 0.30 → 0.09 dB loss with 12 convs in float);
- ``entropy``: ORT's KL-divergence threshold search (on a 512-bin copy of the histogram, for speed);
- ``mse`` (``QuantConfig``'s default): the (low, high) pair minimising the expected squared error of 8-bit quantization
  (clipping + rounding) over the histogram — for an image-to-image regression net the error that matters
  is squared error, not a classifier's KL divergence.

The ONNX Runtime internals this needs (calibrator histograms, the entropy collector, the ranges cache) and the
scoped silencing of its logging live in :mod:`.ort_compat`, pinned to one tested version range.
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from neurmap.core.errors import NeurmapError

from .onnx_export import read_artifact_metadata, save_onnx_atomic, set_metadata

METHODS = ("mse", "entropy", "percentile", "minmax")


@dataclass
class QuantConfig:
    method: str = "mse"
    percentile: float = 99.999
    per_channel: bool = True
    activation: str = "u8"       # u8 (x86 VNNI) | s8 (symmetric, TensorRT / ARM)
    weight: str = "s8"
    reduce_range: bool = False   # 7-bit weights: only for x86 CPUs without VNNI
    exclude: list[str] = field(default_factory=list)   # node names kept in float
    num_bins: int = 2048
    chunk: int = 2                # frames per calibration pass (memory bound)
    op_types: Optional[list[str]] = None   # None: every op ORT can quantize; ["Conv", "ConvTranspose"]: convs only,
                                           # so residual Adds (and the skip paths they feed) stay in float

    def check(self) -> None:
        if self.method not in METHODS:
            import difflib
            near = difflib.get_close_matches(self.method, METHODS, n=1)
            raise NeurmapError(f"unknown calibration method {self.method!r}"
                               + (f" (did you mean {near[0]!r}?)" if near else "") + f"; choose one of {', '.join(METHODS)}")
        if self.activation not in ("u8", "s8") or self.weight not in ("u8", "s8"):
            raise NeurmapError("activation/weight types are 'u8' or 's8'")


def _qtype(name: str):
    from onnxruntime.quantization import QuantType
    return QuantType.QUInt8 if name == "u8" else QuantType.QInt8


def prepare(fp32_path: str | Path, out_path: str | Path) -> Path:
    """ORT's quant_pre_process (graph optimisation + shape inference); the input is copied on failure."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from . import ort_compat

    # ONNX shape inference only: ORT's symbolic shape inference with auto_merge merges H/2 with H on the patch
    # hierarchy of DMPHN and writes wrong value_info, which then breaks buffer reuse at run time
    with ort_compat.quiet():
        quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=True)
    return Path(out_path)


def op_types() -> list[str]:
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
    return sorted(set(QLinearOpsRegistry) | set(QDQRegistry))


# ---------------------------------------------------------------------------------------------------------
# histograms -> ranges
# ---------------------------------------------------------------------------------------------------------

def collect_histograms(model_path: str | Path, frames: np.ndarray, num_bins: int = 2048, chunk: int = 2,
                       input_name: Optional[str] = None) -> dict[str, tuple]:
    """{tensor: (hist, edges, min, max)} of every tensor the quantizer will need, over all ``frames``."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    from neurmap.calibration.reader import FrameReader

    from . import ort_compat

    ort_compat.check_version()
    reader = FrameReader.for_model(frames, model_path) if input_name is None else FrameReader(frames, input_name)
    with tempfile.TemporaryDirectory(prefix="neurmap-calib-") as tmp, ort_compat.quiet():
        cal = create_calibrator(Path(model_path), op_types(), augmented_model_path=str(Path(tmp) / "aug.onnx"),
                                calibrate_method=CalibrationMethod.Percentile,
                                extra_options={"symmetric": False, "num_bins": num_bins, "percentile": 99.99})
        for start in range(0, len(reader.frames), chunk):
            reader.set_range(start, start + chunk)
            cal.collect_data(reader)
        hists = ort_compat.histograms(cal)
        del cal
    return hists


def _mse_range(hist: np.ndarray, edges: np.ndarray, mn: float, mx: float, levels: int = 255) -> tuple[float, float]:
    """(lo, hi) minimising E[(x - q(x))^2] over the histogram: clipping error outside + step^2/12 inside."""
    h = hist.astype(np.float64)
    if h.sum() <= 0 or mx <= mn:
        return float(mn), float(mx)
    c = 0.5 * (edges[:-1] + edges[1:]).astype(np.float64)
    keep = h > 0
    h, c = h[keep], c[keep]
    # candidate bounds: quantiles of the distribution (dense near the tails) plus the extremes
    cdf = np.cumsum(h) / h.sum()
    qs = np.concatenate([[0.0], 1.0 - np.logspace(-1, -7, 40)])
    hi_c = np.unique(np.concatenate([np.interp(qs, cdf, c), [mx]]))
    lo_c = np.unique(np.concatenate([np.interp(1.0 - qs, cdf, c), [mn]]))
    if mn >= 0:
        lo_c = np.array([0.0])           # ReLU outputs: keep zero exact and the whole code range for x >= 0
    hi_c = hi_c[hi_c > (lo_c.min() if len(lo_c) else mn)]
    if not len(hi_c):
        return float(mn), float(mx)
    H, HC, HC2 = np.cumsum(h), np.cumsum(h * c), np.cumsum(h * c * c)
    tot, totc, totc2 = H[-1], HC[-1], HC2[-1]

    def below(t):  # sums over bins with centre < t
        i = np.searchsorted(c, t, side="left") - 1
        ok = i >= 0
        ii = np.clip(i, 0, None)
        return np.where(ok, H[ii], 0.0), np.where(ok, HC[ii], 0.0), np.where(ok, HC2[ii], 0.0)

    lo = lo_c[:, None]
    hi = hi_c[None, :]
    nb, sb, s2b = below(lo)                                        # x < lo: error (x - lo)^2
    na_, sa_, s2a_ = below(hi)                                     # x >= hi: error (x - hi)^2
    na, sa, s2a = tot - na_, totc - sa_, totc2 - s2a_
    clip_lo = s2b - 2 * lo * sb + lo * lo * nb
    clip_hi = s2a - 2 * hi * sa + hi * hi * na
    step = (hi - lo) / levels
    inside = np.clip(tot - nb - na, 0, None)
    err = clip_lo + clip_hi + inside * step * step / 12.0
    err = np.where(hi > lo, err, np.inf)
    i, j = np.unravel_index(np.argmin(err), err.shape)
    return float(lo_c[i]), float(hi_c[j])


def ranges_from_histograms(hists: dict[str, tuple], method: str = "mse", percentile: float = 99.999) -> dict[str, tuple[float, float]]:
    """{tensor: (lo, hi)} by ``method`` (see the module doc)."""
    out: dict[str, tuple[float, float]] = {}
    if method == "entropy":
        from .ort_compat import entropy_thresholds

        small = {}
        for k, (h, e, mn, mx) in hists.items():
            f = max(1, len(h) // 512)
            n = (len(h) // f) * f
            hh = h[:n].reshape(-1, f).sum(1)
            hh[-1] += h[n:].sum()
            ee = e[: n + 1: f].astype(np.float32)
            small[k] = (hh, ee, mn, mx)
        return entropy_thresholds(small, num_bins=512, num_quantized_bins=128, percentile=percentile)
    for k, (h, e, mn, mx) in hists.items():
        mn, mx = float(mn), float(mx)
        if method == "minmax":
            out[k] = (mn, mx)
        elif method == "percentile":
            cdf = np.cumsum(h) / max(h.sum(), 1)
            cut = (100.0 - percentile) / 200.0
            lo = float(e[np.searchsorted(cdf, cut)]) if mn < 0 else 0.0
            hi = float(e[min(len(e) - 1, np.searchsorted(cdf, 1.0 - cut) + 1)])
            out[k] = (max(lo, mn), min(hi, mx))
        elif method == "mse":
            out[k] = _mse_range(h, e, mn, mx)
        else:
            raise NeurmapError(f"unknown calibration method {method!r}")
    return out


def with_input_range(ranges: dict, model_path, meta: dict) -> dict:
    """Graph inputs documented as [0,1] images get exactly (0, 1): scale 1/255, zero point 0, so 8-bit camera
    frames pass the input quantizer without rounding (a calibrated range like (0.004, 0.98) would round them)."""
    import onnx

    if meta.get("input_range", "0,1") != "0,1":
        return ranges
    m = onnx.load(str(model_path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    out = dict(ranges)
    for i in m.graph.input:
        if i.name not in inits and i.name in out:
            out[i.name] = (0.0, 1.0)
    return out


def _ranges_cache(ranges: dict[str, tuple[float, float]], path: Path) -> Path:
    from .ort_compat import write_ranges

    write_ranges(ranges, path)
    return path


# ---------------------------------------------------------------------------------------------------------
# graph surgery
# ---------------------------------------------------------------------------------------------------------

def freeze_shape(model, n: int, h: int, w: int):
    """Fix a dynamic (N,3,H,W) model to one shape: input/output dims set, stale value_info dropped, shapes
    re-inferred (lets ORT/TensorRT plan memory once)."""
    import onnx

    for vi in list(model.graph.input) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if len(dims) == 4:
            for d, v in zip(dims, (n, None, h, w)):
                if v is not None:
                    d.ClearField("dim_param")
                    d.dim_value = v
    del model.graph.value_info[:]
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:
        pass
    return model


def quantizable_nodes(model_path: str | Path) -> list[str]:
    """Names of the Conv / ConvTranspose nodes (the ones worth keeping in float or not)."""
    import onnx

    m = onnx.load(str(model_path))
    return [n.name for n in m.graph.node if n.op_type in ("Conv", "ConvTranspose")]


@dataclass
class QuantResult:
    path: Path
    method: str
    frames: int
    excluded: list[str]
    seconds: float
    ranges: dict = field(default_factory=dict, repr=False)


def quantize_int8(fp32_path: str | Path, out_path: str | Path, frames: Optional[np.ndarray] = None,
                  config: Optional[QuantConfig] = None, *, hists: Optional[dict] = None,
                  ranges: Optional[dict] = None, static_shape: Optional[tuple[int, int, int]] = None,
                  dynamic_twin: Optional[str | Path] = None, extra_meta: Optional[dict] = None) -> QuantResult:
    """Static QDQ INT8 artifact from a float ONNX export (ours, with ``neurmap.*`` metadata).

    ``frames``: calibration frames (N,3,h,w) in [0,1] (crops; any size the dynamic model takes).
    ``dynamic_twin``: a dynamic-H/W export of the same weights to calibrate and quantize when ``fp32_path``
    is static (its shape is then frozen back to ``static_shape`` = (N,H,W)). ``hists``/``ranges``: reuse a
    previous histogram pass (see :func:`collect_histograms`) or explicit ranges.
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, quantize_static

    from . import ort_compat

    cfg = config or QuantConfig()
    cfg.check()
    ort_compat.check_version()
    t0 = time.perf_counter()
    meta = read_artifact_metadata(fp32_path)
    src = Path(dynamic_twin or fp32_path)
    if static_shape is None and meta.get("shape", "").count(",") == 3 and "H" not in meta.get("shape", "H"):
        n_, _, h_, w_ = (int(v) for v in meta["shape"].split(","))
        static_shape = (n_, h_, w_) if dynamic_twin is not None else None
    with tempfile.TemporaryDirectory(prefix="neurmap-int8-") as tmp:
        tmp = Path(tmp)
        pre = prepare(src, tmp / "pre.onnx")
        if ranges is None:
            if hists is None:
                if frames is None or len(frames) == 0:
                    raise NeurmapError("INT8 needs calibration frames: pass --calib DIR|VIDEO (a few dozen frames "
                                       "like the ones the model will see)")
                hists = collect_histograms(pre, frames, cfg.num_bins, cfg.chunk)
            ranges = ranges_from_histograms(hists, cfg.method, cfg.percentile)
        ranges = with_input_range(ranges, pre, meta)
        cache = _ranges_cache(ranges, tmp / "ranges.json")
        with ort_compat.quiet():
            quantize_static(str(pre), str(tmp / "q.onnx"), None, quant_format=QuantFormat.QDQ,
                            per_channel=cfg.per_channel, reduce_range=cfg.reduce_range,
                            activation_type=_qtype(cfg.activation), weight_type=_qtype(cfg.weight),
                            nodes_to_exclude=list(cfg.exclude), calibration_cache_path=str(cache),
                            op_types_to_quantize=list(cfg.op_types) if cfg.op_types else None,
                            extra_options={"ActivationSymmetric": cfg.activation == "s8", "WeightSymmetric": True})
        q = onnx.load(str(tmp / "q.onnx"))
    if static_shape is not None:
        q = freeze_shape(q, *static_shape)
    n_frames = 0 if frames is None else int(len(frames))
    info = {"precision": "int8", "quant.method": cfg.method, "quant.frames": str(n_frames),
            "quant.activation": cfg.activation, "quant.weight": cfg.weight,
            "quant.per_channel": str(cfg.per_channel).lower(), "quant.excluded": json.dumps(list(cfg.exclude)),
            "quant.op_types": json.dumps(cfg.op_types or "all")}
    if static_shape is not None:
        info["shape"] = f"{static_shape[0]},3,{static_shape[1]},{static_shape[2]}"
    set_metadata(q, {**{k: v for k, v in meta.items()}, **info, **(extra_meta or {})})
    path = save_onnx_atomic(q, out_path)
    return QuantResult(path, cfg.method, n_frames, list(cfg.exclude), time.perf_counter() - t0, ranges)


# ---------------------------------------------------------------------------------------------------------
# FP16
# ---------------------------------------------------------------------------------------------------------

def convert_fp16(fp32_path: str | Path, out_path: str | Path) -> Path:
    """FP16 weights and activations, float32 I/O kept (Casts at the edges) — for GPU execution providers and
    for TensorRT's strongly typed build. Uses ONNX Runtime's own float16 converter (no extra package)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    m = onnx.load(str(fp32_path))
    meta = read_artifact_metadata(fp32_path)
    h = convert_float_to_float16(m, keep_io_types=True, disable_shape_infer=False)
    toposort(h.graph)                       # the converter appends the input Casts at the end of the node list
    set_metadata(h, {**meta, "precision": "fp16"})
    return save_onnx_atomic(h, out_path)


def toposort(graph) -> None:
    """Reorder ``graph.node`` in place so every node comes after the producers of its inputs."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    nodes, out = list(graph.node), []
    while nodes:
        rest = []
        for n in nodes:
            if all(i in ready for i in n.input):
                out.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(nodes):            # a cycle or a dangling input: keep the remainder as it was
            out += rest
            break
        nodes = rest
    del graph.node[:]
    graph.node.extend(out)


def describe(cfg: QuantConfig) -> dict:
    return asdict(cfg)


def node_names_like(model_path: str | Path, patterns: Sequence[str]) -> list[str]:
    """Node names containing any of ``patterns`` (e.g. a module path 'decoder_lv1/layer24')."""
    import onnx

    m = onnx.load(str(model_path))
    return [n.name for n in m.graph.node if any(p in n.name for p in patterns)]
