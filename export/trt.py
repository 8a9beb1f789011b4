"""TensorRT engines from our ONNX artifacts (TensorRT 10.x / 11.x Python API), refittable in place.

Precision is explicit, never a builder flag (TensorRT 11 removed the FP16/INT8 flags and implicit calibrators):
the network is parsed **strongly typed**, so it runs in the types the ONNX carries —

- ``fp32``: the float export;
- ``fp16``: the export cast to float16 inside (float32 I/O kept, :func:`neurmap.export.ort_quant.convert_fp16`);
- ``int8``: explicit Q/DQ — NVIDIA ModelOpt's ``modelopt.onnx.quantization.quantize`` when installed, else ONNX
  Runtime's symmetric S8S8 per-channel QDQ graph (TensorRT needs zero points of 0).

Builds use an optimisation profile (min/opt/max) for dynamic H/W, a timing cache file reused across builds, a
workspace limit (Jetson boards run out of memory building big tactics), and ``BuilderFlag.REFIT`` so
test-time-adapted weights go in with :func:`refit_engine` instead of a rebuild. Engines are written atomically
with a JSON sidecar (GPU name, compute capability, TensorRT version, precision, shapes, the ONNX metadata):
an engine only runs on the GPU model and TensorRT version that built it, and :func:`load_engine` says so
instead of failing deep inside deserialisation.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from neurmap.core.errors import NeurmapError

from .onnx_export import read_artifact_metadata, sidecar_path
from .trt_runtime import TRTRunner  # noqa: F401 - the one runner; re-exported for callers of export.trt

TRT_MISSING = ("TensorRT needs an NVIDIA GPU with TensorRT (e.g. on the Jetson: JetPack ships it); "
               "`--target onnx` gives the portable artifact")
DEFAULT_TIMING_CACHE = Path(os.environ.get("NEURMAP_CACHE", Path.home() / ".cache" / "neurmap")) / "trt_timing.cache"


def import_tensorrt():
    """``tensorrt`` if it imports and a CUDA GPU is visible, else the one-line NeurmapError."""
    try:
        import tensorrt as trt  # noqa: F401
    except Exception:
        raise NeurmapError(TRT_MISSING) from None
    if gpu_info() is None:
        raise NeurmapError(TRT_MISSING)
    return trt


def gpu_info() -> Optional[dict]:
    """{'name', 'compute_capability'} of CUDA device 0, or None (torch, then cuda-python, then nvidia-smi)."""
    try:
        import torch

        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            return {"name": p.name, "compute_capability": f"{p.major}.{p.minor}"}
    except Exception:
        pass
    try:
        from cuda import cudart  # cuda-python

        err, props = cudart.cudaGetDeviceProperties(0)
        if int(err) == 0:
            name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
            return {"name": name.strip("\x00"), "compute_capability": f"{props.major}.{props.minor}"}
    except Exception:
        pass
    try:
        import subprocess

        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            name, cc = [s.strip() for s in out.stdout.strip().splitlines()[0].split(",")]
            return {"name": name, "compute_capability": cc}
    except Exception:
        pass
    return None


_RUNTIMES: list = []


class _Logger:
    """Collects TensorRT's warnings and errors so a failed build says why in one line."""

    def __init__(self, trt):
        self.messages: list[str] = []
        base = trt.ILogger

        outer = self

        class L(base):  # type: ignore[misc, valid-type]
            def __init__(self):
                base.__init__(self)

            def log(self, severity, msg):
                if int(severity) <= int(trt.ILogger.Severity.WARNING):
                    outer.messages.append(str(msg))

        self.logger = L()


@dataclass
class ShapeProfile:
    """min / opt / max (N, H, W) for the input; all equal for a static engine."""

    min: tuple[int, int, int]
    opt: tuple[int, int, int]
    max: tuple[int, int, int]

    @classmethod
    def static(cls, n: int, h: int, w: int) -> "ShapeProfile":
        return cls((n, h, w), (n, h, w), (n, h, w))

    @classmethod
    def from_sizes(cls, sizes: Sequence[tuple[int, int]], batch: int = 1) -> "ShapeProfile":
        hs, ws = [s[0] for s in sizes], [s[1] for s in sizes]
        mid = sizes[len(sizes) // 2] if len(sizes) > 2 else sizes[-1]
        return cls((1, min(hs), min(ws)), (batch, mid[0], mid[1]), (batch, max(hs), max(ws)))


def _atomic_bytes(path: Path, data: bytes) -> Path:
    from neurmap.core.checkpoint import atomic_write

    return atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(bytes(data)))


