"""The one small interface every inference backend implements.

A backend turns an artifact (ONNX file, TensorRT engine, Core ML package, PyTorch checkpoint) into a
function ``infer(batch) -> batch`` on float32 NCHW RGB images in [0, 1], and says which input shapes it
accepts (:class:`InputSpec`). Everything else — colour conversion, padding, tiling, threading — lives
in the pipeline, so a new engine is one file with one class.

Backends import their engine library lazily (inside :meth:`Backend.load`), so a Jetson without
coremltools or a Mac without TensorRT still imports the package.
"""
from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np


@dataclass(frozen=True)
class InputSpec:
    """What an engine accepts.

    ``fixed_hw``: the only (H, W) a static-shape engine takes (frames of another size are padded or
    tiled by the pipeline); ``None`` when H and W are free. ``multiple``: H and W must be multiples of it
    (pad multiple). ``max_batch``: the largest N one ``infer`` call takes. ``min_hw``/``max_hw``: the
    range of a dynamic-shape engine (TensorRT optimisation profile), ``None`` when unbounded.
    """

    fixed_hw: Optional[tuple[int, int]] = None
    multiple: int = 1
    max_batch: int = 1
    min_hw: Optional[tuple[int, int]] = None
    max_hw: Optional[tuple[int, int]] = None
    metadata: dict = field(default_factory=dict, compare=False)
    #: the (H, W) an engine with enumerated shapes takes (Core ML ``EnumeratedShapes``); ``fixed_hw`` is its default
    shapes: tuple = ()

    def fit(self, h: int, w: int) -> Optional[tuple[int, int]]:
        """The fixed (H, W) to run an h x w frame at: the smallest enumerated shape that holds it (padded
        into it), else ``fixed_hw`` (frames are tiled to it); None when H and W are free."""
        fits = [s for s in self.shapes if s[0] >= h and s[1] >= w]
        if fits:
            return min(fits, key=lambda s: (s[0] * s[1], s))
        return self.fixed_hw

    def describe(self) -> str:
        shape = f"fixed {self.fixed_hw[0]}x{self.fixed_hw[1]}" if self.fixed_hw else "any HxW"
        if len(self.shapes) > 1:
            shape = "one of " + ", ".join(f"{h}x{w}" for h, w in self.shapes)
        rng = ""
        if self.min_hw or self.max_hw:
            rng = f" in {self.min_hw or '?'}..{self.max_hw or '?'}"
        return f"{shape}{rng}, multiple of {self.multiple}, batch <= {self.max_batch}"


class Backend(ABC):
    """load(artifact) once, then infer(batch) per frame (or per batch of tiles)."""

    #: short name shown in the status line and the JSON summary
    name: str = "backend"
    #: the pip extra (or install hint) named when the engine library is missing
    install_hint: str = ""

    def __init__(self, **options) -> None:
        self.options = options
        self.spec = InputSpec()
        self.device = "cpu"

    @abstractmethod
    def load(self, artifact: Path) -> None:
        """Open ``artifact``; set :attr:`spec` (and :attr:`device`). Raise NeurmapError on a bad file."""

    @abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """float32 (N, 3, H, W) in [0, 1], H/W allowed by :attr:`spec` -> float32 (N, 3, H, W)."""

    def warmup(self, height: int, width: int) -> None:
        """Run once at a given input size so the first real frame does not pay for lazy initialisation."""
        h, w = self.spec.fit(height, width) or (_round_up(height, self.spec.multiple),
                                                _round_up(width, self.spec.multiple))
        self.infer(np.zeros((1, 3, h, w), np.float32))

    def close(self) -> None:
        """Release engine resources (GPU buffers, sessions). Safe to call twice."""

    def describe(self) -> str:
        return f"{self.name} on {self.device} ({self.spec.describe()})"

    def swapper(self, artifact: Path, model: Any = None, source_onnx: Optional[Path] = None) -> "HotSwap":
        """The :class:`HotSwap` that puts adapted weights into this engine (``model``: the PyTorch weights it
        was built from; ``source_onnx``: the ONNX a TensorRT engine was built from)."""
        from neurmap.core.errors import NeurmapError

        raise NeurmapError(f"no hot swap for the {self.name} backend")


