"""TensorRT backend (TensorRT 10 API): deserialize an engine, set the input shape, ``execute_async_v3``.

Device memory comes from torch CUDA tensors when this Python has a CUDA build of torch (NVIDIA's Jetson
wheels), otherwise from cuda-python (``pip install neurmap-edge[tensorrt]``). Buffers are kept per input
shape, so a steady stream allocates once.

TensorRT engines carry no metadata of ours: the pad multiple of a dynamic-shape engine is read from a
sidecar ``<engine>.json`` (as ``neurmap export`` writes it) (``{"pad_multiple": 8, ...}``) when present, else a safe 16 is used.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Backend, HotSwap, InputSpec, metadata_int, missing_engine, sidecar_metadata

DEFAULT_MULTIPLE = 16


class _TorchCuda:
    """Device buffers as torch CUDA tensors; the stream is torch's current one."""

    def __init__(self) -> None:
        import torch
        self.torch = torch
        self.stream = torch.cuda.Stream()

    def empty(self, shape, dtype):
        return self.torch.empty(tuple(shape), dtype=getattr(self.torch, np.dtype(dtype).name), device="cuda")

    @staticmethod
    def ptr(buf) -> int:
        return int(buf.data_ptr())

    def upload(self, buf, host: np.ndarray) -> None:
        with self.torch.cuda.stream(self.stream):
            buf.copy_(self.torch.from_numpy(host), non_blocking=False)

    def download(self, buf) -> np.ndarray:
        self.stream.synchronize()
        return buf.cpu().numpy()

    @property
    def handle(self) -> int:
        return int(self.stream.cuda_stream)

    def sync(self) -> None:
        self.stream.synchronize()

    def free(self, buf) -> None:
        del buf


class _CudaPython:
    """Device buffers through cuda-python's runtime API (cudaMalloc / cudaMemcpyAsync)."""

    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
        except ImportError:
            from cuda import cudart  # older cuda-python
        self.rt = cudart
        self.stream_ = self._check(cudart.cudaStreamCreate())

    def _check(self, result):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            from neurmap.core.errors import NeurmapError
            raise NeurmapError(f"CUDA call failed: {err}")
        return rest[0] if len(rest) == 1 else (rest or None)

    def empty(self, shape, dtype):
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return (self._check(self.rt.cudaMalloc(nbytes)), tuple(shape), np.dtype(dtype))

    @staticmethod
    def ptr(buf) -> int:
        return int(buf[0])

    def upload(self, buf, host: np.ndarray) -> None:
        host = np.ascontiguousarray(host, dtype=buf[2])
        self._check(self.rt.cudaMemcpyAsync(buf[0], host.ctypes.data, host.nbytes,
                                            self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream_))
        self.sync()  # ``host`` must outlive the copy

    def download(self, buf) -> np.ndarray:
        out = np.empty(buf[1], buf[2])
        self._check(self.rt.cudaMemcpyAsync(out.ctypes.data, buf[0], out.nbytes,
                                            self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream_))
        self.sync()
        return out

    @property
    def handle(self) -> int:
        return int(self.stream_)

    def sync(self) -> None:
        self._check(self.rt.cudaStreamSynchronize(self.stream_))

    def free(self, buf) -> None:
        self.rt.cudaFree(buf[0])


def _device_memory():
    try:
        import torch
        if torch.cuda.is_available():
            return _TorchCuda()
    except ImportError:
        pass
    try:
        return _CudaPython()
    except ImportError:
        raise missing_engine("cuda-python (or a CUDA build of torch)", "pip install 'neurmap-edge[tensorrt]'") from None


