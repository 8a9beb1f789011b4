"""Hot swap of adapted weights into a running engine, between two frames, and the online adaptation worker.

A :class:`HotSwap` wraps one backend's ``infer``: an update is *prepared* in the adaptation thread (the slow
part: a new ONNX Runtime session, a patched ONNX for a TensorRT refit, copies of tensors) and *applied* by
the inference thread at the start of its next ``infer`` call, so no frame ever sees half-old, half-new
weights and the stream never stops.

Per engine
    PyTorch        ``load_state_dict`` into the served model (a copy of the tensors; ~ms).
    ONNX Runtime   the served ONNX's initializers are replaced by name (``net.<state key>``; the graph,
                   metadata and everything else unchanged), a new ``InferenceSession`` is built from those
                   bytes off the stream, and the backend's session reference is swapped. Where the export
                   folded or renamed a changed tensor (e.g. all-zero biases deduplicated by onnxslim), the
                   graph is re-exported from the adapted PyTorch model instead.
    TensorRT       the engine must be built with the REFIT flag; the patched ONNX is fed to
                   ``trt.OnnxParserRefitter`` and ``Refitter.refit_cuda_engine()`` runs between frames (no
                   rebuild). The ONNX the engine was built from must be given (or sit beside the engine).
    Core ML        re-export (coremltools conversion of the adapted model) and a new ``MLModel``. Core ML's
                   own on-device update API (``MLUpdateTask``) exists only for the old neuralnetwork format,
                   for conv/inner-product layers with MSE or cross-entropy losses: it cannot express the
                   reblur/motion-net loss, which needs the motion net and the reblur module in the graph
                   and gradients through a frozen network, so the adaptation runs in PyTorch and the model
                   is re-converted (macOS to load and predict).

:class:`OnlineAdapter` is the background worker of ``neurmap run --adapt``: it taps the frames the
engine sees into a :class:`~.adaptation.FrameBuffer`, runs guarded rounds on a private PyTorch copy, saves
every accepted update atomically (never over the original), and hands it to the swapper.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from neurmap.core.errors import NeurmapError

from .adaptation import AdaptConfig, Adapter, FrameBuffer, clone_model, save_adapted


# ------------------------------------------------------------------------------------------------ base
class HotSwap:
    """Wraps ``backend.infer``; :meth:`submit` queues an update that the next ``infer`` call applies first."""

    kind = "base"

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.lock = threading.Lock()          # guards ``pending`` only: a submit never waits for a frame
        self.pending: Any = None
        self.swaps = 0
        self.frames = 0
        self.apply_ms: list[float] = []
        self.taps: list[Callable[[np.ndarray], None]] = []
        self._infer = backend.infer
        backend.infer = self.infer             # instance attribute: the pipeline calls this one

    def infer(self, batch: np.ndarray) -> np.ndarray:
        with self.lock:
            update, self.pending = self.pending, None
        if update is not None:
            t0 = time.perf_counter()
            self._apply(update)
            self.apply_ms.append((time.perf_counter() - t0) * 1000)
            self.swaps += 1
        y = self._infer(batch)
        self.frames += 1
        for tap in self.taps:
            tap(batch)
        return y

    def submit(self, state: dict[str, torch.Tensor]) -> None:
        """Prepare ``state`` (the adapted net's state dict) here, apply it before the next frame."""
        prepared = self._prepare(state)
        with self.lock:
            self.pending = prepared

    def swap_now(self, state: dict[str, torch.Tensor]) -> None:
        """Prepare and apply at once (no stream running: offline use, tests)."""
        self._apply(self._prepare(state))
        self.swaps += 1

    def detach(self) -> None:
        if self.backend.__dict__.get("infer") == self.infer:
            del self.backend.infer

    def stats(self) -> dict:
        ms = self.apply_ms
        return {"engine": self.kind, "swaps": self.swaps, "pending": self.pending is not None,
                "apply_ms_max": round(max(ms), 2) if ms else None,
                "apply_ms_mean": round(sum(ms) / len(ms), 2) if ms else None}

    # -- per engine --
    def _prepare(self, state: dict[str, torch.Tensor]) -> Any:
        raise NotImplementedError

    def _apply(self, prepared: Any) -> None:
        raise NotImplementedError


class TorchSwap(HotSwap):
    """PyTorch backend: ``load_state_dict`` into the served net between frames."""

    kind = "torch"

    def _prepare(self, state):
        net = self.backend.model.net
        dev = next(net.parameters()).device
        return {k: v.detach().to(dev, copy=True) for k, v in state.items()}

    def _apply(self, prepared) -> None:
        with torch.no_grad():
            self.backend.model.net.load_state_dict(prepared)


# ------------------------------------------------------------------------------------------------ ONNX
def _initializer_index(proto) -> dict[str, int]:
    return {init.name: i for i, init in enumerate(proto.graph.initializer)}


def patch_onnx_initializers(proto, state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor] | None = None,
                            prefixes: tuple[str, ...] = ("net.", "")):
    """A copy of ``proto`` whose initializers named ``prefix + key`` hold ``state[key]`` (dtype of the file).

    Keys that are not found (folded, renamed, deduplicated by the exporter) are fine while they equal
    ``reference`` (the weights the file was exported from); a changed one that is not found raises
    :class:`KeyError` so the caller can re-export instead."""
    import onnx
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    index = _initializer_index(out)
    missing = []
    for key, value in state.items():
        name = next((p + key for p in prefixes if p + key in index), None)
        if name is None:
            if reference is None or key not in reference or not torch.equal(reference[key].cpu(), value.cpu()):
                missing.append(key)
            continue
        init = out.graph.initializer[index[name]]
        old = numpy_helper.to_array(init)
        arr = value.detach().cpu().numpy()
        if tuple(old.shape) != tuple(arr.shape):
            missing.append(key)
            continue
        init.CopyFrom(numpy_helper.from_array(arr.astype(old.dtype, copy=False), name))
    if missing:
        raise KeyError(f"{len(missing)} changed tensors have no initializer of the same name and shape "
                       f"(e.g. {missing[0]})")
    from neurmap.core.checkpoint import weights_hash
    for p in out.metadata_props:
        if p.key == "neurmap.weights_hash":
            p.value = weights_hash(state)
    return out


