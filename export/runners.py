"""Run any of our artifacts on numpy batches, with the padding the artifact's metadata asks for.

Used by parity checks, ``neurmap check`` and ``neurmap bench``. TensorRT and Core ML run through the one
runner of each (:class:`.trt_runtime.TRTRunner`, :class:`.coreml.CoreMLPredictor`), which the video runtime's
backends wrap too (export never imports ``edge_runtime``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from neurmap.core.errors import NeurmapError

from .onnx_export import read_artifact_metadata


def artifact_kind(path: str | Path) -> str:
    p = Path(path)
    if p.suffix == ".onnx":
        return "onnx"
    if p.suffix in (".engine", ".plan", ".trt"):
        return "trt"
    if p.suffix in (".mlpackage", ".mlmodel"):
        return "coreml"
    raise NeurmapError(f"{p}: unknown artifact type (expected .onnx, .engine or .mlpackage)")


def static_hw(meta: dict) -> tuple[int, int] | None:
    """(H, W) of a static artifact, None when H/W are dynamic or several shapes are enumerated."""
    s = meta.get("shape", "")
    if ";" in s or "H" in s or not s:
        return None
    parts = s.split(",")
    return (int(parts[2]), int(parts[3])) if len(parts) == 4 else None


def raw_runner(path: str | Path, threads: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """The artifact's own forward: (N,3,H,W) float32 in, same out; no padding."""
    kind = artifact_kind(path)
    if kind == "onnx":
        from .onnx_export import onnx_session

        sess = onnx_session(path, threads=threads)
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]
    if kind == "trt":
        from .trt import TRTRunner

        return TRTRunner(path)
    from .coreml import CoreMLPredictor

    return CoreMLPredictor(path)


def padded_runner(path: str | Path, threads: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """A runner taking any H x W: reflect-pads to the pad multiple (static artifacts: must fit their shape)."""
    from neurmap.core.models.wrapper import pad_to_multiple

    meta = read_artifact_metadata(path)
    mult = int(meta.get("pad_multiple", "1"))
    fixed = static_hw(meta)
    run = raw_runner(path, threads)

    def call(x: np.ndarray) -> np.ndarray:
        h, w = x.shape[-2:]
        if fixed is not None:
            if (h, w) == fixed:
                return run(x)
            if h > fixed[0] or w > fixed[1]:
                raise NeurmapError(f"{Path(path).name} is built for {fixed[0]}x{fixed[1]}; frame is {h}x{w} — export "
                                   "with that --shape or --dynamic")
            t = torch.from_numpy(np.ascontiguousarray(x))
            ph, pw = fixed[0] - h, fixed[1] - w
            mode = "reflect" if ph < h and pw < w else "replicate"
            t = torch.nn.functional.pad(t, (0, pw, 0, ph), mode=mode)
            return run(t.numpy())[..., :h, :w]
        t, (h0, w0) = pad_to_multiple(torch.from_numpy(np.ascontiguousarray(x)), mult)
        return run(t.numpy())[..., :h0, :w0]
    return call
