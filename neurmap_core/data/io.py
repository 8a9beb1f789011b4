"""Image files <-> float RGB tensors.

Every image comes back as a float32 (3, H, W) tensor in [0, 1], RGB, whatever the file holds:
grayscale is repeated to three channels, an alpha channel is dropped, 16-bit files are divided by
65535 (8-bit by 255), float files are clipped to [0, 1]. Files are decoded from bytes
(``np.fromfile`` + ``cv2.imdecode``) so paths with any characters work on every OS.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Union

import cv2
import numpy as np
import torch

from ..errors import InputError

PathLike = Union[str, os.PathLike]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sort key that orders ``frame2`` before ``frame10`` (digit runs compare as numbers)."""
    parts = _DIGITS.split(str(name))
    return tuple((0, int(p), p) if p.isdigit() else (1, p.lower(), p) for p in parts)


def is_image_file(path: PathLike) -> bool:
    """True when ``path``'s extension is one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: PathLike) -> list[Path]:
    """The image files directly inside ``folder``, sorted naturally by name (hidden files skipped).

    Returns an empty list for a folder without images; raises :class:`InputError` when ``folder``
    is missing or not a folder.
    """
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"image folder {folder} does not exist; check the path")
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder; pass a folder of {'/'.join(IMAGE_EXTENSIONS)} images")
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and is_image_file(p)]
    return sorted(files, key=lambda p: natural_key(p.name))


def array_to_tensor(array: np.ndarray, bgr: bool = False) -> torch.Tensor:
    """An image array (H,W), (H,W,1|2|3|4) of uint8/uint16/float -> float32 RGB (3,H,W) in [0, 1].

    ``bgr=True`` for arrays that come from OpenCV (channel order B, G, R[, A]); ``False`` for RGB arrays
    such as ``skimage.data.astronaut()``.
    """
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (2, 3, 4)) or a.size == 0:
        raise InputError(f"an image must be (H,W) or (H,W,C) with C in 1..4, got an array of shape {a.shape}")
    if a.dtype == np.uint8:
        f = a.astype(np.float32) / 255.0
    elif a.dtype == np.uint16:
        f = a.astype(np.float32) / 65535.0
    elif a.dtype == bool:
        f = a.astype(np.float32)
    elif np.issubdtype(a.dtype, np.floating):
        f = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    elif np.issubdtype(a.dtype, np.integer):
        info = np.iinfo(a.dtype)
        f = np.clip(a.astype(np.float64) / max(info.max, 1), 0.0, 1.0).astype(np.float32)
    else:
        raise InputError(f"unsupported image data type {a.dtype}; use 8-bit, 16-bit or float images")
    if f.ndim == 2:
        f = np.repeat(f[:, :, None], 3, axis=2)
    elif f.shape[2] == 2:                       # gray + alpha
        f = np.repeat(f[:, :, :1], 3, axis=2)
    elif f.shape[2] == 4:                       # drop alpha
        f = f[:, :, :3]
    if bgr:
        f = f[:, :, ::-1]
    f = np.clip(f, 0.0, 1.0)
    return torch.from_numpy(np.ascontiguousarray(f.transpose(2, 0, 1)))


def tensor_to_array(image: torch.Tensor, bit_depth: int = 8, bgr: bool = False) -> np.ndarray:
    """A float (C,H,W) tensor in [0, 1] (C = 1 or 3) -> an (H,W,3) or (H,W) uint8/uint16 array (rounded)."""
    if bit_depth not in (8, 16):
        raise InputError(f"bit_depth must be 8 or 16, got {bit_depth}")
    t = torch.as_tensor(image).detach().to("cpu", torch.float32)
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if t.dim() == 2:
        t = t[None]
    if t.dim() != 3 or t.shape[0] not in (1, 3):
        raise InputError(f"an image tensor must be (3,H,W) or (1,H,W), got {tuple(t.shape)}")
    peak = 255.0 if bit_depth == 8 else 65535.0
    a = torch.nan_to_num(t, nan=0.0).clamp(0.0, 1.0).mul(peak).round().numpy()
    a = a.astype(np.uint8 if bit_depth == 8 else np.uint16).transpose(1, 2, 0)
    if a.shape[2] == 1:
        return np.ascontiguousarray(a[:, :, 0])
    if bgr:
        a = a[:, :, ::-1]
    return np.ascontiguousarray(a)


def read_image(path: PathLike) -> torch.Tensor:
    """Read an image file as a float32 RGB (3,H,W) tensor in [0, 1]; :class:`InputError` if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image {path} does not exist or is not a file; check the path")
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as e:
        raise InputError(f"cannot read image {path}: {e}; check the file's permissions") from e
    array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if array is None or array.size == 0:
        raise InputError(
            f"cannot decode image {path}: the file is empty, corrupt or not an image format OpenCV reads "
            f"({', '.join(IMAGE_EXTENSIONS)}); replace it or re-save it as PNG"
        )
    return array_to_tensor(array, bgr=True)


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()                       # read once at import: os.umask is process-wide state


def write_image(path: PathLike, image: torch.Tensor, bit_depth: int = 8) -> Path:
    """Write a float (3,H,W) RGB or (1,H,W) tensor in [0, 1] to ``path`` atomically (temp file + os.replace).

    The format follows the extension; ``bit_depth=16`` is for PNG/TIFF. Parent folders are created.
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in IMAGE_EXTENSIONS:
        raise InputError(f"cannot write {path}: use one of the extensions {', '.join(IMAGE_EXTENSIONS)}")
    if bit_depth == 16 and ext not in (".png", ".tif", ".tiff"):
        raise InputError(f"16-bit images need a .png or .tif path, got {path}")
    array = tensor_to_array(image, bit_depth=bit_depth, bgr=True)
    ok, buf = cv2.imencode(ext, array)
    if not ok:
        raise InputError(f"OpenCV could not encode an image of shape {array.shape} as {ext}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)          # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path
