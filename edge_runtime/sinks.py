"""Where processed frames go: a video file, an image folder, a window, or several at once.

Sinks take BGR frames (uint8, or uint16 where the input was 16-bit) from the pipeline's last stage.
A video keeps the input's fps and size; ``compare`` writes input | output side by side. ``close()`` always
finalises the container, so a run stopped by Ctrl-C/SIGTERM or ended by a bad input leaves a playable file
with every processed frame. The output folder of a video is created when missing.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np

from neurmap.core.errors import NeurmapError

from .sources import VIDEO_EXTENSIONS

Event = Callable[[str], None]

FOURCC = {".avi": "MJPG"}          # everything else: MPEG-4 part 2 ("mp4v"), which every OpenCV FFmpeg writes


def _quiet(_msg: str) -> None:
    pass


def to_uint8(frame: np.ndarray) -> np.ndarray:
    if frame.dtype == np.uint8:
        return frame
    if frame.dtype == np.uint16:
        return (frame >> 8).astype(np.uint8)
    return (np.clip(frame, 0, 1) * 255 + 0.5).astype(np.uint8)


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """input | output in one frame (same dtype; heights equal by construction)."""
    return np.ascontiguousarray(np.concatenate([left, right], axis=1))


class Sink:
    def __init__(self, on_event: Event = _quiet) -> None:
        self.on_event = on_event
        self.frames = 0

    def write(self, frame: np.ndarray, name: str) -> bool:
        """Write one frame; return False to ask the pipeline to stop (a window closed by the user)."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return type(self).__name__


class NullSink(Sink):
    def write(self, frame: np.ndarray, name: str) -> bool:
        self.frames += 1
        return True

    def describe(self) -> str:
        return "no output (metrics only)"


class VideoSink(Sink):
    """cv2.VideoWriter (mp4v; MJPG for .avi), PyAV as the fallback when OpenCV cannot open a writer.

    Opened on the first frame, at that frame's size. Odd sizes are padded by one replicated row/column (the
    codecs store 4:2:0 chroma, which needs even sizes); a resolution change mid-stream is scaled to the
    first size, with a message, so the file stays one playable stream.
    """

    def __init__(self, path: Path, fps: float, on_event: Event = _quiet) -> None:
        super().__init__(on_event)
        self.path, self.fps = Path(path), float(fps) if fps and fps > 0 else 30.0
        self.writer = None
        self.av = None
        self.frame_size: Optional[tuple[int, int]] = None   # (w, h) of frames as given
        self.coded_size: Optional[tuple[int, int]] = None   # (w, h) written
        self.warned_resize = False

    def _open(self, w: int, h: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        cw, ch = w + (w % 2), h + (h % 2)
        if (cw, ch) != (w, h):
            self.on_event(f"{w}x{h} frames are written as {cw}x{ch} (video codecs need even sizes; the last "
                          "column/row is repeated)")
        fourcc = FOURCC.get(self.path.suffix.lower(), "mp4v")
        writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*fourcc), self.fps, (cw, ch))
        if writer.isOpened():
            self.writer = writer
        else:
            writer.release()
            self._open_av(cw, ch)
        self.frame_size, self.coded_size = (w, h), (cw, ch)

    def _open_av(self, w: int, h: int) -> None:
        try:
            import av
        except ImportError:
            raise NeurmapError(f"OpenCV cannot write {self.path} and PyAV is not installed "
                               "(pip install 'neurmap-edge[video]'); try an .mp4 or .avi path") from None
        from fractions import Fraction
        try:
            container = av.open(str(self.path), "w")
            stream = container.add_stream("mpeg4", rate=Fraction(self.fps).limit_denominator(1001))
        except Exception as e:
            raise NeurmapError(f"cannot write video {self.path}: {e}") from None
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        self.av = (container, stream)

    def write(self, frame: np.ndarray, name: str) -> bool:
        frame = to_uint8(frame)
        h, w = frame.shape[:2]
        if self.frame_size is None:
            self._open(w, h)
        if (w, h) != self.frame_size:
            if not self.warned_resize:
                self.warned_resize = True
                fw, fh = self.frame_size
                self.on_event(f"resolution changed from {fw}x{fh} to {w}x{h} at output frame {self.frames}; "
                              f"frames are scaled to {fw}x{fh} to keep one playable video (write an image folder "
                              "with -o DIR/ to keep every frame's own size)")
            frame = cv2.resize(frame, self.frame_size, interpolation=cv2.INTER_AREA)
        cw, ch = self.coded_size
        if (cw, ch) != self.frame_size:
            frame = cv2.copyMakeBorder(frame, 0, ch - frame.shape[0], 0, cw - frame.shape[1], cv2.BORDER_REPLICATE)
        if self.writer is not None:
            self.writer.write(np.ascontiguousarray(frame))
        else:
            import av
            container, stream = self.av
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")):
                container.mux(packet)
        self.frames += 1
        return True

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None
        if self.av is not None:
            container, stream = self.av
            self.av = None
            try:
                for packet in stream.encode():
                    container.mux(packet)
            finally:
                container.close()

    def describe(self) -> str:
        return f"video {self.path} @ {self.fps:g} fps"