def model_from_onnx(path: str | Path):
    """The PyTorch DeblurModel behind an exported ONNX (architecture and weights' value range from its metadata,
    weights from its initializers by name). Raises NeurmapError when the file cannot be mapped back (give
    --adapt-opts weights=W): the range is read, never guessed from the graph."""
    import onnx
    from onnx import numpy_helper

    from neurmap.core import DeblurModel
    from neurmap.core.models import MODELS, build_network
    from neurmap.core.models.wrapper import RANGE_OFFSETS

    try:
        proto = onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 - protobuf raises several kinds for a corrupt or truncated file
        raise NeurmapError(f"{path} is not a readable ONNX file ({type(e).__name__}); re-export it with "
                           "`neurmap export --target onnx --weights W`") from None
    meta = {p.key.removeprefix("neurmap."): p.value for p in proto.metadata_props}
    arch = meta.get("architecture")
    if arch not in MODELS or MODELS[arch].role != "deblur":
        raise NeurmapError(f"{path}: its metadata names no known deblur architecture ({arch!r}); pass the PyTorch "
                           "weights to adapt (--adapt-opts weights=W)")
    if meta.get("precision", "fp32") not in ("fp32", "fp16"):
        raise NeurmapError(f"{path} is a {meta.get('precision')} graph: adapting it needs the fp32 PyTorch weights "
                           "(--adapt-opts weights=W) and re-quantization; not supported online")
    # the graph has the weights' value range folded in (net(x + o) - o); the export records which range
    rng = meta.get("net_input_range")
    if rng not in RANGE_OFFSETS:
        raise NeurmapError(f"{path}: its metadata does not record the value range its weights were trained in "
                           f"(neurmap.net_input_range={rng!r}); re-export it with `neurmap export --target onnx "
                           "--weights W`, or pass the PyTorch weights (--adapt-opts weights=W)")
    net = build_network(arch)
    index = {init.name: init for init in proto.graph.initializer}
    state = {}
    for k, v in net.state_dict().items():
        init = index.get("net." + k) or index.get(k)
        if init is None:
            raise NeurmapError(f"{path}: tensor {k} was folded or renamed by the export; pass the PyTorch weights "
                               "to adapt (--adapt-opts weights=W)")
        state[k] = torch.from_numpy(numpy_helper.to_array(init).astype(np.float32).copy())
    net.load_state_dict(state)
    return DeblurModel(net, rng, arch).eval()