def _round_up(v: int, m: int) -> int:
    return -(-v // max(m, 1)) * max(m, 1)


def missing_engine(library: str, hint: str) -> Exception:
    """The one-line message for an engine library that is not installed."""
    from neurmap.core.errors import NeurmapError

    return NeurmapError(f"this artifact needs {library}, which is not installed; {hint}")


def sidecar_metadata(artifact: Path) -> dict:
    """``<artifact>.json`` (or ``<stem>.json``) written beside engines that cannot hold metadata themselves
    (TensorRT plans, some Core ML packages), with any ``neurmap.`` prefix removed; {} when absent."""
    import json

    artifact = Path(artifact)
    for p in (Path(str(artifact) + ".json"), artifact.with_suffix(".json")):
        if p.is_file():
            try:
                meta = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(meta, dict):
                return {str(k).removeprefix("neurmap."): v for k, v in meta.items()}
    return {}


def metadata_int(meta: dict, key: str, default: int) -> int:
    try:
        return max(1, int(meta.get(key, default)))
    except (TypeError, ValueError):
        return default


class HotSwap:
    """Wraps ``backend.infer``; :meth:`submit` queues an update that the next ``infer`` call applies first.

    An update is *prepared* in the adaptation thread (the slow part: a new session, a patched ONNX, copies
    of tensors) and *applied* by the inference thread at the start of its next ``infer`` call, so no frame
    ever sees half-old, half-new weights and the stream never stops. A swap that fails (in either part)
    leaves the previous weights serving, is counted and reported through ``on_event``: adaptation never
    takes a stream down. Each backend file holds its subclass."""

    kind = "base"

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.lock = threading.Lock()          # guards ``pending`` only: a submit never waits for a frame
        self.pending: Any = None
        self.swaps = 0
        self.frames = 0
        self.failures = 0
        self.last_error: Optional[str] = None
        self.on_event: Callable[[str], None] = lambda msg: None
        self.apply_ms: list[float] = []
        self.taps: list[Callable[[np.ndarray], None]] = []
        self._infer = backend.infer
        backend.infer = self.infer             # instance attribute: the pipeline calls this one

    def infer(self, batch: np.ndarray) -> np.ndarray:
        with self.lock:
            update, self.pending = self.pending, None
        if update is not None:
            t0 = time.perf_counter()
            try:
                self._apply(update)
            except Exception as e:  # noqa: BLE001 - a failed swap keeps the old weights; the stream goes on
                self._failed("apply", e)
            else:
                self.apply_ms.append((time.perf_counter() - t0) * 1000)
                self.swaps += 1
        y = self._infer(batch)
        self.frames += 1
        for tap in self.taps:
            tap(batch)
        return y

    def _failed(self, stage: str, e: Exception) -> None:
        self.failures += 1
        self.last_error = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        self.on_event(f"{self.kind} weight swap failed ({stage}: {self.last_error}); serving the previous weights")

    def submit(self, state: dict) -> bool:
        """Prepare ``state`` (the adapted net's state dict) here, apply it before the next frame. False (and
        reported) when it cannot be prepared; the engine keeps its weights."""
        try:
            prepared = self._prepare(state)
        except Exception as e:  # noqa: BLE001 - see the class docstring
            self._failed("prepare", e)
            return False
        with self.lock:
            self.pending = prepared
        return True

    def swap_now(self, state: dict) -> None:
        """Prepare and apply at once (no stream running: offline use, tests); raises when it fails."""
        self._apply(self._prepare(state))
        self.swaps += 1

    def detach(self) -> None:
        if self.backend.__dict__.get("infer") == self.infer:
            del self.backend.infer

    def stats(self) -> dict:
        ms = self.apply_ms
        return {"engine": self.kind, "swaps": self.swaps, "pending": self.pending is not None,
                "failures": self.failures, "last_error": self.last_error,
                "apply_ms_max": round(max(ms), 2) if ms else None,
                "apply_ms_mean": round(sum(ms) / len(ms), 2) if ms else None}

    # -- per engine --
    def _prepare(self, state: dict) -> Any:
        raise NotImplementedError

    def _apply(self, prepared: Any) -> None:
        raise NotImplementedError