class TensorRTBackend(Backend):
    name = "tensorrt"
    install_hint = ("on Jetson use JetPack's TensorRT (system Python); on x86 pip install 'neurmap-edge[tensorrt]'")

    def load(self, artifact: Path) -> None:
        try:
            import tensorrt as trt
        except ImportError:
            raise missing_engine("tensorrt", self.install_hint) from None
        from neurmap.core.errors import NeurmapError

        self.trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(artifact).read_bytes())
        if self.engine is None:
            raise NeurmapError(f"{artifact}: TensorRT {trt.__version__} cannot deserialize it — engines only load "
                               "with the TensorRT version and GPU they were built on; rebuild it here with "
                               "`neurmap export --target trt --weights W`")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        ins = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(ins) != 1 or not outs:
            raise NeurmapError(f"{artifact}: expected one image input and an output, found inputs {ins}, outputs {outs}")
        self.input_name = ins[0]
        self.output_name = "sharp" if "sharp" in outs else outs[0]
        self.in_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.input_name)))
        self.out_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.output_name)))
        shape = tuple(self.engine.get_tensor_shape(self.input_name))
        meta = sidecar_metadata(Path(artifact))
        if all(v > 0 for v in shape):
            fixed, max_batch, min_hw, max_hw = shape[2:], shape[0], None, None
            self.fixed_batch = True
        else:
            mn, _opt, mx = (tuple(s) for s in self.engine.get_tensor_profile_shape(self.input_name, 0))
            fixed = shape[2:] if all(v > 0 for v in shape[2:]) else None
            max_batch = shape[0] if shape[0] > 0 else mx[0]
            min_hw, max_hw = (mn[2], mn[3]), (mx[2], mx[3])
            self.fixed_batch = shape[0] > 0
        multiple = 1 if fixed else metadata_int(meta, "pad_multiple", DEFAULT_MULTIPLE)
        self.spec = InputSpec(fixed_hw=tuple(int(v) for v in fixed) if fixed else None, multiple=multiple,
                              max_batch=int(max_batch), min_hw=min_hw, max_hw=max_hw, metadata=meta)
        self.mem = _device_memory()
        self.buffers: dict[tuple, tuple] = {}
        self.device = "cuda"

    def _buffers(self, shape: tuple) -> tuple:
        if shape not in self.buffers:
            for bufs in self.buffers.values():  # one shape at a time keeps memory flat on small devices
                for b in bufs:
                    self.mem.free(b)
            self.buffers.clear()
            if not self.context.set_input_shape(self.input_name, shape):
                from neurmap.core.errors import NeurmapError
                raise NeurmapError(f"TensorRT engine rejects input shape {shape} (profile {self.spec.describe()})")
            out_shape = tuple(self.context.get_tensor_shape(self.output_name))
            self.buffers[shape] = (self.mem.empty(shape, self.in_dtype), self.mem.empty(out_shape, self.out_dtype))
        return self.buffers[shape]

    def infer(self, batch: np.ndarray) -> np.ndarray:
        n = batch.shape[0]
        x = np.ascontiguousarray(batch, dtype=self.in_dtype)
        if self.fixed_batch and n < self.spec.max_batch:
            x = np.concatenate([x, np.repeat(x[-1:], self.spec.max_batch - n, axis=0)])
        inp, out = self._buffers(tuple(x.shape))
        self.context.set_input_shape(self.input_name, tuple(x.shape))
        self.mem.upload(inp, x)
        self.context.set_tensor_address(self.input_name, self.mem.ptr(inp))
        self.context.set_tensor_address(self.output_name, self.mem.ptr(out))
        if not self.context.execute_async_v3(self.mem.handle):
            from neurmap.core.errors import NeurmapError
            raise NeurmapError("TensorRT execute_async_v3 failed; see the TensorRT log above")
        y = self.mem.download(out)
        return np.asarray(y[:n], dtype=np.float32)

    def close(self) -> None:
        for bufs in getattr(self, "buffers", {}).values():
            for b in bufs:
                self.mem.free(b)
        self.buffers = {}
        self.context = self.engine = None

    def swapper(self, artifact, model=None, source_onnx=None) -> "TensorRTSwap":
        from neurmap.core.errors import NeurmapError

        ref = model.net.state_dict() if model is not None else None
        src = Path(source_onnx) if source_onnx else onnx_beside_engine(artifact)
        if src is None:
            raise NeurmapError(f"{artifact}: refitting needs the ONNX the engine was built from; put it beside the "
                               "engine (same stem) or pass --adapt-opts onnx=PATH")
        return TensorRTSwap(self, src, reference=ref)


class TensorRTSwap(HotSwap):
    """TensorRT: refit a REFIT engine from the patched ONNX between frames (``trt.OnnxParserRefitter``)."""

    kind = "tensorrt"

    def __init__(self, backend, onnx_path, reference=None) -> None:
        import onnx

        from neurmap.core.errors import NeurmapError

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
        from neurmap.core.errors import NeurmapError
        from neurmap.export.onnx_weights import patch_onnx_initializers

        try:
            return patch_onnx_initializers(self.proto, state, self.reference).SerializeToString()
        except KeyError as e:
            raise NeurmapError(f"{self.path}: the engine's ONNX has no initializer for a changed tensor ({e}); a "
                               "refit needs the exact ONNX the engine was built from") from None

    def _apply(self, model_bytes: bytes) -> None:
        from neurmap.core.errors import NeurmapError

        trt = self.backend.trt
        refitter = trt.Refitter(self.backend.engine, self.backend.logger)
        parser = trt.OnnxParserRefitter(refitter, self.backend.logger)
        if not parser.refit_from_bytes(model_bytes):
            errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise NeurmapError(f"TensorRT refit from ONNX failed: {errs or 'see the TensorRT log'}")
        if not refitter.refit_cuda_engine():
            raise NeurmapError("TensorRT refit_cuda_engine failed; the engine keeps its previous weights")


def onnx_beside_engine(engine_path) -> "Path | None":
    """The ONNX a TensorRT engine was built from: sidecar metadata ``onnx``/``source_onnx``, else ``<stem>.onnx``."""
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
