"""Live captures: cameras, CSI sensors, network streams and GStreamer pipelines that drop and come back.

A live source must never take a run down, nor freeze it: a failed or stalled read is a drop, answered by
re-opening with exponential backoff until ``reconnect_timeout``; the run then ends and finalises its output.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Optional

import cv2
import numpy as np

from neurmap.core.errors import InputError

from .sources import Event, Source, _OpenCVQuiet, _quiet, csi_pipeline


class _TimedReader:
    """Runs ``cap.read()`` on its own thread so that a read stalled past the timeout can be abandoned.

    OpenCV's read blocks for as long as the backend does (FFmpeg's own timeout is per-backend, GStreamer and
    V4L2 have none we can set), so the capture thread waits here instead, with a deadline; an abandoned
    capture is released by this thread as soon as its read returns.
    """

    def __init__(self, cap: Any) -> None:
        self.cap = cap
        self.cond = threading.Condition()
        self.pending = False
        self.result: Any = None
        self.abandoned = False
        self.thread = threading.Thread(target=self._loop, name="neurmap-capture-read", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self.pending and not self.abandoned:
                    self.cond.wait()
                if not self.pending:
                    break
            try:
                res = self.cap.read()
            except Exception:  # noqa: BLE001 - a backend error is a drop, handled by the source
                res = (False, None)
            with self.cond:
                self.pending, self.result = False, res
                self.cond.notify_all()
                if self.abandoned:
                    break
        try:
            self.cap.release()
        except Exception:  # noqa: BLE001
            pass

    def read(self, timeout: float, stop: threading.Event) -> Optional[tuple]:
        """``cap.read()``'s (ok, frame), or None when it took longer than ``timeout`` s or ``stop`` was set."""
        deadline = time.monotonic() + timeout
        with self.cond:
            self.result, self.pending = None, True
            self.cond.notify_all()
            while self.pending:
                left = deadline - time.monotonic()
                if left <= 0 or stop.is_set():
                    return None
                self.cond.wait(min(left, 0.1))
            return self.result

    def release(self, wait: float = 0.0) -> None:
        """Release the capture (now, or when a stalled read returns); ``wait`` s for that to happen."""
        with self.cond:
            self.abandoned = True
            self.cond.notify_all()
        if wait:
            self.thread.join(wait)


