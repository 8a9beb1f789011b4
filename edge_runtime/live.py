"""Capture plumbing of the live sources (:class:`.sources.CaptureSource`): opening OpenCV captures quietly
and with FFmpeg timeouts, the CSI sensor pipeline, and a reader that abandons a read that stalls.

A live source must never take a run down, nor freeze it: a failed or stalled read is a drop, answered by
re-opening with exponential backoff until ``reconnect_timeout``; the run then ends and finalises its output.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any, Optional

os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # FFmpeg's own chatter; we report problems ourselves

import cv2  # noqa: E402

from neurmap.core.errors import InputError  # noqa: E402


class _OpenCVQuiet:
    """Silence OpenCV's own WARN lines while a capture opens (we report a failed open in one line)."""

    def __enter__(self):
        log = getattr(cv2.utils, "logging", None)
        self.level = log.getLogLevel() if log else None
        if log:
            log.setLogLevel(min(self.level, log.LOG_LEVEL_ERROR))
        return self

    def __exit__(self, *exc):
        if self.level is not None:
            cv2.utils.logging.setLogLevel(self.level)
        return False


# the Jetson CSI camera pipeline (Argus -> NVMM -> BGRx -> BGR -> appsink that keeps only the newest buffer)
CSI_PIPELINE = ("nvarguscamerasrc sensor-id={sensor} ! video/x-raw(memory:NVMM),width={width},height={height},"
                "framerate={fps}/1 ! nvvidconv{flip} ! video/x-raw,format=BGRx ! videoconvert ! "
                "video/x-raw,format=BGR ! appsink drop=1 max-buffers=1")

def csi_pipeline(sensor: int, width: int = 1280, height: int = 720, fps: int = 30, flip: int = 0) -> str:
    """The nvarguscamerasrc pipeline string for CSI sensor ``sensor``."""
    return CSI_PIPELINE.format(sensor=sensor, width=width, height=height, fps=int(round(fps)),
                               flip=f" flip-method={flip}" if flip else "")


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
