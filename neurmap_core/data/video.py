"""Frames of a video file or an image folder, read lazily, as float RGB (3,H,W) tensors in [0, 1].

:class:`VideoReader` wraps ``cv2.VideoCapture`` (random access by frame index, iteration, fps, frame
count). :class:`ImageFolderFrames` does the same for a folder of images. :func:`frame_source` picks one
from a path, so callers index ``len(src)`` / ``src[i]`` without caring which it is. Both are picklable
(the capture is reopened in each process), so they can sit inside DataLoader workers.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Optional

import cv2
import torch

from ..errors import InputError
from .io import IMAGE_EXTENSIONS, PathLike, array_to_tensor, is_image_file, list_images, read_image

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".3gp")

# Captures inherited through fork() (DataLoader workers) hold FFmpeg state whose threads did not survive the
# fork; using or even releasing them can hang, so a child parks them here and opens its own.
_ORPHANED_CAPTURES: list = []

# Reading forward (grab without decoding to RGB) beats a seek for short jumps, and is always exact.
_MAX_FORWARD_GRAB = 24

_VIDEO_FIX = (
    "the file is corrupt, truncated, not a video, or uses a codec OpenCV's FFmpeg cannot decode; "
    "re-encode it (e.g. `ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT.mp4`) "
    "or extract its frames into a folder of images and pass the folder"
)


class FrameSequence(Sequence):
    """Base of the lazy frame sources: ``len``, ``src[i]`` (negative i allowed), iteration, ``fps``."""

    fps: Optional[float] = None
    path: Path

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _read(self, index: int) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _index(self, index: int) -> int:
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"frame index {index} out of range for {n} frames of {self.path}")
        return i

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self._read(self._index(index))

    def __iter__(self) -> Iterator[torch.Tensor]:
        for i in range(len(self)):
            yield self._read(i)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the first frame."""
        f = self[0]
        return int(f.shape[-2]), int(f.shape[-1])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, frames={len(self)})"


class ImageFolderFrames(FrameSequence):
    """The images of a folder (sorted naturally) as a lazy frame sequence."""

    def __init__(self, folder: PathLike, fps: Optional[float] = None) -> None:
        self.path = Path(folder)
        self.files = list_images(self.path)
        if not self.files:
            raise InputError(
                f"folder {self.path} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                "point to the folder that contains the frames"
            )
        self.fps = fps

    def __len__(self) -> int:
        return len(self.files)

    def _read(self, index: int) -> torch.Tensor:
        return read_image(self.files[index])


class SingleImageFrames(FrameSequence):
    """One image file seen as a one-frame sequence."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self.files = [self.path]
        read_image(self.path)  # fail now, with a clear message, if it is unreadable

    def __len__(self) -> int:
        return 1

    def _read(self, index: int) -> torch.Tensor:
        return read_image(self.path)


class VideoReader(FrameSequence):
    """Lazy, random-access frames of a video file via ``cv2.VideoCapture``.

    ``reader[i]`` seeks (or grabs forward for short jumps) and decodes frame ``i``; iterating decodes
    sequentially. The frame count comes from the container; where the container gives none it is
    counted once by grabbing every frame. Raises :class:`InputError` (with a fix) for a file that
    cannot be opened or whose first frame cannot be decoded.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f"video {self.path} does not exist; check the path")
        if not self.path.is_file():
            raise InputError(f"{self.path} is not a file; pass a video file or a folder of frames")
        self._lock = threading.Lock()
        self._cap: Optional[cv2.VideoCapture] = None
        self._pid = os.getpid()
        self._pos = 0                                     # index of the frame the next read() returns
        cap = self._capture()
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if fps > 0 else None
        ok, first = cap.read()
        if not ok or first is None:
            self.close()
            raise InputError(f"cannot decode the first frame of video {self.path}: {_VIDEO_FIX}")
        self._pos = 1
        self.height, self.width = int(first.shape[0]), int(first.shape[1])
        count = int(round(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0))
        self._count = count if count > 0 else self._count_by_grabbing()
        self.close()                                      # hold no capture until frames are read

    # -- capture management (lazy, per process) --------------------------------------------------
    def _after_fork(self) -> None:
        if self._pid != os.getpid():
            if self._cap is not None:
                _ORPHANED_CAPTURES.append(self._cap)
            self._cap, self._pos = None, 0
            self._lock = threading.Lock()
            self._pid = os.getpid()

    def _capture(self) -> cv2.VideoCapture:
        self._after_fork()
        if self._cap is None:
            cap = cv2.VideoCapture(str(self.path))
            if not cap.isOpened():
                cap.release()
                raise InputError(f"cannot open video {self.path}: {_VIDEO_FIX}")
            self._cap = cap
            self._pos = 0
        return self._cap

    def _count_by_grabbing(self) -> int:
        cap = self._capture()
        cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
        n = 0
        while cap.grab():
            n += 1
        self.close()
        return n

    def close(self) -> None:
        """Release the capture; it is reopened on the next read."""
        self._after_fork()
        if self._cap is not None:
            self._cap.release()
        self._cap = None
        self._pos = 0

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_cap"] = None
        state["_pos"] = 0
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- reading -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._count

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width

    def _read(self, index: int) -> torch.Tensor:
        self._after_fork()
        with self._lock:
            cap = self._capture()
            if index != self._pos:
                if self._pos < index <= self._pos + _MAX_FORWARD_GRAB:
                    while self._pos < index and cap.grab():
                        self._pos += 1
                else:
                    cap.set(cv2.CAP_PROP_POS_FRAMES, index)
                    self._pos = index
            ok, frame = cap.read() if self._pos == index else (False, None)
            if not ok or frame is None:
                self.close()
                raise InputError(
                    f"cannot decode frame {index} of video {self.path} ({len(self)} frames announced): {_VIDEO_FIX}"
                )
            self._pos = index + 1
        return array_to_tensor(frame, bgr=True)

    def __iter__(self) -> Iterator[torch.Tensor]:
        """Decode every frame in order with a capture of its own (independent of random access)."""
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            cap.release()
            raise InputError(f"cannot open video {self.path}: {_VIDEO_FIX}")
        try:
            for _ in range(len(self)):
                ok, frame = cap.read()
                if not ok or frame is None:
                    break                                   # announced count was too high: stop cleanly
                yield array_to_tensor(frame, bgr=True)
        finally:
            cap.release()


def is_video_file(path: PathLike) -> bool:
    """True when ``path``'s extension is one of :data:`VIDEO_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def frame_source(path: PathLike, fps: Optional[float] = None) -> FrameSequence:
    """A lazy, indexable frame sequence from an image folder, a video file, a single image or a paired folder
    (``blur/`` + ``sharp/``, as ``neurmap eval`` reads it: the blurry frames).

    ``fps`` sets the rate of an image folder (videos report their own).
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p} does not exist; pass a folder of images or a video file")
    if p.is_dir():
        if (p / "blur").is_dir() and (p / "sharp").is_dir():   # a paired folder: its blurry side is the input
            return ImageFolderFrames(p / "blur", fps=fps)
        return ImageFolderFrames(p, fps=fps)
    if is_image_file(p):
        return SingleImageFrames(p)
    return VideoReader(p)          # any other file is tried as a video; unreadable ones raise InputError