def prepare_onnx_for_trt(onnx_path: Path, precision: str, out_dir: Path, calib=None) -> Path:
    """The ONNX TensorRT should parse for ``precision`` (written into ``out_dir``)."""
    import numpy as np

    from .ort_quant import QuantConfig, convert_fp16, quantize_int8

    if precision == "fp32":
        return Path(onnx_path)
    if precision == "fp16":
        return convert_fp16(onnx_path, out_dir / "fp16.onnx")
    if precision == "int8":
        meta = read_artifact_metadata(onnx_path)
        if meta.get("precision") == "int8":
            return Path(onnx_path)  # already explicit Q/DQ
        if calib is None or len(calib) == 0:
            raise NeurmapError("TensorRT INT8 needs calibration frames (--calib DIR|VIDEO) to place explicit Q/DQ nodes")
        try:
            from modelopt.onnx.quantization import quantize as mo_quantize  # optional extra [modelopt]
        except Exception:
            mo_quantize = None
        out = out_dir / "int8_qdq.onnx"
        if mo_quantize is not None:
            mo_quantize(onnx_path=str(onnx_path), quantize_mode="int8", calibration_data=np.asarray(calib, np.float32),
                        calibration_method="entropy", output_path=str(out), calibration_eps=["cuda:0", "cpu"])
            return out
        # ONNX Runtime fallback: symmetric S8 activations and weights (zero points 0, as TensorRT requires);
        # 99.999th-percentile ranges, as for ORT INT8 (MSE ranges clip the highlights a deblur net needs)
        return quantize_int8(onnx_path, out, np.asarray(calib, np.float32),
                             QuantConfig(method="percentile", activation="s8", weight="s8")).path
    raise NeurmapError(f"TensorRT precision {precision!r}: use fp32, fp16 or int8")


