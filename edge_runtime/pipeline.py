"""capture -> preprocess -> inference -> postprocess -> sink, one thread per stage, bounded queues.

* ``offline``: every frame, in order; full queues block the stage before them (back-pressure to the decoder).
* ``realtime``: the queues in front of inference hold only the newest frame; an older one waiting there is
  dropped (counted), so latency stays about one inference long however slow the engine is. Frames that
  went through the engine are never dropped.

Decode, colour conversion, padding, cropping and encoding run beside inference in their own threads
(OpenCV, NumPy and the engines release the GIL), so the stream runs at the engine's speed.

Frames are normalised here whatever the source gives: BGR/BGRA/gray, uint8/uint16/float, any size. A
fixed-shape engine gets smaller frames padded up and larger ones tiled (:mod:`.tiling`); a dynamic one gets
frames padded to its multiple. A frame that cannot be used (e.g. 2 or 5 channels) is rejected with a
message and counted, never a traceback. ``stop()`` (Ctrl-C / SIGTERM) stops the capture, lets the frames in
flight finish, and closes the sink, so the output is always a complete, playable file.
"""
from __future__ import annotations

import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from neurmap.core.errors import NeurmapError

from .backends.base import Backend, InputSpec
from .metrics import Metrics
from .sinks import Sink, side_by_side
from .sources import Source
from .tiling import run_tiled

END = object()
Event = Callable[[str], None]


class Rejected(Exception):
    """A frame the pipeline cannot use; the message says why."""


@dataclass
class RunConfig:
    realtime: bool = False
    rate: Optional[float] = None          # pace the capture at this many frames/s (files as if live)
    max_frames: Optional[int] = None
    compare: bool = False                 # sink gets input | output side by side
    overlap: int = 32                     # tile overlap in pixels
    tile: Optional[tuple[int, int]] = None  # force tiling of dynamic engines at this (H, W)
    queue_size: int = 4                   # offline queue depth between stages
    warmup: bool = True


@dataclass
class Item:
    index: int
    name: str
    raw: Any
    t_capture: float
    x: Optional[np.ndarray] = None
    hw: tuple[int, int] = (0, 0)
    bit16: bool = False
    tile: Optional[tuple[int, int]] = None
    y: Optional[np.ndarray] = None
    out: Optional[np.ndarray] = None


# ---- frame normalisation -----------------------------------------------------------------------------------
def to_rgb_float(frame: np.ndarray) -> tuple[np.ndarray, bool]:
    """OpenCV frame (H,W), (H,W,1|3|4) BGR[A] uint8/uint16/float -> float32 (3,H,W) RGB in [0,1], is_16bit."""
    a = np.asarray(frame)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.size == 0 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise Rejected(f"frame of shape {a.shape} is not an image (expected HxW gray, HxWx3 BGR or HxWx4 BGRA)")
    if a.dtype == np.uint8:
        scale = 1.0 / 255.0
    elif a.dtype == np.uint16:
        scale = 1.0 / 65535.0
    elif np.issubdtype(a.dtype, np.floating):
        a = np.nan_to_num(a.astype(np.float32, copy=False), nan=0.0, posinf=1.0, neginf=0.0)
        scale = None
    else:
        raise Rejected(f"frame of dtype {a.dtype} is not supported (8-bit, 16-bit or float images)")
    h, w = a.shape[:2]
    x = np.empty((3, h, w), np.float32)
    for c in range(3):
        src = a if a.ndim == 2 else a[:, :, 2 - c]   # BGR(A) -> RGB, gray -> three equal channels
        if scale is None:
            np.clip(src, 0.0, 1.0, out=x[c])
        else:
            np.multiply(src, np.float32(scale), out=x[c], casting="unsafe")
    return x, a.dtype == np.uint16


def to_bgr(x: np.ndarray, bit16: bool = False) -> np.ndarray:
    """float (3,H,W) RGB in [0,1] -> (H,W,3) BGR uint8 (uint16 with ``bit16``), rounded."""
    peak = 65535.0 if bit16 else 255.0
    hwc = np.empty(x.shape[1:] + (3,), np.uint16 if bit16 else np.uint8)
    tmp = np.empty(x.shape[1:], np.float32)
    for c in range(3):
        np.clip(x[2 - c], 0.0, 1.0, out=tmp)
        np.nan_to_num(tmp, copy=False, nan=0.0)    # an engine that returns NaN gives black, not garbage
        tmp *= peak
        tmp += 0.5
        hwc[:, :, c] = tmp          # truncation after +0.5 = rounding
    return hwc