class OrtSwap(HotSwap):
    """ONNX Runtime: patched initializers -> a new InferenceSession (built off the stream) -> pointer swap."""

    kind = "onnxruntime"

    def __init__(self, backend, onnx_path: str | Path, reference: dict[str, torch.Tensor] | None = None,
                 reexport: Optional[Callable[[dict], bytes]] = None) -> None:
        import onnx

        super().__init__(backend)
        self.path = Path(onnx_path)
        self.proto = onnx.load(str(self.path))
        self.reference = {k: v.detach().cpu().clone() for k, v in (reference or {}).items()}
        self.reexport = reexport
        self.reexports = 0

    def model_bytes(self, state) -> bytes:
        try:
            return patch_onnx_initializers(self.proto, state, self.reference).SerializeToString()
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
        providers = old.get_providers()
        opts = old.get_provider_options()
        sess = ort.InferenceSession(self.model_bytes(state), sess_options=so,
                                    providers=[(p, opts.get(p, {})) for p in providers])
        return sess

    def _apply(self, sess) -> None:
        self.backend.session = sess

    def stats(self) -> dict:
        return {**super().stats(), "reexports": self.reexports}


# ------------------------------------------------------------------------------------------------ TensorRT
class TensorRTSwap(HotSwap):
    """TensorRT: refit a REFIT engine from the patched ONNX between frames (``trt.OnnxParserRefitter``)."""

    kind = "tensorrt"

    def __init__(self, backend, onnx_path: str | Path, reference: dict[str, torch.Tensor] | None = None) -> None:
        import onnx

        engine = backend.engine
        if not getattr(engine, "refittable", False):
            raise NeurmapError("this TensorRT engine was built without the REFIT flag, so it cannot take new weights; "
                               "rebuild it with `neurmap export --target trt --weights W` (its engines are refittable) "
                               "or adapt offline with `neurmap adapt` and rebuild")
        super().__init__(backend)
        self.path = Path(onnx_path)
        self.proto = onnx.load(str(self.path))
        self.reference = {k: v.detach().cpu().clone() for k, v in (reference or {}).items()}

    def _prepare(self, state) -> bytes:
        try:
            return patch_onnx_initializers(self.proto, state, self.reference).SerializeToString()
        except KeyError as e:
            raise NeurmapError(f"{self.path}: the engine's ONNX has no initializer for a changed tensor ({e}); a "
                               "refit needs the exact ONNX the engine was built from") from None

    def _apply(self, model_bytes: bytes) -> None:
        trt = self.backend.trt
        refitter = trt.Refitter(self.backend.engine, self.backend.logger)
        parser = trt.OnnxParserRefitter(refitter, self.backend.logger)
        if not parser.refit_from_bytes(model_bytes):
            errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise NeurmapError(f"TensorRT refit from ONNX failed: {errs or 'see the TensorRT log'}")
        if not refitter.refit_cuda_engine():
            raise NeurmapError("TensorRT refit_cuda_engine failed; the engine keeps its previous weights")


def onnx_beside_engine(engine_path: str | Path) -> Optional[Path]:
    """The ONNX a TensorRT engine was built from: sidecar metadata ``onnx``/``source_onnx``, else ``<stem>.onnx``."""
    from .backends.base import sidecar_metadata

    p = Path(engine_path)
    meta = sidecar_metadata(p)
    for key in ("onnx", "source_onnx", "source"):
        v = meta.get(key)
        if v and str(v).endswith(".onnx"):
            q = Path(v) if Path(v).is_absolute() else p.parent / v
            if q.exists():
                return q
    q = p.with_suffix(".onnx")
    return q if q.exists() else None


