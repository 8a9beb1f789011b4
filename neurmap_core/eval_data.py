"""Evaluation data: recognise what ``neurmap eval --data`` / ``evaluate(model, data)`` was given and wrap it.

A path to ``<root>/{blur,sharp}/`` (paired, matched by file name), the GoPro layout
``<root>/<split>/<seq>/{blur,sharp}/`` or ``<root>/<seq>/{blur,sharp}/`` (several splits: ``test`` is used),
a folder of images / a video / one image (unpaired); or any dataset object whose items are dicts
(``blurry``/``sharp``/``motion``, or ``image``), ``(blurry, sharp)`` pairs or lone image tensors.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from .errors import InputError

_PAIR_DIRS = ("blur", "sharp")
_HINT = ("give a paired folder (<root>/blur/ + <root>/sharp/, same file names), the GoPro layout "
         "(<root>/<split>/<seq>/{blur,sharp}/), an image folder or a video")


class EvalData:
    """An indexable source of eval items with names, plus what kind of data it is (for the report)."""

    def __init__(self, items, kind: str, description: str, names: Optional[Sequence[str]] = None,
                 path: Optional[Path] = None) -> None:
        self.items, self.kind, self.description, self.path = items, kind, description, path
        self._names = names

    def __len__(self) -> int:
        return len(self.items)

    def name(self, i: int) -> str:
        if self._names is not None and i < len(self._names):
            return str(self._names[i])
        return f"{i:05d}"

    def get(self, i: int) -> dict:
        """Item ``i`` as ``{"blurry": (3,H,W), "sharp": (3,H,W)|None, "motion": (2,H,W)|None}``."""
        return _as_item(self.items[i], i)


def _as_item(item: Any, i: int) -> dict:
    blurry = sharp = motion = None
    if isinstance(item, dict):
        for k in ("blurry", "blur", "image", "input"):
            if k in item:
                blurry = item[k]
                break
        sharp, motion = item.get("sharp"), item.get("motion")
    elif isinstance(item, (tuple, list)) and len(item) in (2, 3):
        blurry, sharp = item[0], item[1]
        motion = item[2] if len(item) == 3 else None
    elif isinstance(item, torch.Tensor):
        blurry = item
    if not isinstance(blurry, torch.Tensor):
        raise InputError(f"item {i} of the data is a {type(item).__name__} without a blurry image tensor; items "
                         "must be dicts with 'blurry' (and 'sharp', 'motion') or 'image', (blurry, sharp) pairs or "
                         "(3,H,W) tensors")

    def chw(t: Optional[torch.Tensor], what: str, channels: int) -> Optional[torch.Tensor]:
        if t is None:
            return None
        t = t.detach().to("cpu", torch.float32)
        if t.dim() == 4 and t.shape[0] == 1:
            t = t[0]
        if t.dim() != 3 or t.shape[0] != channels:
            raise InputError(f"item {i}: {what} must be ({channels},H,W), got shape {tuple(t.shape)}")
        return t

    blurry, sharp, motion = chw(blurry, "blurry", 3), chw(sharp, "sharp", 3), chw(motion, "motion", 2)
    if sharp is not None and sharp.shape != blurry.shape:
        raise InputError(f"item {i}: blurry {tuple(blurry.shape)} and sharp {tuple(sharp.shape)} differ in size")
    if motion is not None and motion.shape[-2:] != blurry.shape[-2:]:
        raise InputError(f"item {i}: motion {tuple(motion.shape)} and blurry {tuple(blurry.shape)} differ in size")
    return {"blurry": blurry, "sharp": sharp, "motion": motion}


def _is_pair_dir(p: Path) -> bool:
    return all((p / d).is_dir() for d in _PAIR_DIRS)


def _subdirs(p: Path) -> list[Path]:
    return sorted((c for c in p.iterdir() if c.is_dir() and not c.name.startswith(".")), key=lambda c: c.name)


def open_data(data: Any) -> EvalData:
    """Recognise what ``data`` is (see the module docstring) and wrap it; :class:`InputError` otherwise."""
    from .data import PairedFolder, UnpairedFolder
    from .data.io import is_image_file, list_images
    from .data.video import ImageFolderFrames, is_video_file

    if isinstance(data, EvalData):
        return data
    if not isinstance(data, (str, Path)):
        return _wrap_dataset(data)
    p = Path(data).expanduser()
    if not p.exists():
        raise InputError(f"data {p} does not exist; {_HINT}")
    if p.is_file():
        kind = "video" if is_video_file(p) else "image" if is_image_file(p) else "file"
        src = UnpairedFolder(p)                     # any other file is tried as a video (clear error if not)
        label = "single image" if kind == "image" else "video"
        return EvalData(src, "unpaired", f"unpaired {label} {p} ({len(src)} frame{'s' * (len(src) != 1)}; "
                        "no-reference metrics only)", [f"{p.stem}/{i:05d}" for i in range(len(src))]
                        if kind != "image" else [p.stem], p)
    entries = [c for c in p.iterdir() if not c.name.startswith(".")]
    if not entries:
        raise InputError(f"data folder {p} is empty; {_HINT}")
    if _is_pair_dir(p):
        ds = PairedFolder(p)
        return EvalData(ds, "paired", f"paired folder {p} (blur/ + sharp/, {len(ds)} pairs)", ds.names, p)
    subs = _subdirs(p)
    seqs = [c for c in subs if _is_pair_dir(c)]
    if seqs:
        ds = PairedFolder(p)
        return EvalData(ds, "gopro", f"GoPro layout {p} ({len(seqs)} sequences <seq>/{{blur,sharp}}/, "
                        f"{len(ds)} pairs)", ds.names, p)
    splits = [c for c in subs if any(_is_pair_dir(q) for q in _subdirs(c))]
    if splits:
        names = [c.name for c in splits]
        if len(splits) == 1:
            split = names[0]
        elif "test" in names:
            split = "test"
        else:
            raise InputError(f"{p} holds several splits {names} and none is 'test'; point --data at the split "
                             f"to evaluate, e.g. {p / names[0]}")
        ds = PairedFolder(p, split=split)
        n_seq = sum(_is_pair_dir(q) for q in _subdirs(p / split))
        other = f"; other splits {[n for n in names if n != split]} ignored" if len(splits) > 1 else ""
        return EvalData(ds, "gopro", f"GoPro layout {p}, split '{split}' ({n_seq} sequences, {len(ds)} pairs{other})",
                        ds.names, p)
    if list_images(p):
        ds = UnpairedFolder(p)
        files = ds.source.files if isinstance(ds.source, ImageFolderFrames) else None
        return EvalData(ds, "unpaired", f"unpaired image folder {p} ({len(ds)} images; no-reference metrics only)",
                        [f.stem for f in files] if files else None, p)
    raise InputError(f"unrecognised data folder {p}: no blur/ + sharp/ folders (paired or GoPro layout) and no "
                     f"images in it; {_HINT}")


def _wrap_dataset(ds: Any) -> EvalData:
    try:
        n = len(ds)
    except TypeError:
        raise InputError(f"data must be a path or an indexable dataset with len(), got {type(ds).__name__}") from None
    if n == 0:
        raise InputError(f"the {type(ds).__name__} given as data is empty")
    names = getattr(ds, "names", None)
    src = getattr(ds, "source", None)
    if names is None and hasattr(src, "files") and len(getattr(src, "files")) == n:
        names = [Path(f).stem for f in src.files]
    first = _as_item(ds[0], 0)
    kind = "paired" if first["sharp"] is not None else "unpaired"
    extra = ", with ground-truth motion" if first["motion"] is not None else ""
    desc = f"{type(ds).__name__} dataset ({n} items, {kind}{extra})"
    if kind == "unpaired":
        desc = desc[:-1] + "; no-reference metrics only)"
    return EvalData(ds, kind, desc, names, None)


def _select(n: int, max_images: Optional[int]) -> list[int]:
    """All indices, or ``max_images`` of them evenly spaced over the data (first and last included)."""
    if max_images is None or max_images >= n:
        return list(range(n))
    if int(max_images) < 1:
        raise InputError(f"max_images must be at least 1, got {max_images}")
    if max_images == 1:
        return [0]
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, int(max_images))})


def _center_crop(item: dict, crop: Optional[tuple[int, int]]) -> dict:
    if crop is None:
        return item
    h, w = item["blurry"].shape[-2:]
    ch, cw = min(int(crop[0]), h), min(int(crop[1]), w)
    top, left = (h - ch) // 2, (w - cw) // 2
    return {k: (v[..., top:top + ch, left:left + cw].contiguous() if v is not None else None) for k, v in item.items()}
