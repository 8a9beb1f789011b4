"""Frame sources addressed by URI, in the manner of jetson-utils' ``videoSource``.

==============================  ==============================================================
``clip.mp4``, ``file://clip.mp4``  video file (FFmpeg through OpenCV)
``frames/``, ``file://frames/``    folder of images, natural order (8/16-bit, gray, RGBA all fine)
``photo.png``                      one image
``0``, ``1``                       camera by index (V4L2 on Linux)
``v4l2:///dev/video0``             V4L2 device node
``csi://0``                        MIPI CSI camera on Jetson: nvarguscamerasrc GStreamer pipeline
``csi://0?width=1920&height=1080&fps=60&flip=2``  the same, sensor mode chosen (default 1280x720 @ 30)
``rtsp://host/stream``             network stream (FFmpeg); also ``rtsps://``, ``http(s)://``, ``udp://``
``videotestsrc ! ... ! appsink``   any GStreamer pipeline (contains ``!``)
==============================  ==============================================================

Every source yields frames as OpenCV gives them (H, W[, C]) BGR(A) arrays of uint8/uint16/float; the
pipeline normalises them. Files end (a truncated or corrupt file ends cleanly at the last readable
frame, with a message); live sources reconnect with exponential backoff when they drop, and a read that
stalls longer than ``read_timeout`` counts as a drop (a frozen stream must not freeze the run).
"""
from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # FFmpeg's own chatter; we report problems ourselves

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from neurmap.core.errors import InputError, NeurmapError  # noqa: E402

from .live import (CSI_PIPELINE, _capture, _OpenCVQuiet, _TimedReader, csi_pipeline,  # noqa: E402,F401
                   ffmpeg_timeouts, parse_csi)

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts",
                    ".3gp", ".mjpeg", ".h264", ".h265", ".hevc")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")

USAGE = ("give a video file, an image folder, a camera index (0), v4l2:///dev/videoN, csi://N, "
         "rtsp://host/path or a GStreamer pipeline")

Event = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


def has_gstreamer() -> bool:
    """True when this OpenCV was built with GStreamer (JetPack's is; pip's opencv-python is not)."""
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line.split(":", 1)[1]
    return False


def require_gstreamer(what: str) -> None:
    if not has_gstreamer():
        raise NeurmapError(
            f"{what} needs OpenCV built with GStreamer, and this one ({cv2.__version__}) has none "
            "(pip's opencv-python wheels never do): on Jetson use JetPack's OpenCV (apt python3-opencv, "
            "`pip uninstall opencv-python opencv-python-headless`); check with "
            "python -c \"import cv2; print(cv2.getBuildInformation())\" | grep GStreamer")


@dataclass
class SourceStats:
    frames: int = 0
    skipped: int = 0          # unreadable images / frames skipped inside a file
    reconnects: int = 0
    drops: int = 0            # times a live source stopped delivering (closed, failed or stalled)
    read_timeouts: int = 0    # of those, reads that stalled past read_timeout
    truncated: bool = False   # a file that ended before the frame count its header claims
    notes: list = field(default_factory=list)