# ------------------------------------------------------------------------------------------------ Core ML
class CoreMLSwap(HotSwap):
    """Core ML: re-convert the adapted model and load a new MLModel (prediction needs macOS)."""

    kind = "coreml"

    def __init__(self, backend, model: torch.nn.Module) -> None:
        super().__init__(backend)
        self.model = model

    def _prepare(self, state):
        try:
            from neurmap.export import coreml_export  # type: ignore[attr-defined]
        except ImportError:
            raise NeurmapError("Core ML hot swap needs the Core ML exporter (neurmap.export.coreml_export) and "
                               "macOS to load the result; adapt offline with `neurmap adapt` and re-export") from None
        import tempfile

        m = clone_model(self.model).cpu()
        m.net.load_state_dict(state)
        tmp = Path(tempfile.mkdtemp()) / "adapted.mlpackage"
        coreml_export.export_coreml(m, tmp)  # pragma: no cover - macOS only
        import coremltools as ct  # pragma: no cover
        return ct.models.MLModel(str(tmp))  # pragma: no cover

    def _apply(self, mlmodel) -> None:  # pragma: no cover - macOS only
        self.backend.model = mlmodel


def swapper_for(backend, artifact: str | Path, model: torch.nn.Module | None = None,
                onnx_path: str | Path | None = None) -> HotSwap:
    """The HotSwap for ``backend`` (by its ``name``)."""
    name = getattr(backend, "name", "")
    ref = model.net.state_dict() if model is not None else None
    if name == "torch":
        return TorchSwap(backend)
    if name == "onnxruntime":
        def reexport(state, model=model):
            return _reexport_bytes(model, state, artifact)
        return OrtSwap(backend, artifact, reference=ref, reexport=reexport if model is not None else None)
    if name == "tensorrt":
        src = Path(onnx_path) if onnx_path else onnx_beside_engine(artifact)
        if src is None:
            raise NeurmapError(f"{artifact}: refitting needs the ONNX the engine was built from; put it beside the "
                               "engine (same stem) or pass --adapt-opts onnx=PATH")
        return TensorRTSwap(backend, src, reference=ref)
    if name == "coreml":
        if model is None:
            raise NeurmapError("Core ML adaptation needs the PyTorch weights: --adapt-opts weights=W")
        return CoreMLSwap(backend, model)
    raise NeurmapError(f"no hot swap for the {name or type(backend).__name__} backend")


def _reexport_bytes(model, state, artifact) -> bytes:
    """Re-export the adapted model with the artifact's own shape/metadata (fallback when patching cannot)."""
    import tempfile

    import onnx

    from neurmap.export.onnx_export import export_onnx, read_artifact_metadata

    meta = read_artifact_metadata(artifact)
    m = clone_model(model).cpu()
    m.net.load_state_dict({k: v.cpu() for k, v in state.items()})
    shape = meta.get("shape", "N,3,H,W").split(",")
    dynamic = not shape[-1].isdigit()
    h = int(shape[2]) if not dynamic else None
    w = int(shape[3]) if not dynamic else None
    with tempfile.TemporaryDirectory() as d:
        p = export_onnx(m, Path(d) / "adapted.onnx", h, w, dynamic=dynamic, opset=int(meta.get("opset", 17)))
        proto = onnx.load(str(p))
    keep = {k: v for k, v in meta.items() if k not in ("weights_hash",)}
    from neurmap.export.onnx_export import set_metadata
    set_metadata(proto, {**keep, "adapted": "true"})
    return proto.SerializeToString()


