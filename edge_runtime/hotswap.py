"""Online adaptation while a stream runs, and the way its weights reach the engine.

:class:`OnlineAdapter` is the background worker of ``neurmap run --adapt``: it taps the frames the
engine sees into a :class:`~.adaptation.FrameBuffer`, runs guarded rounds on a private PyTorch copy, saves
every accepted update atomically (never over the original), and hands it to the backend's swapper.

Each backend's weight swap lives beside it (``backends/<engine>.py``, a :class:`~.backends.base.HotSwap`
returned by ``Backend.swapper``): PyTorch ``load_state_dict``; ONNX Runtime a new session from patched
initializers; TensorRT a refit of a REFIT engine; Core ML a re-conversion.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from neurmap.core.errors import NeurmapError
from neurmap.export.onnx_weights import model_from_onnx, patch_onnx_initializers  # noqa: F401 - re-exported

from .adaptation import AdaptConfig, Adapter, FrameBuffer, clone_model, save_adapted
from .backends.base import HotSwap
from .backends.coreml import CoreMLSwap  # noqa: F401 - re-exported
from .backends.onnxruntime import OrtSwap  # noqa: F401 - re-exported
from .backends.tensorrt import TensorRTSwap  # noqa: F401 - re-exported
from .backends.torch import TorchSwap  # noqa: F401 - re-exported


def swapper_for(backend, artifact: str | Path, model: torch.nn.Module | None = None,
                onnx_path: str | Path | None = None) -> HotSwap:
    """The HotSwap for ``backend`` (its own ``swapper``)."""
    if not hasattr(backend, "swapper"):
        raise NeurmapError(f"no hot swap for the {getattr(backend, 'name', '') or type(backend).__name__} backend")
    return backend.swapper(Path(artifact), model, Path(onnx_path) if onnx_path else None)


# ------------------------------------------------------------------------------------------------ online worker
class OnlineAdapter:
    """Adapts while the stream runs: taps frames, runs guarded rounds in a thread, saves, hot-swaps.

    ``model``: the PyTorch weights of what the engine runs (a private copy is trained). ``every``: tap one
    frame in ``every``. A round starts once ``min_new`` new frames arrived since the last one (and the buffer
    holds held-out frames); ``duty`` < 1 sleeps after each step so adaptation takes at most that share of
    the time (the stream keeps the rest on a small CPU). Accepted weights are saved to ``out`` (atomically,
    with provenance) before they are swapped in.

    ``stream``: a :class:`~.stream_adapt.StreamBuffer` the pipeline's capture feeds (a video, ordered frames
    or a camera): rounds are then :class:`~.stream_adapt.StreamAdapter` rounds on frames with their
    neighbours' flow (``cfg.motion_source``; M is adapted too for m / fused and saved with G). Without it,
    one engine batch in ``every`` is tapped and rounds are the single-image path's."""

    def __init__(self, swapper: HotSwap, model: torch.nn.Module, motion: torch.nn.Module,
                 cfg: AdaptConfig | None = None, out: str | Path | None = None, every: int = 2,
                 min_new: int = 8, capacity: int = 24, duty: float = 1.0, max_rounds: Optional[int] = None,
                 provenance: dict | None = None, on_event: Callable[[str], None] = lambda m: None,
                 stream=None) -> None:
        self.cfg = cfg or AdaptConfig()
        self.swapper = swapper
        self.stream = stream
        if stream is None:
            self.adapter = Adapter(clone_model(model), motion, self.cfg)
            self.buffer = FrameBuffer(capacity=capacity)
            swapper.taps.append(self.observe)
        else:
            from .stream_adapt import StreamAdapter

            own_m = self.cfg.motion_source != "flow"
            self.adapter = StreamAdapter(clone_model(model), self.cfg, clone_model(motion) if own_m else None)
            self.buffer = stream
            stream.on_item = self._check_new
        self.motion = self.adapter.M if self.adapter.M is not None else motion    # saved with G
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
        swapper.on_event = on_event          # a failed swap is reported; the stream keeps the old weights
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
        self._check_new()

    def _check_new(self) -> None:
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
                    if self.stream is not None:
                        prov.update(mode="stream", motion_source=self.cfg.motion_source, stream=self.stream.stats(),
                                    motion_round=info["motion"])
                    save_adapted(self.out, self.adapter.G, self.motion, prov,
                                 original=self.provenance.get("base_weights"))
                    info["saved"] = str(self.out)
                info["swapped"] = self.swapper.submit(state)
                if info["swapped"]:
                    self.on_event(f"adaptation round {len(self.rounds) + 1}: accepted ({res.reason}); "
                                  "new weights swapped in at the next frame")
                else:
                    self.on_event(f"adaptation round {len(self.rounds) + 1}: accepted ({res.reason}) but not "
                                  f"swapped in ({self.swapper.last_error}); the engine serves the previous weights")
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
        out = {"rounds": len(self.rounds), "accepted": sum(r["accepted"] for r in self.rounds),
               "swaps": self.swapper.swaps, "frames_buffered": self.buffer.seen, "busy_s": round(self.busy_s, 2),
               "out": str(self.out) if self.out else None, "error": self.error, "swap": self.swapper.stats(),
               "config": self.cfg.as_dict(), "round_details": self.rounds,
               "mode": "single" if self.stream is None else "stream"}
        if self.stream is not None:
            self.stream.close()
            out["stream"] = self.stream.stats()
        return out