class ImageFolderSink(Sink):
    """One PNG per frame (named after the input image, or the frame number); 16-bit inputs stay 16-bit."""

    def __init__(self, folder: Path, ext: str = ".png", on_event: Event = _quiet) -> None:
        super().__init__(on_event)
        self.folder, self.ext = Path(folder), ext
        self.folder.mkdir(parents=True, exist_ok=True)

    def write(self, frame: np.ndarray, name: str) -> bool:
        ok, buf = cv2.imencode(self.ext, frame)
        if not ok:
            raise NeurmapError(f"OpenCV could not encode a {frame.shape} {frame.dtype} frame as {self.ext}")
        target = self.folder / f"{name}{self.ext}"
        tmp = target.with_name(f".{target.name}.tmp")
        buf.tofile(str(tmp))
        os.replace(tmp, target)           # a stopped run never leaves half an image
        self.frames += 1
        return True

    def describe(self) -> str:
        return f"images {self.folder}/"


class WindowSink(Sink):
    """cv2.imshow; 'q' or Esc in the window stops the run (its output is finalised as usual)."""

    def __init__(self, title: str = "neurmap", on_event: Event = _quiet) -> None:
        super().__init__(on_event)
        self.title = title
        if platform.system() == "Linux" and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise NeurmapError("--show needs a display (DISPLAY/WAYLAND_DISPLAY is not set); run on the device's "
                               "desktop or drop --show and write a file with -o")
        try:
            cv2.namedWindow(self.title, cv2.WINDOW_NORMAL)
        except cv2.error:
            raise NeurmapError("--show needs OpenCV with GUI support, and this one has none (opencv-python-headless); "
                               "`pip install opencv-python` (or use JetPack's OpenCV) or drop --show") from None

    def write(self, frame: np.ndarray, name: str) -> bool:
        cv2.imshow(self.title, to_uint8(frame))
        self.frames += 1
        key = cv2.waitKey(1) & 0xFF
        return key not in (ord("q"), 27)

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
        except cv2.error:
            pass

    def describe(self) -> str:
        return "window"


class MultiSink(Sink):
    def __init__(self, sinks: list[Sink]) -> None:
        super().__init__()
        self.sinks = sinks

    def write(self, frame: np.ndarray, name: str) -> bool:
        keep = True
        for s in self.sinks:
            keep = s.write(frame, name) and keep
        self.frames += 1
        return keep

    def close(self) -> None:
        errors = []
        for s in self.sinks:       # close every sink even when one fails
            try:
                s.close()
            except Exception as e:  # noqa: BLE001 - reported after the others are closed
                errors.append(e)
        if errors:
            raise errors[0]

    def describe(self) -> str:
        return " + ".join(s.describe() for s in self.sinks)


def is_video_path(path: str | Path) -> bool:
    return Path(str(path)).suffix.lower() in VIDEO_EXTENSIONS


def open_sinks(output: Optional[str], fps: float, show: bool = False, on_event: Event = _quiet) -> Sink:
    """Sinks for ``-o`` (a video path by extension, else an image folder) and ``--show``."""
    sinks: list[Sink] = []
    if show:
        sinks.append(WindowSink(on_event=on_event))
    if output:
        p = Path(os.path.expanduser(output))
        if is_video_path(p):
            sinks.append(VideoSink(p, fps, on_event))
        elif p.suffix and not p.is_dir() and not str(output).endswith(("/", os.sep)):
            raise NeurmapError(f"output {output}: {p.suffix} is not a video extension "
                               f"({', '.join(VIDEO_EXTENSIONS[:6])} ...); give a video path or a folder (DIR/)")
        else:
            sinks.append(ImageFolderSink(p, on_event=on_event))
    if not sinks:
        return NullSink(on_event)
    return sinks[0] if len(sinks) == 1 else MultiSink(sinks)