# ------------------------------------------------------------------------------------------------ online worker
class OnlineAdapter:
    """Adapts while the stream runs: taps frames, runs guarded rounds in a thread, saves, hot-swaps.

    ``model``: the PyTorch weights of what the engine runs (a private copy is trained). ``every``: tap one
    frame in ``every``. A round starts once ``min_new`` new frames arrived since the last one (and the buffer
    holds held-out frames); ``duty`` < 1 sleeps after each step so adaptation takes at most that share of
    the time (the stream keeps the rest on a small CPU). Accepted weights are saved to ``out`` (atomically,
    with provenance) before they are swapped in."""

    def __init__(self, swapper: HotSwap, model: torch.nn.Module, motion: torch.nn.Module,
                 cfg: AdaptConfig | None = None, out: str | Path | None = None, every: int = 2,
                 min_new: int = 8, capacity: int = 24, duty: float = 1.0, max_rounds: Optional[int] = None,
                 provenance: dict | None = None, on_event: Callable[[str], None] = lambda m: None) -> None:
        self.cfg = cfg or AdaptConfig()
        self.swapper = swapper
        self.adapter = Adapter(clone_model(model), motion, self.cfg)
        self.motion = motion
        self.buffer = FrameBuffer(capacity=capacity)
        self.out = Path(out) if out else None
        self.every, self.min_new, self.duty = max(1, every), max(1, min_new), min(max(duty, 0.05), 1.0)
        self.max_rounds = max_rounds
        self.provenance = dict(provenance or {})
        self.on_event = on_event
        self.rounds: list[dict] = []
        self.error: Optional[str] = None
        self._count = 0
        self._seen_at_round = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.busy_s = 0.0
        swapper.taps.append(self.observe)
        self.thread = threading.Thread(target=self._loop, name="neurmap-adapt", daemon=True)
        self.thread.start()

    def observe(self, batch: np.ndarray) -> None:
        """Called with every batch the engine gets (inference thread): buffer one frame in ``every``."""
        if batch.size == 0 or float(batch[0].max()) == float(batch[0].min()):
            return                                   # warm-up / blank frames teach nothing
        self._count += 1
        if self._count % self.every:
            return
        try:
            self.buffer.add(batch[0])
        except NeurmapError:
            return
        if self.buffer.seen - self._seen_at_round >= self.min_new:
            self._wake.set()

    def _pause(self, step_s: float) -> None:
        if self.duty < 1.0:
            self._stop.wait(step_s * (1.0 - self.duty) / self.duty)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.2)
            if self._stop.is_set():
                break
            if not self._wake.is_set():
                continue
            self._wake.clear()
            train, held = self.buffer.snapshot()
            if not train or not held:
                continue
            self._seen_at_round = self.buffer.seen
            t0 = time.perf_counter()
            try:
                res = self.adapter.run_round(train, held, pause=self._pause)
            except Exception as e:  # noqa: BLE001 - adaptation must never take the stream down
                self.error = f"{type(e).__name__}: {e}"
                self.on_event(f"adaptation stopped: {self.error}")
                return
            self.busy_s += time.perf_counter() - t0
            info = res.as_dict()
            info["frame"] = self.swapper.frames
            if res.accepted:
                state = self.adapter.state()
                if self.out is not None:
                    prov = {**self.provenance, "adapted_online": True, "rounds_accepted": self.adapter.rounds,
                            "config": self.cfg.as_dict(), "last_round": {k: info[k] for k in ("steps", "before", "after")}}
                    save_adapted(self.out, self.adapter.G, self.motion, prov,
                                 original=self.provenance.get("base_weights"))
                    info["saved"] = str(self.out)
                self.swapper.submit(state)
                self.on_event(f"adaptation round {len(self.rounds) + 1}: accepted ({res.reason}); "
                              "new weights swapped in at the next frame")
            else:
                self.on_event(f"adaptation round {len(self.rounds) + 1}: rolled back ({res.reason})")
            self.rounds.append(info)
            if self.max_rounds is not None and len(self.rounds) >= self.max_rounds:
                break

    def close(self, timeout: float = 30.0) -> dict:
        """Stop (a round in progress ends after its current step and is rolled back); return a summary."""
        self._stop.set()
        self.adapter.stop_flag.set()
        self._wake.set()
        self.thread.join(timeout)
        self.swapper.detach()
        return {"rounds": len(self.rounds), "accepted": sum(r["accepted"] for r in self.rounds),
                "swaps": self.swapper.swaps, "frames_buffered": self.buffer.seen, "busy_s": round(self.busy_s, 2),
                "out": str(self.out) if self.out else None, "error": self.error, "swap": self.swapper.stats(),
                "config": self.cfg.as_dict(), "round_details": self.rounds}
