"""ONNX Runtime backend: TensorRT, CUDA or CPU execution provider, picked by what this onnxruntime offers.

Reads the artifact's own metadata (``neurmap.pad_multiple``, ``neurmap.precision`` ... written by
``neurmap export``) through ONNX Runtime, and the input shape from the graph: integer H/W = a fixed-shape
engine (the pipeline tiles or pads to it), symbolic H/W = any size that is a multiple of the pad multiple.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from .base import Backend, HotSwap, InputSpec, metadata_int, missing_engine

#: preferred order; the first one this onnxruntime build offers wins (CPU always closes the list)
PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CoreMLExecutionProvider",
             "CPUExecutionProvider")
DEFAULT_MULTIPLE = 16  # when an ONNX file carries no neurmap.pad_multiple: safe for every net we ship


def choose_providers(available: list[str], asked: list[str] | None = None) -> list[str]:
    """Providers to open the session with: ``asked`` (validated) or the preferred available ones."""
    from neurmap.core.errors import NeurmapError

    if asked:
        missing = [p for p in asked if p not in available]
        if missing:
            raise NeurmapError(f"execution provider(s) {', '.join(missing)} not in this onnxruntime "
                               f"(available: {', '.join(available)}); install onnxruntime-gpu for CUDA/TensorRT")
        return list(asked)
    chosen = [p for p in PREFERRED if p in available and p != "CoreMLExecutionProvider"]
    return chosen or ["CPUExecutionProvider"]


def weights_key(model_bytes: bytes) -> str:
    """The TensorRT EP engine-cache key of a model: a hash of its bytes (graph and weights). ONNX Runtime's
    own cache key covers the graph, not the weights: one folder per key keeps an adapted model from being
    served the engine built from the old weights."""
    import hashlib

    return hashlib.sha256(model_bytes).hexdigest()[:16]


def trt_cache_dir(artifact: Path, key: str) -> Path:
    """``<artifact>.trtcache/<key>`` (engines built once per GPU and weights, reused); a temp folder when the
    artifact's folder is read-only."""
    cache = Path(artifact).with_suffix(".trtcache") / key
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError:
        cache = Path(tempfile.gettempdir()) / f"neurmap-trtcache-{Path(artifact).stem}" / key
        cache.mkdir(parents=True, exist_ok=True)
    return cache