def _round_up(v: int, m: int) -> int:
    return -(-v // max(m, 1)) * max(m, 1)


def plan_shape(h: int, w: int, spec: InputSpec, tile: Optional[tuple[int, int]] = None
               ) -> tuple[tuple[int, int], Optional[tuple[int, int]]]:
    """(padded (H, W), tile (th, tw) or None) for an h x w frame on an engine with ``spec``."""
    if spec.fixed_hw:
        th, tw = spec.fit(h, w)     # enumerated shapes: the smallest that holds the frame
        H, W = max(h, th), max(w, tw)
        return (H, W), ((th, tw) if (H, W) != (th, tw) else None)
    m = spec.multiple
    H, W = _round_up(h, m), _round_up(w, m)
    if spec.min_hw:
        H, W = max(H, _round_up(spec.min_hw[0], m)), max(W, _round_up(spec.min_hw[1], m))
    limit = tile
    if spec.max_hw and (H > spec.max_hw[0] or W > spec.max_hw[1]):
        mh, mw = (spec.max_hw[0] // m) * m, (spec.max_hw[1] // m) * m
        limit = (min(mh, limit[0]), min(mw, limit[1])) if limit else (mh, mw)
    if limit and (H > limit[0] or W > limit[1]):
        th, tw = min(_round_up(limit[0], m), H), min(_round_up(limit[1], m), W)
        return (H, W), (th, tw)
    return (H, W), None


def pad_to(x: np.ndarray, H: int, W: int) -> np.ndarray:
    _, h, w = x.shape
    if (h, w) == (H, W):
        return x
    mode = "reflect" if H - h < h and W - w < w else "edge"
    return np.pad(x, ((0, 0), (0, H - h), (0, W - w)), mode=mode)


# ---- queues ------------------------------------------------------------------------------------------------
class LatestQueue:
    """Holds at most ``maxsize`` frames; putting a frame into a full one drops the oldest. END never drops a
    frame (the newest frame of a finished source still gets processed) and is never dropped."""

    def __init__(self, maxsize: int, on_drop: Callable[[Any], None]) -> None:
        self.items: deque = deque()
        self.cond = threading.Condition()
        self.maxsize, self.on_drop = maxsize, on_drop

    def put(self, item: Any) -> None:
        with self.cond:
            while item is not END and len(self.items) >= self.maxsize and self.items[0] is not END:
                self.on_drop(self.items.popleft())
            self.items.append(item)
            self.cond.notify()

    def get(self) -> Any:
        with self.cond:
            while not self.items:
                self.cond.wait()
            return self.items.popleft()


# ---- the pipeline ------------------------------------------------------------------------------------------
class Pipeline:
    def __init__(self, source: Source, backend: Backend, sink: Sink, config: RunConfig | None = None,
                 on_event: Event = lambda m: None, metrics: Metrics | None = None) -> None:
        self.source, self.backend, self.sink = source, backend, sink
        self.cfg = config or RunConfig()
        self.on_event = on_event
        self.metrics = metrics or Metrics()
        self.stop_event = threading.Event()   # stop capturing, finish what is in flight
        self.abort = threading.Event()        # skip remaining pre-processing/inference too
        self.error: Optional[BaseException] = None
        self.error_stage = ""
        self.stop_reason: Optional[str] = None
        self.rejections: dict[str, int] = {}
        self.last_hw: Optional[tuple[int, int]] = None
        self.size_changes = 0
        self.tiled_frames = 0
        n = max(1, self.cfg.queue_size)
        if self.cfg.realtime:
            drop = lambda item: self.metrics.count("dropped")  # noqa: E731
            self.q_pre, self.q_infer = LatestQueue(1, drop), LatestQueue(1, drop)
        else:
            self.q_pre, self.q_infer = queue.Queue(n), queue.Queue(n)
        self.q_post, self.q_sink = queue.Queue(n), queue.Queue(n)
        self.threads: list[threading.Thread] = []
        self.closed = False
        # called on the capture thread with (capture index, frame as the source gave it) for every frame, before
        # any realtime drop: the stream path of --adapt needs each frame's real neighbours. Must return at once.
        self.frame_taps: list[Callable[[int, Any], None]] = []

    # -- control --
    def close(self) -> None:
        """Release the source, sink and engine of a pipeline that will not run (e.g. ``--adapt`` setup failed):
        a camera or stream stays busy, and an engine keeps its memory, until this is called. Idempotent."""
        if self.closed:
            return
        self.closed = True
        for part in (self.sink, self.source, self.backend):
            try:
                part.close()
            except Exception:  # noqa: BLE001 - closing after a failure must not replace that failure
                pass

    def stop(self, reason: str = "stopped", force: bool = False) -> None:
        """Stop capturing; finish frames in flight (``force``: only those already through the engine)."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self.stop_event.set()
        self.source.stop()
        if force:
            self.abort.set()

    def _fail(self, stage: str, e: BaseException, item: Optional[Item]) -> None:
        if self.error is None:
            self.error, self.error_stage = e, stage
            where = f" on frame {item.index}" if item is not None else ""
            self.on_event(f"{stage} failed{where}: {e}; finishing the frames already processed")
        self.stop("error", force=True)

    # -- stages --
    def _capture(self) -> None:
        interval = 1.0 / self.cfg.rate if self.cfg.rate else 0.0
        next_t = time.perf_counter()
        index = 0
        try:
            while not self.stop_event.is_set():
                if self.cfg.max_frames is not None and index >= self.cfg.max_frames:
                    break
                t0 = time.perf_counter()
                got = self.source.read()
                if got is None:
                    break
                t1 = time.perf_counter()
                self.metrics.record("capture", t1 - t0)
                self.metrics.count("captured")
                frame, name = got
                for tap in self.frame_taps:
                    tap(index, frame)
                self.q_pre.put(Item(index, name, frame, t1))
                index += 1
                if interval:
                    next_t = max(next_t + interval, t1 - interval)
                    delay = next_t - time.perf_counter()
                    if delay > 0 and self.stop_event.wait(delay):
                        break
        except BaseException as e:  # noqa: BLE001 - a source bug must not lose the output
            self._fail("capture", e, None)
        finally:
            self.q_pre.put(END)

    def _preprocess(self, item: Item) -> Optional[Item]:
        x, item.bit16 = to_rgb_float(item.raw)
        item.raw = None
        h, w = x.shape[1:]
        if self.last_hw is not None and (h, w) != self.last_hw:
            self.size_changes += 1
            if self.size_changes <= 3:
                self.on_event(f"input resolution changed from {self.last_hw[1]}x{self.last_hw[0]} to {w}x{h} "
                              f"at frame {item.index}; following it")
        self.last_hw = (h, w)
        (H, W), item.tile = plan_shape(h, w, self.backend.spec, self.cfg.tile)
        item.hw, item.x = (h, w), pad_to(x, H, W)
        return item

    def _infer(self, item: Item) -> Optional[Item]:
        spec = self.backend.spec
        if item.tile:
            self.tiled_frames += 1
            y = run_tiled(item.x, self.backend.infer, item.tile, self.cfg.overlap, spec.max_batch)
        else:
            y = self.backend.infer(item.x[None])[0]
        if y.shape != item.x.shape:
            raise NeurmapError(f"engine returned shape {y.shape} for input {item.x.shape}; is it a deblur model "
                               "(image in, same-size image out)?")
        item.y = y
        return item

    def _postprocess(self, item: Item) -> Optional[Item]:
        h, w = item.hw
        out = to_bgr(item.y[:, :h, :w], item.bit16)
        if self.cfg.compare:
            out = side_by_side(to_bgr(item.x[:, :h, :w], item.bit16), out)
        item.out, item.x, item.y = out, None, None
        return item

    def _stage(self, name: str, fn: Callable[[Item], Optional[Item]], q_in, q_out, skip_on_abort: bool) -> None:
        while True:
            item = q_in.get()
            if item is END:
                if q_out is not None:
                    q_out.put(END)
                return
            if (skip_on_abort and self.abort.is_set()) or (name == "sink" and self.error_stage == "sink"):
                continue
            t0 = time.perf_counter()
            try:
                res = fn(item)
            except Rejected as e:
                self._reject(item, str(e))
                continue
            except BaseException as e:  # noqa: BLE001 - reported once, output still finalised
                self._fail(name, e, item)
                continue
            self.metrics.record(name, time.perf_counter() - t0)
            if res is not None and q_out is not None:
                q_out.put(res)

    def _write(self, item: Item) -> None:
        keep = self.sink.write(item.out, item.name)
        self.metrics.wrote(item.t_capture)
        if not keep:
            self.stop("window closed")

    def _reject(self, item: Item, why: str) -> None:
        self.metrics.count("rejected")
        n = self.rejections.get(why, 0)
        self.rejections[why] = n + 1
        if n == 0:
            self.on_event(f"rejected frame {item.index}: {why}")

    # -- run --
    def warmup(self) -> None:
        size = self.source.size
        if not size:
            return
        w, h = size
        (H, W), tile = plan_shape(h, w, self.backend.spec, self.cfg.tile)
        th, tw = tile or (H, W)
        self.backend.infer(np.zeros((1, 3, th, tw), np.float32))

    def run(self, on_tick: Optional[Callable[[Metrics], None]] = None, tick: float = 0.5) -> dict:
        """Run to the end of the source (or ``stop()``); return the summary. Raises the first stage error
        (as NeurmapError) after the output has been finalised."""
        if self.cfg.warmup:
            t0 = time.perf_counter()
            try:
                self.warmup()
            except NeurmapError:
                raise
            except Exception as e:  # noqa: BLE001
                raise NeurmapError(f"engine failed on a {self.source.size} frame during warm-up: {e}") from None
            self.warmup_s = time.perf_counter() - t0
        else:
            self.warmup_s = 0.0
        self.metrics.start()
        specs = [("capture", self._capture, ()),
                 ("preprocess", self._stage, ("preprocess", self._preprocess, self.q_pre, self.q_infer, True)),
                 ("inference", self._stage, ("inference", self._infer, self.q_infer, self.q_post, True)),
                 ("postprocess", self._stage, ("postprocess", self._postprocess, self.q_post, self.q_sink, False)),
                 ("sink", self._stage, ("sink", self._write, self.q_sink, None, False))]
        for name, target, args in specs:
            t = threading.Thread(target=target, args=args, name=f"neurmap-{name}", daemon=True)
            t.start()
            self.threads.append(t)
        sink_thread = self.threads[-1]
        cut_short = False
        try:
            while sink_thread.is_alive():
                sink_thread.join(tick)
                if on_tick is not None:
                    on_tick(self.metrics)
                if self.abort.is_set() and not cut_short and self.threads[2].is_alive():
                    # forced stop: do not wait for the engine call in progress; finish what is already inferred
                    cut_short = True
                    self.q_post.put(END)
        finally:
            try:
                self.sink.close()
            except Exception as e:  # noqa: BLE001 - e.g. disk full while the container is finalised
                if self.error is None:
                    self.error, self.error_stage = e, "closing the output"
            finally:
                self.source.close()
                self.metrics.finish()
        if self.error is not None:
            e = self.error
            msg = str(e) if isinstance(e, NeurmapError) else f"{type(e).__name__}: {e}"
            raise NeurmapError(f"{self.error_stage} failed: {msg} (output finalised with "
                               f"{self.metrics.written} frames)")
        return self.summary()

    def summary(self) -> dict:
        """The run's JSON summary: metrics plus what ran and anything unusual that happened."""
        s = self.metrics.summary()
        s.update({"source": self.source.describe(), "engine": self.backend.describe(),
                  "output": self.sink.describe(), "mode": "realtime" if self.cfg.realtime else "offline",
                  "warmup_s": round(getattr(self, "warmup_s", 0.0), 3), "tiled_frames": self.tiled_frames,
                  "resolution_changes": self.size_changes, "reconnects": self.source.stats.reconnects,
                  "source_drops": self.source.stats.drops, "read_timeouts": self.source.stats.read_timeouts,
                  "frames_skipped_unreadable": self.source.stats.skipped,
                  "input_truncated": self.source.stats.truncated,
                  "rejections": self.rejections, "stopped_by": self.stop_reason,
                  "notes": list(self.source.stats.notes)})
        return s


def build_pipeline(source_uri: str, engine: str, output: Optional[str] = None, *, realtime: Optional[bool] = None,
                   compare: bool = False, show: bool = False, fps: Optional[float] = None,
                   input_rate: Optional[float] = None, loop: bool = False, max_frames: Optional[int] = None,
                   overlap: int = 32, tile: Optional[tuple[int, int]] = None, reconnect_timeout: float = 30.0,
                   read_timeout: float = 5.0, backend_options: Optional[dict] = None,
                   on_event: Event = lambda m: None, csi_size: tuple[int, int] = (1280, 720),
                   csi_fps: int = 30) -> Pipeline:
    """Open the source, load the engine, open the sinks: a Pipeline ready to ``run()``.

    ``realtime=None`` picks realtime for live sources and offline for files; a file in realtime mode is
    paced at its own fps (or ``input_rate``), as if it came from a camera. ``fps`` is the output video's
    rate only; a CSI sensor runs at ``csi_fps`` (or ``csi://N?fps=F``).
    """
    from .backends import load_backend
    from .sinks import open_sinks
    from .sources import open_source

    source = open_source(source_uri, fps=fps, loop=loop, on_event=on_event, reconnect_timeout=reconnect_timeout,
                         read_timeout=read_timeout, width=csi_size[0], height=csi_size[1], csi_fps=csi_fps)
    backend = None
    try:
        backend = load_backend(engine, **(backend_options or {}))
        live = source.live
        rt = live if realtime is None else realtime
        rate = input_rate or (source.fps if rt and not live else None)
        sink = open_sinks(output, fps or source.fps, show=show, on_event=on_event)
    except BaseException:
        source.close()
        if backend is not None:
            backend.close()
        raise
    cfg = RunConfig(realtime=rt, rate=rate, max_frames=max_frames, compare=compare, overlap=overlap, tile=tile)
    return Pipeline(source, backend, sink, cfg, on_event=on_event)