def build_engine(onnx_path: str | Path, engine_path: str | Path, precision: str = "fp16",
                 profile: Optional[ShapeProfile] = None, workspace_gb: float = 2.0,
                 timing_cache: Optional[str | Path] = DEFAULT_TIMING_CACHE, refit: bool = True,
                 calib=None, opt_level: Optional[int] = None) -> Path:
    """Parse ``onnx_path`` (strongly typed), build for ``precision`` and write ``engine_path`` + sidecar JSON."""
    import tempfile

    trt = import_tensorrt()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    meta = read_artifact_metadata(onnx_path)
    with tempfile.TemporaryDirectory(prefix="neurmap-trt-") as tmp:
        src = prepare_onnx_for_trt(onnx_path, precision, Path(tmp), calib)
        log = _Logger(trt)
        builder = trt.Builder(log.logger)
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, log.logger)
        if not parser.parse_from_file(str(src)):
            errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise NeurmapError(f"TensorRT cannot parse {src.name}: {errs[:300]}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
        if refit:
            config.set_flag(trt.BuilderFlag.REFIT)
        if opt_level is not None:
            config.builder_optimization_level = int(opt_level)
        inp = network.get_input(0)
        dims = tuple(inp.shape)
        if any(d < 0 for d in dims):
            if profile is None:
                raise NeurmapError("this ONNX has dynamic H/W: give the sizes to build for (--shapes HxW,HxW gives "
                                   "the min and max of the optimisation profile)")
            p = builder.create_optimization_profile()
            p.set_shape(inp.name, (profile.min[0], 3, *profile.min[1:]), (profile.opt[0], 3, *profile.opt[1:]),
                        (profile.max[0], 3, *profile.max[1:]))
            config.add_optimization_profile(p)
        cache_bytes = b""
        if timing_cache is not None and Path(timing_cache).exists():
            cache_bytes = Path(timing_cache).read_bytes()
        cache = config.create_timing_cache(cache_bytes)
        config.set_timing_cache(cache, ignore_mismatch=True)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            tail = "; ".join(log.messages[-3:])
            raise NeurmapError(f"TensorRT build failed for {onnx_path.name} ({precision}): {tail[:300]} — on a Jetson "
                               "lower --workspace or close other GPU programs")
        if timing_cache is not None:
            try:
                _atomic_bytes(Path(timing_cache), config.get_timing_cache().serialize())
            except OSError:
                pass
        keep = refit and precision in REFIT_PRECISIONS
        if keep:   # the exact graph parsed (fp16-cast for fp16), beside the engine: what a refit patches
            _atomic_bytes(refit_onnx_path(engine_path), Path(src).read_bytes())
    _atomic_bytes(engine_path, serialized)
    side = engine_sidecar(meta, precision, trt.__version__, gpu_info() or {}, refit, onnx_path.name,
                          refit_onnx_path(engine_path).name if keep else None, profile)
    _atomic_bytes(sidecar_path(engine_path), json.dumps(side, indent=2).encode())
    return engine_path


#: precisions whose engines take adapted weights by refit (an INT8 Q/DQ graph needs re-quantization)
REFIT_PRECISIONS = ("fp32", "fp16")


def refit_onnx_path(engine_path: str | Path) -> Path:
    """``<engine>.refit.onnx``: the graph the engine was parsed from, kept beside it for refits."""
    p = Path(engine_path)
    return p.with_name(p.name + ".refit.onnx")


def engine_sidecar(meta: dict, precision: str, trt_version: str, gpu: dict, refit: bool, source_name: str,
                   refit_onnx: Optional[str], profile: Optional[ShapeProfile]) -> dict:
    """The JSON written beside an engine. Paths in it are file names relative to the engine (the ONNX it was
    exported from usually lived in a temporary folder that is gone)."""
    side = {**meta, "precision": precision, "format": "tensorrt-engine", "trt_version": trt_version,
            "gpu_name": gpu.get("name", "?"), "compute_capability": gpu.get("compute_capability", "?"),
            "refit": str(bool(refit)).lower(), "source_onnx_name": source_name,
            "profile": json.dumps(None if profile is None else [profile.min, profile.opt, profile.max])}
    if refit_onnx:
        side["refit_onnx"] = refit_onnx
    return side


def refit_source(engine_path: str | Path, onnx_path: Optional[str | Path] = None):
    """The ONNX (a ModelProto) to patch adapted weights into for a refit of ``engine_path``, in the engine's own
    dtypes: ``onnx_path`` when given (cast to fp16 for an fp16 engine), else the sidecar's ``refit_onnx`` beside
    the engine. One-line NeurmapError when the engine cannot take new weights or nothing to refit from is there."""
    import tempfile

    import onnx

    engine_path = Path(engine_path)
    side_p = sidecar_path(engine_path)
    if not side_p.is_file():
        raise NeurmapError(f"{engine_path}: no {side_p.name} beside it, so its precision and refit ONNX are unknown; "
                           "rebuild it with `neurmap export --target trt --weights W`")
    side = json.loads(side_p.read_text())
    prec = side.get("precision", "fp32")
    if side.get("refit") != "true":
        raise NeurmapError(f"{engine_path} was built without REFIT; rebuild it with `neurmap export --target trt`")
    if prec not in REFIT_PRECISIONS:
        raise NeurmapError(f"{engine_path} is a {prec} engine: adapted weights need re-quantization, not a refit; "
                           "adapt offline (`neurmap adapt`) and rebuild it with `neurmap export --target trt`")
    if onnx_path is None:
        name = side.get("refit_onnx")
        src = engine_path.parent / name if name else None
        if src is None or not src.is_file():
            raise NeurmapError(f"{engine_path}: the ONNX it was built from ({refit_onnx_path(engine_path).name}) is "
                               "not beside it; rebuild with `neurmap export --target trt --weights W` (it keeps it) "
                               "or pass the same graph's ONNX (--adapt-opts onnx=PATH)")
        return onnx.load(str(src))
    src = Path(onnx_path)
    if not src.is_file():
        raise NeurmapError(f"{src} does not exist; pass the ONNX the engine was built from (--adapt-opts onnx=PATH)")
    if prec == "fp16" and read_artifact_metadata(src).get("precision") != "fp16":
        from .ort_quant import convert_fp16

        with tempfile.TemporaryDirectory(prefix="neurmap-refit-") as tmp:   # the engine was built from this cast
            return onnx.load(str(convert_fp16(src, Path(tmp) / "fp16.onnx")))
    return onnx.load(str(src))


class EngineRefit:
    """The one refit path: adapted weights -> the engine's refit ONNX patched by name (values cast to its
    dtypes) -> ``OnnxParserRefitter`` (parsing, CPU) -> ``Refitter.refit_cuda_engine`` (the GPU update).

    :meth:`stage` parses and sets the weights on a fresh refitter without touching the engine, so it runs in
    any thread; :meth:`commit` updates the engine (call it while no execution is in flight). A staged refit
    that fails leaves the engine as it was; a commit that fails is retried with the last good weights."""

    def __init__(self, engine, trt, logger, proto, reference: Optional[dict] = None) -> None:
        self.engine, self.trt, self.logger = engine, trt, logger
        self.proto = proto
        self.reference = {k: v.detach().cpu().clone() for k, v in (reference or {}).items()}
        self.good = proto.SerializeToString()          # what the engine holds now

    def prepare(self, state: dict) -> bytes:
        """``state`` (a state dict) patched into the refit ONNX, in its dtypes."""
        from .onnx_weights import patch_onnx_initializers

        try:
            return patch_onnx_initializers(self.proto, state, self.reference).SerializeToString()
        except KeyError as e:
            raise NeurmapError(f"the engine's refit ONNX has no initializer for a changed tensor ({e}); a refit "
                               "needs the exact graph the engine was built from") from None

    def stage(self, model_bytes: bytes):
        """A refitter holding the weights of ``model_bytes`` (the engine is not touched yet)."""
        refitter = self.trt.Refitter(self.engine, self.logger)
        parser = self.trt.OnnxParserRefitter(refitter, self.logger)
        if not parser.refit_from_bytes(model_bytes):
            errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise NeurmapError(f"TensorRT refit from ONNX failed: {errs[:300] or 'see the TensorRT log'} — the ONNX "
                               "must be the graph the engine was built from, in its dtypes")
        missing = refitter.get_missing_weights()
        if len(missing):
            raise NeurmapError(f"refit incomplete: {len(missing)} weights missing "
                               f"(e.g. {', '.join(list(missing)[:3])})")
        return (refitter, parser, model_bytes)        # the parser owns the weights until the commit

    def commit(self, staged) -> None:
        """Update the engine with staged weights; on failure put the last good ones back and raise."""
        refitter, _parser, model_bytes = staged
        if refitter.refit_cuda_engine():
            self.good = model_bytes
            return
        try:
            restored = self.stage(self.good)[0].refit_cuda_engine()
        except NeurmapError:
            restored = False
        raise NeurmapError("TensorRT refit_cuda_engine failed; " + (
            "the engine keeps its previous weights" if restored else "the engine's weights may be inconsistent"))


def check_engine_compat(engine_path: str | Path) -> dict:
    """The sidecar, after checking it matches this GPU and TensorRT (NeurmapError naming both when not)."""
    trt = import_tensorrt()
    side_p = sidecar_path(engine_path)
    if not side_p.exists():
        raise NeurmapError(f"{engine_path}: no {side_p.name} beside it; rebuild with `neurmap export --target trt`")
    side = json.loads(side_p.read_text())
    gpu = gpu_info() or {}
    problems = []
    if side.get("trt_version") != trt.__version__:
        problems.append(f"built with TensorRT {side.get('trt_version')}, this machine has {trt.__version__}")
    if side.get("compute_capability") != gpu.get("compute_capability") or side.get("gpu_name") != gpu.get("name"):
        problems.append(f"built on {side.get('gpu_name')} (sm {side.get('compute_capability')}), this GPU is "
                        f"{gpu.get('name')} (sm {gpu.get('compute_capability')})")
    if problems:
        raise NeurmapError(f"{engine_path}: " + "; ".join(problems) + " — engines do not move between GPUs or "
                           "TensorRT versions; rebuild it here from the .onnx (`neurmap export --target trt`)")
    return side


def load_engine(engine_path: str | Path):
    """Deserialise an engine after the compatibility check (when its sidecar is there; an engine built
    elsewhere has none); returns ``(engine, sidecar, tensorrt module, logger)``."""
    trt = import_tensorrt()
    side = check_engine_compat(engine_path) if sidecar_path(engine_path).exists() else {}
    log = _Logger(trt)
    runtime = trt.Runtime(log.logger)
    engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
    if engine is None:
        raise NeurmapError(f"{engine_path}: TensorRT {trt.__version__} could not load it "
                           f"({'; '.join(log.messages[-2:])[:200]}) — engines only load with the TensorRT version "
                           "and GPU they were built on; rebuild it here with `neurmap export --target trt --weights W`")
    _RUNTIMES.append(runtime)  # a runtime must outlive the engines it deserialised
    _RUNTIMES.append(log)      # ... and the logger it reports to
    return engine, side, trt, log.logger


def refit_engine(engine_path: str | Path, onnx_path: str | Path, out_path: Optional[str | Path] = None) -> Path:
    """Put the weights of ``onnx_path`` (same graph, new values, e.g. after adaptation) into a REFIT engine and
    write it back atomically, with its refit ONNX and the sidecar's weights hash updated."""
    engine, side, trt, logger = load_engine(engine_path)
    proto = refit_source(engine_path, onnx_path)                  # the new weights, in the engine's dtypes
    refit = EngineRefit(engine, trt, logger, proto)
    model_bytes = proto.SerializeToString()
    refit.commit(refit.stage(model_bytes))
    out = Path(out_path or engine_path)
    _atomic_bytes(out, engine.serialize())
    _atomic_bytes(refit_onnx_path(out), model_bytes)
    new_meta = read_artifact_metadata(onnx_path)
    side = {**side, "weights_hash": new_meta.get("weights_hash", side.get("weights_hash")),
            "refit_onnx": refit_onnx_path(out).name, "refit_from": Path(onnx_path).name}
    _atomic_bytes(sidecar_path(out), json.dumps(side, indent=2).encode())
    return out