class CaptureSource(Source):
    """A live capture (camera, CSI, network stream, GStreamer pipeline) that reconnects when it drops.

    ``opener()`` returns an object with ``isOpened()/read()/get()/release()`` (a ``cv2.VideoCapture``; tests
    pass a fake). A read that fails, or that delivers nothing for ``read_timeout`` s, is a drop: the capture
    is re-opened after 0.5, 1, 2, 4 ... ``max_backoff`` s until it delivers again or ``reconnect_timeout`` s
    have passed without a frame (then the source ends, and the run finalises its output).
    """

    live = True

    def __init__(self, uri: str, opener: Callable[[], Any], kind: str = "camera", on_event: Event = _quiet,
                 reconnect_timeout: float = 30.0, first_backoff: float = 0.5, max_backoff: float = 8.0,
                 read_timeout: float = 5.0) -> None:
        super().__init__(uri, on_event)
        self.opener, self.kind = opener, kind
        self.reconnect_timeout, self.first_backoff, self.max_backoff = reconnect_timeout, first_backoff, max_backoff
        self.read_timeout = read_timeout
        self.reader: Optional[_TimedReader] = None

    @property
    def cap(self) -> Any:
        return self.reader.cap if self.reader is not None else None

    def _try_open(self):
        try:
            cap = self.opener()
        except Exception:  # a failed open of a live source is retried, never a crash
            return None
        if cap is None or not cap.isOpened():
            if cap is not None:
                cap.release()
            return None
        return cap

    def open(self) -> "CaptureSource":
        cap = self._try_open()
        if cap is None:
            hint = {"camera": "is the camera plugged in, free (not used by another program) and readable "
                              "(permissions on /dev/video*)?",
                    "stream": "is the URL right and the server reachable?",
                    "csi": "is nvargus-daemon running and the sensor connected (try `gst-launch-1.0 "
                           "nvarguscamerasrc ! fakesink`)?",
                    "gstreamer": "does the pipeline run with gst-launch-1.0 (ending in fakesink)?"}.get(self.kind, "")
            raise InputError(f"cannot open {self.kind} {self.uri}; {hint}")
        self.reader = _TimedReader(cap)
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and 0 < fps < 1000 else 30.0
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self.size = (w, h) if w > 0 and h > 0 else None
        return self

    def _reconnect(self) -> bool:
        """Re-open with exponential backoff; False when ``reconnect_timeout`` passed (or stopped) first."""
        start, delay, attempt = time.monotonic(), self.first_backoff, 0
        while not self.stop_event.is_set():
            left = self.reconnect_timeout - (time.monotonic() - start)
            if left <= 0:
                self.note(f"{self.kind} {self.uri}: no frames for {time.monotonic() - start:.1f} s after {attempt} "
                          "reconnect attempts; giving up and finalising the output")
                return False
            attempt += 1
            wait = min(delay, left)     # the last attempt lands on the timeout, not a backoff step after it
            self.on_event(f"{self.kind} {self.uri} dropped; reconnecting in {wait:g} s (attempt {attempt})")
            if self.stop_event.wait(wait):
                return False
            cap = self._try_open()
            if cap is not None:
                self.reader = _TimedReader(cap)
                self.stats.reconnects += 1
                self.note(f"{self.kind} {self.uri}: reconnected after {time.monotonic() - start:.1f} s "
                          f"(attempt {attempt})")
                return True
            delay = min(delay * 2, self.max_backoff)
        return False

    def read(self) -> Optional[tuple[np.ndarray, str]]:
        while not self.stop_event.is_set():
            if self.reader is None and not self._reconnect():
                return None
            got = self.reader.read(self.read_timeout, self.stop_event)
            if got is None and self.stop_event.is_set():
                return None
            ok, frame = got if got is not None else (False, None)
            if ok and frame is not None and getattr(frame, "size", 0):
                self.stats.frames += 1
                return frame, f"{self.stats.frames - 1:06d}"
            self.stats.drops += 1
            if got is None:
                self.stats.read_timeouts += 1
                self.note(f"{self.kind} {self.uri}: no frame for {self.read_timeout:g} s (stalled); reconnecting")
            self.reader.release()
            self.reader = None
        return None

    def close(self) -> None:
        if self.reader is not None:
            self.reader.release(wait=1.0)
            self.reader = None


def _capture(target, api: int, params: Optional[list] = None):
    def opener():
        with _OpenCVQuiet():
            cap = cv2.VideoCapture(target, api, params) if params else cv2.VideoCapture(target, api)
        if cap.isOpened():
            # newest frame first: a live source must not hand us seconds-old buffers
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        return cap
    return opener


def ffmpeg_timeouts(read_timeout: float) -> list:
    """VideoCapture params that make FFmpeg itself give up on a stalled open/read (so its thread returns)."""
    ms = max(1, int(read_timeout * 1000))
    return [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]


def parse_csi(text: str, width: int = 1280, height: int = 720, fps: int = 30) -> str:
    """``csi://N[?width=W&height=H&fps=F&flip=K]`` -> the nvarguscamerasrc pipeline (the sensor's own mode,
    never the output video's --fps)."""
    from urllib.parse import parse_qsl

    rest = text.split("://", 1)[1]
    sensor, _, query = rest.partition("?")
    if not sensor.isdigit():
        raise InputError(f"{text}: a CSI source is csi://N with N the sensor id, e.g. csi://0 "
                         "(or csi://0?width=1920&height=1080&fps=60)")
    opts = {"width": width, "height": height, "fps": fps, "flip": 0}
    for k, v in parse_qsl(query, keep_blank_values=True):
        if k not in opts:
            raise InputError(f"{text}: unknown CSI option {k!r}; known: width, height, fps, flip")
        if not v.isdigit() or (int(v) < 1 and k != "flip") or (k == "flip" and int(v) > 7):
            raise InputError(f"{text}: {k}={v!r} must be a positive whole number (flip 0-7)")
        opts[k] = int(v)
    return csi_pipeline(int(sensor), opts["width"], opts["height"], opts["fps"], opts["flip"])