class Source:
    """Base: ``open()``, then ``read()`` until it returns None, then ``close()``."""

    live = False
    kind = "source"

    def __init__(self, uri: str, on_event: Event = _quiet) -> None:
        self.uri = uri
        self.on_event = on_event
        self.stats = SourceStats()
        self.fps: float = 0.0
        self.size: Optional[tuple[int, int]] = None  # (width, height) when known before the first frame
        self.frame_count: Optional[int] = None
        self.stop_event = threading.Event()

    def open(self) -> "Source":
        return self

    def read(self) -> Optional[tuple[np.ndarray, str]]:
        """(frame, name) or None at the end (or when stopped)."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def stop(self) -> None:
        self.stop_event.set()

    def note(self, msg: str) -> None:
        self.stats.notes.append(msg)
        self.on_event(msg)

    def describe(self) -> str:
        size = f" {self.size[0]}x{self.size[1]}" if self.size else ""
        fps = f" @ {self.fps:g} fps" if self.fps else ""
        return f"{self.kind} {self.uri}{size}{fps}"


class VideoFileSource(Source):
    """A video file, decoded by FFmpeg through OpenCV. ``loop`` restarts it at the end."""

    kind = "video"
    MAX_SKIPS = 8  # consecutive unreadable frames skipped before the file is taken as ended

    def __init__(self, path: Path, on_event: Event = _quiet, loop: bool = False) -> None:
        super().__init__(str(path), on_event)
        self.path, self.loop = Path(path), loop
        self.cap = None

    def open(self) -> "VideoFileSource":
        if not self.path.is_file():
            raise InputError(f"video {self.path} does not exist; {USAGE}")
        with _OpenCVQuiet():
            cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            raise InputError(f"cannot open video {self.path}: it is corrupt, truncated before its index (an .mp4 "
                             "cut short loses its moov atom), or not a video; re-encode it or extract its frames "
                             "into a folder and pass the folder")
        self.cap = cap
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and 0 < fps < 1000 else 30.0
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self.size = (w, h) if w > 0 and h > 0 else None
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.frame_count = n if n > 0 else None
        return self

    def read(self) -> Optional[tuple[np.ndarray, str]]:
        skips = 0
        while not self.stop_event.is_set():
            ok, frame = self.cap.read()
            if ok and frame is not None and frame.size:
                self.stats.frames += 1
                self.stats.skipped += skips   # damaged frames passed over to get here
                return frame, f"{self.stats.frames - 1:06d}"
            known = self.frame_count
            pos = int(self.cap.get(cv2.CAP_PROP_POS_FRAMES))
            if known and pos < known and skips < self.MAX_SKIPS:
                skips += 1          # a damaged packet inside the file: try the next one
                continue
            if self.loop and self.stats.frames:
                self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                if self.cap.read()[0]:
                    self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    continue
            if known and self.stats.frames < known * 0.98 - 1 and not self.loop:
                self.stats.truncated = True
                self.note(f"{self.path.name}: input ended after {self.stats.frames} of the {known} frames its "
                          "header announces (truncated or corrupt); everything readable was processed")
            elif self.stats.skipped:
                self.note(f"{self.path.name}: skipped {self.stats.skipped} unreadable frame(s)")
            return None
        return None

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


class ImageFolderSource(Source):
    """Images of a folder (or one image), natural order; an unreadable image is skipped with a message."""

    kind = "images"

    def __init__(self, path: Path, fps: float = 30.0, on_event: Event = _quiet, loop: bool = False) -> None:
        super().__init__(str(path), on_event)
        self.path, self.loop = Path(path), loop
        self.fps = fps
        self.files: list[Path] = []
        self.pos = 0

    def open(self) -> "ImageFolderSource":
        from neurmap.core.data.io import natural_key

        if self.path.is_file():
            self.files = [self.path]
        else:
            self.files = sorted((p for p in self.path.iterdir() if p.is_file() and not p.name.startswith(".")
                                 and p.suffix.lower() in IMAGE_EXTENSIONS), key=lambda p: natural_key(p.name))
        if not self.files:
            raise InputError(f"folder {self.path} holds no images ({', '.join(IMAGE_EXTENSIONS)}); {USAGE}")
        self.frame_count = len(self.files)
        first = self._decode(self.files[0])
        if first is not None:
            self.size = (first.shape[1], first.shape[0])
        return self

    @staticmethod
    def _decode(p: Path) -> Optional[np.ndarray]:
        try:
            data = np.fromfile(str(p), np.uint8)
        except OSError:
            return None
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
        return img if img is not None and img.size else None

    def read(self) -> Optional[tuple[np.ndarray, str]]:
        while not self.stop_event.is_set():
            if self.pos >= len(self.files):
                if not self.loop:
                    return None
                self.pos = 0
            p = self.files[self.pos]
            self.pos += 1
            img = self._decode(p)
            if img is None:
                self.stats.skipped += 1
                self.note(f"skipped {p.name}: empty, corrupt or not an image OpenCV decodes")
                continue
            self.stats.frames += 1
            return img, p.stem
        return None


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


def open_source(uri: str, *, fps: Optional[float] = None, loop: bool = False, on_event: Event = _quiet,
                reconnect_timeout: float = 30.0, read_timeout: float = 5.0, width: int = 1280, height: int = 720,
                csi_fps: int = 30) -> Source:
    """Parse ``uri`` into a :class:`Source` and open it (InputError/NeurmapError with the fix when it cannot).

    ``fps`` is the rate given to folders (and files' reported rate), never a camera's: a CSI sensor mode
    comes from ``csi://N?fps=F`` (default ``csi_fps``), so an output written at 15 fps does not reconfigure it.
    """
    text = str(uri).strip()
    live = dict(on_event=on_event, reconnect_timeout=reconnect_timeout, read_timeout=read_timeout)
    if not text:
        raise InputError(f"empty source; {USAGE}")
    if "!" in text:                                             # raw GStreamer pipeline
        require_gstreamer("a GStreamer pipeline source")
        pipe = text if re.search(r"\bappsink\b", text) else f"{text} ! videoconvert ! appsink drop=1 max-buffers=1"
        return CaptureSource(text, _capture(pipe, cv2.CAP_GSTREAMER), "gstreamer", **live).open()
    m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://(.*)$", text)
    scheme, rest = (m.group(1).lower(), m.group(2)) if m else ("", text)
    if scheme == "csi":
        pipe = parse_csi(text, width, height, csi_fps)
        require_gstreamer(f"{text} (Jetson CSI camera through nvarguscamerasrc)")
        return CaptureSource(text, _capture(pipe, cv2.CAP_GSTREAMER), "csi", **live).open()
    if scheme == "v4l2":
        dev = rest if rest.startswith("/") else "/" + rest
        if not Path(dev).exists():
            raise InputError(f"{text}: device {dev} does not exist; list cameras with `ls /dev/video*` "
                             "or `v4l2-ctl --list-devices`")
        return CaptureSource(text, _capture(dev, cv2.CAP_V4L2), "camera", **live).open()
    if scheme in NETWORK_SCHEMES:
        opener = _capture(text, cv2.CAP_FFMPEG, ffmpeg_timeouts(read_timeout))
        return CaptureSource(text, opener, "stream", **live).open()
    if scheme and scheme != "file":
        raise InputError(f"unknown source scheme {scheme}:// in {text!r}; {USAGE}")
    if not scheme and re.fullmatch(r"\d{1,3}", text) and not Path(text).exists():
        return CaptureSource(text, _capture(int(text), cv2.CAP_ANY), "camera", **live).open()
    path = Path(os.path.expanduser(rest if scheme == "file" else text))
    if path.is_dir():
        return ImageFolderSource(path, fps or 30.0, on_event, loop).open()
    if not path.exists():
        raise InputError(f"source {text} not found; {USAGE}")
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return ImageFolderSource(path, fps or 30.0, on_event, loop).open()
    src = VideoFileSource(path, on_event, loop).open()
    if fps:
        src.fps = fps
    return src
