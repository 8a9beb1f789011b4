"""The one TensorRT runner: deserialize an engine, set the input shape, ``execute_async_v3`` (TensorRT 10 API).

Used by ``neurmap check``/``bench`` (export's runners) and by the video runtime's TensorRT backend. Device
memory comes from torch CUDA tensors when this Python has a CUDA build of torch (NVIDIA's Jetson wheels),
otherwise from cuda-python (``pip install neurmap-edge[tensorrt]``). Buffers are kept per input shape, so a
steady stream allocates once. ``lock`` is held for each execution: a refit from another thread waits for the
frame in flight and never runs beside one.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from neurmap.core.errors import NeurmapError


class _TorchCuda:
    """Device buffers as torch CUDA tensors on a private stream."""

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


def device_memory():
    """torch CUDA buffers when torch has CUDA, else cuda-python's; a one-line error when neither."""
    try:
        import torch
        if torch.cuda.is_available():
            return _TorchCuda()
    except ImportError:
        pass
    try:
        return _CudaPython()
    except ImportError:
        raise NeurmapError("this TensorRT engine needs cuda-python (or a CUDA build of torch), which is not "
                           "installed; pip install 'neurmap-edge[tensorrt]'") from None


class TRTRunner:
    """Runs an engine on float32 numpy batches: ``runner(x) -> y`` (one input, output ``sharp`` or the first).

    Facts for a caller's input spec: ``fixed_hw`` (static engines), ``max_batch``, ``fixed_batch``,
    ``min_hw``/``max_hw`` (the optimisation profile)."""

    def __init__(self, engine_path: str | Path) -> None:
        from .trt import load_engine

        self.path = Path(engine_path)
        self.engine, self.side, self.trt, self.logger = load_engine(self.path)
        trt = self.trt
        self.lock = threading.Lock()
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        ins = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(ins) != 1 or not outs:
            raise NeurmapError(f"{self.path}: expected one image input and an output, found inputs {ins}, "
                               f"outputs {outs}")
        self.input_name = ins[0]
        self.output_name = "sharp" if "sharp" in outs else outs[0]
        self.in_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.input_name)))
        self.out_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.output_name)))
        shape = tuple(self.engine.get_tensor_shape(self.input_name))
        self.min_hw = self.max_hw = None
        if all(v > 0 for v in shape):
            self.fixed_hw, self.max_batch, self.fixed_batch = (int(shape[2]), int(shape[3])), int(shape[0]), True
        else:
            mn, _opt, mx = (tuple(s) for s in self.engine.get_tensor_profile_shape(self.input_name, 0))
            self.fixed_hw = (int(shape[2]), int(shape[3])) if all(v > 0 for v in shape[2:]) else None
            self.max_batch = int(shape[0] if shape[0] > 0 else mx[0])
            self.min_hw, self.max_hw = (int(mn[2]), int(mn[3])), (int(mx[2]), int(mx[3]))
            self.fixed_batch = shape[0] > 0
        self.mem = device_memory()
        self.buffers: dict[tuple, tuple] = {}

    def _buffers(self, shape: tuple) -> tuple:
        if shape not in self.buffers:
            for bufs in self.buffers.values():  # one shape at a time keeps memory flat on small devices
                for b in bufs:
                    self.mem.free(b)
            self.buffers.clear()
            if not self.context.set_input_shape(self.input_name, shape):
                raise NeurmapError(f"TensorRT engine rejects input shape {shape} (profile {self.min_hw}..{self.max_hw})")
            out_shape = tuple(self.context.get_tensor_shape(self.output_name))
            self.buffers[shape] = (self.mem.empty(shape, self.in_dtype), self.mem.empty(out_shape, self.out_dtype))
        return self.buffers[shape]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        n = batch.shape[0]
        x = np.ascontiguousarray(batch, dtype=self.in_dtype)
        if self.fixed_batch and n < self.max_batch:
            x = np.concatenate([x, np.repeat(x[-1:], self.max_batch - n, axis=0)])
        with self.lock:
            inp, out = self._buffers(tuple(x.shape))
            self.context.set_input_shape(self.input_name, tuple(x.shape))
            self.mem.upload(inp, x)
            self.context.set_tensor_address(self.input_name, self.mem.ptr(inp))
            self.context.set_tensor_address(self.output_name, self.mem.ptr(out))
            if not self.context.execute_async_v3(self.mem.handle):
                raise NeurmapError("TensorRT execute_async_v3 failed; see the TensorRT log above")
            y = self.mem.download(out)
        return np.asarray(y[:n], dtype=np.float32)

    def close(self) -> None:
        for bufs in self.buffers.values():
            for b in bufs:
                self.mem.free(b)
        self.buffers = {}
        self.context = self.engine = None
