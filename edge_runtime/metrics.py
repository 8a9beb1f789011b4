"""Run metrics: FPS, per-stage and capture-to-sink latency percentiles, dropped/rejected frames.

Stages record their own processing time per frame; the sink records capture-to-sink latency (the time
from the frame leaving the camera/decoder to its write finishing, queues included). Percentiles cover
the last :data:`WINDOW` frames so a day-long stream keeps flat memory; counts and FPS cover the run.
``cpu_s`` is the process CPU time of the run (all threads, engine pools included): on a shared CPU it says
what the run cost independently of what else was running.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Optional

import numpy as np

STAGES = ("capture", "preprocess", "inference", "postprocess", "sink")
WINDOW = 100_000


def percentiles(values) -> dict:
    a = np.asarray(values, np.float64)
    if a.size == 0:
        return {"count": 0}
    p50, p90, p95, p99 = np.percentile(a, [50, 90, 95, 99])
    ms = 1000.0
    return {"count": int(a.size), "mean_ms": round(a.mean() * ms, 3), "min_ms": round(a.min() * ms, 3),
            "p50_ms": round(p50 * ms, 3), "p90_ms": round(p90 * ms, 3), "p95_ms": round(p95 * ms, 3),
            "p99_ms": round(p99 * ms, 3), "max_ms": round(a.max() * ms, 3)}


class Metrics:
    """Thread-safe counters and latency windows for one run."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stage = {s: deque(maxlen=WINDOW) for s in STAGES}
        self.e2e: deque = deque(maxlen=WINDOW)
        self.captured = self.written = self.dropped = self.rejected = 0
        self.t_start: Optional[float] = None
        self.t_first_write: Optional[float] = None
        self.t_last_write: Optional[float] = None
        self.recent: deque = deque(maxlen=64)  # write times, for the live FPS
        self.t_end: Optional[float] = None
        self.cpu_start = self.cpu_end = 0.0

    def start(self) -> None:
        self.t_start = time.perf_counter()
        self.cpu_start = time.process_time()

    def record(self, stage: str, seconds: float) -> None:
        with self.lock:
            self.stage[stage].append(seconds)

    def count(self, what: str, n: int = 1) -> None:
        with self.lock:
            setattr(self, what, getattr(self, what) + n)

    def wrote(self, t_capture: float) -> None:
        now = time.perf_counter()
        with self.lock:
            self.written += 1
            self.e2e.append(now - t_capture)
            self.recent.append(now)
            if self.t_first_write is None:
                self.t_first_write = now
            self.t_last_write = now

    def finish(self) -> None:
        self.t_end = time.perf_counter()
        self.cpu_end = time.process_time()

    # ---- views -------------------------------------------------------------------------------------------
    def fps(self) -> float:
        """Frames written per second of the run (first capture to last write)."""
        if not self.written or self.t_start is None or self.t_last_write is None:
            return 0.0
        return self.written / max(self.t_last_write - self.t_start, 1e-9)

    def live_fps(self) -> float:
        with self.lock:
            r = list(self.recent)
        if len(r) < 2:
            return 0.0
        now = time.perf_counter()
        if now - r[-1] > 5 * max((r[-1] - r[0]) / (len(r) - 1), 0.2):
            return 0.0  # stalled
        return (len(r) - 1) / max(r[-1] - r[0], 1e-9)

    def model_fps(self) -> float:
        """Frames per second the engine alone would give (1 / mean inference time per frame)."""
        with self.lock:
            inf = list(self.stage["inference"])
        return 1.0 / float(np.mean(inf)) if inf else 0.0

    def status_line(self) -> str:
        with self.lock:
            e2e = list(self.e2e)[-200:]
            inf = list(self.stage["inference"])[-200:]
        lat = f"{np.percentile(e2e, 50) * 1000:.0f}/{np.percentile(e2e, 99) * 1000:.0f} ms" if e2e else "-"
        model = f"{1.0 / np.mean(inf):.1f}" if inf else "-"
        rej = f" | rejected {self.rejected}" if self.rejected else ""
        return (f"{self.written} frames | {self.live_fps():.1f} fps (engine {model}) | p50/p99 {lat} | "
                f"dropped {self.dropped}{rej}")

    def summary(self) -> dict:
        with self.lock:
            stages = {s: percentiles(v) for s, v in self.stage.items()}
            e2e = percentiles(self.e2e)
        wall = ((self.t_end or time.perf_counter()) - self.t_start) if self.t_start else 0.0
        fps, model = self.fps(), self.model_fps()
        cpu = (self.cpu_end or time.process_time()) - self.cpu_start if self.t_start else 0.0
        return {"frames_captured": self.captured, "frames_written": self.written, "frames_dropped": self.dropped,
                "frames_rejected": self.rejected, "wall_s": round(wall, 3), "fps": round(fps, 3),
                "model_fps": round(model, 3), "fps_vs_model": round(fps / model, 4) if model else None,
                "cpu_s": round(cpu, 3), "cpu_ms_per_frame": round(cpu / self.written * 1000, 3) if self.written else None,
                "latency_capture_to_sink": e2e, "stages": stages}