def provider_args(providers: list[str], options: dict[str, dict], artifact: Path, key: str) -> list:
    """``providers`` with their ``options``, the TensorRT EP's engine cache pointed at the folder of ``key``."""
    out = []
    for p in providers:
        opts = dict(options.get(p, {}))
        if p == "TensorrtExecutionProvider":
            opts.update({"trt_engine_cache_enable": True, "trt_engine_cache_path": str(trt_cache_dir(artifact, key))})
        out.append((p, opts) if opts else p)
    return out


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    install_hint = "pip install onnxruntime (or onnxruntime-gpu for CUDA / TensorRT)"

    def load(self, artifact: Path) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise missing_engine("onnxruntime", self.install_hint) from None
        from neurmap.core.errors import NeurmapError

        providers = choose_providers(ort.get_available_providers(), self.options.get("providers"))
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.options.get("threads"):
            so.intra_op_num_threads = int(self.options["threads"])
        so.log_severity_level = 3
        self.artifact = Path(artifact)
        trt_opts = {"TensorrtExecutionProvider": {"trt_fp16_enable": self.options.get("fp16", False)}}
        key = weights_key(self.artifact.read_bytes()) if "TensorrtExecutionProvider" in providers else ""
        prov_args = provider_args(providers, trt_opts, self.artifact, key)
        try:
            self.session = ort.InferenceSession(str(artifact), sess_options=so, providers=prov_args)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise NeurmapError(f"{artifact}: ONNX Runtime cannot load it ({first}); re-export it with "
                               "`neurmap export`") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise NeurmapError(f"{artifact}: expected one image input, found {len(inputs)} "
                               f"({', '.join(i.name for i in inputs)})")
        self.input = inputs[0]
        self.output_name = next((o.name for o in outputs if o.name == "sharp"), outputs[0].name)
        shape = list(self.input.shape)
        if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
            raise NeurmapError(f"{artifact}: input {self.input.name} has shape {shape}; expected (N, 3, H, W)")
        self.input_dtype = np.float16 if "float16" in self.input.type else np.float32
        meta = dict(self.session.get_modelmeta().custom_metadata_map or {})
        fixed = tuple(shape[2:]) if all(isinstance(v, int) and v > 0 for v in shape[2:]) else None
        batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else 8
        self.fixed_batch = isinstance(shape[0], int) and shape[0] > 0
        multiple = 1 if fixed else metadata_int(meta, "neurmap.pad_multiple", DEFAULT_MULTIPLE)
        self.spec = InputSpec(fixed_hw=fixed, multiple=multiple, max_batch=batch,
                              metadata={k.removeprefix("neurmap."): v for k, v in meta.items()})
        active = self.session.get_providers()
        self.providers = active
        self.device = {"TensorrtExecutionProvider": "tensorrt", "CUDAExecutionProvider": "cuda"}.get(active[0], "cpu")

    def infer(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=self.input_dtype)
        n = x.shape[0]
        if self.fixed_batch and n < self.spec.max_batch:  # fill a static batch with copies of the last item
            x = np.concatenate([x, np.repeat(x[-1:], self.spec.max_batch - n, axis=0)])
        y = self.session.run([self.output_name], {self.input.name: x})[0]
        return np.asarray(y[:n], dtype=np.float32)

    def describe(self) -> str:
        return f"onnxruntime [{', '.join(p.replace('ExecutionProvider', '') for p in self.providers)}] " \
               f"({self.spec.describe()})"

    def swapper(self, artifact, model=None, source_onnx=None) -> "OrtSwap":
        from neurmap.export.onnx_weights import reexport_bytes

        ref = model.net.state_dict() if model is not None else None

        def reexport(state, model=model):
            return reexport_bytes(model, state, artifact)
        return OrtSwap(self, artifact, reference=ref, reexport=reexport if model is not None else None)

    def close(self) -> None:
        self.session = None


class OrtSwap(HotSwap):
    """ONNX Runtime: the served ONNX's initializers are replaced by name (``net.<state key>``; graph and
    metadata unchanged), a new ``InferenceSession`` is built from those bytes off the stream, and the
    backend's session reference is swapped. Where the export folded or renamed a changed tensor (e.g.
    all-zero biases deduplicated by onnxslim), the graph is re-exported from the adapted model instead."""

    kind = "onnxruntime"

    def __init__(self, backend, onnx_path, reference=None, reexport=None) -> None:
        import onnx

        super().__init__(backend)
        self.path = Path(onnx_path)
        self.proto = onnx.load(str(self.path))
        self.reference = {k: v.detach().cpu().clone() for k, v in (reference or {}).items()}
        self.reexport = reexport
        self.reexports = 0

    def model_bytes(self, state) -> bytes:
        from neurmap.core.errors import NeurmapError
        from neurmap.export import onnx_weights

        try:
            return onnx_weights.patch_onnx_initializers(self.proto, state, self.reference).SerializeToString()
        except KeyError as e:
            if self.reexport is None:
                raise NeurmapError(f"{self.path}: cannot patch the adapted weights in ({e}) and no re-export is "
                                   "available") from None
            self.reexports += 1
            return self.reexport(state)

    def _prepare(self, state):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        threads = getattr(self.backend, "options", {}).get("threads")
        if threads:
            so.intra_op_num_threads = int(threads)
        old = self.backend.session
        model = self.model_bytes(state)
        args = provider_args(old.get_providers(), old.get_provider_options(), self.path, weights_key(model))
        return ort.InferenceSession(model, sess_options=so, providers=args)

    def _apply(self, sess) -> None:
        self.backend.session = sess

    def stats(self) -> dict:
        return {**super().stats(), "reexports": self.reexports}
