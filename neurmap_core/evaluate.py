"""Evaluate a deblur net on paired, GoPro-layout or unpaired data: PSNR, SSIM, LPIPS, NIQE, motion error.

``evaluate(model, data)`` runs the net on every (or ``max_images`` evenly spaced) item under
``torch.inference_mode``, clamps its output to [0, 1] and scores both the input (the blurry image,
the do-nothing baseline) and the output:

* ``psnr``  -- :func:`neurmap.core.metrics.psnr.psnr_per_image`, 8-bit quantised, vs the sharp image;
* ``ssim``  -- :func:`neurmap.core.metrics.ssim.ssim_per_image` (11x11 Gaussian, sigma 1.5), vs sharp;
* ``lpips`` -- LPIPS v0.1 AlexNet (:mod:`neurmap.core.metrics.lpips`), vs sharp (lower is better);
* ``niqe``  -- no-reference NIQE (:mod:`neurmap.core.metrics.niqe`, MATLAB rgb2gray), on the input, the
  output and, as a reference, on the sharp image when there is one (lower is more natural).

Full-reference metrics need a sharp image and are skipped (with a note) on unpaired data. Where an
item carries its ground-truth motion (e.g. :class:`~neurmap.core.data.KernelBlurred`) and a motion net
is given, the motion-map error is ``mean((20 vn(M(B)) - 20 vn(m))^2)`` in px^2 (plus the mean endpoint
error in px), ``vn`` being :func:`~neurmap.core.reblur.canonical_motion` (a linear blur has no sign).

Accepted data: a path to ``<root>/{blur,sharp}/`` (paired, matched by file name), the GoPro layout
``<root>/<split>/<seq>/{blur,sharp}/`` or ``<root>/<seq>/{blur,sharp}/`` (several splits: ``test`` is
used), a folder of images / a video / one image (unpaired); or any dataset object whose items are dicts
(``blurry``/``sharp``/``motion``, or ``image``), ``(blurry, sharp)`` pairs or lone image tensors.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError, NeurmapError

METRICS = ("psnr", "ssim", "lpips", "niqe")
FULL_REFERENCE = ("psnr", "ssim", "lpips")
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False, "niqe": False}
UNITS = {"psnr": "dB", "ssim": "", "lpips": "", "niqe": ""}
GRID_EXAMPLES = 4
GRID_TILE_WIDTH = 320
_PAIR_DIRS = ("blur", "sharp")
_HINT = ("give a paired folder (<root>/blur/ + <root>/sharp/, same file names), the GoPro layout "
         "(<root>/<split>/<seq>/{blur,sharp}/), an image folder or a video")

PathLike = Union[str, Path]


# ----------------------------------------------------------------------------------------------- data
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


# --------------------------------------------------------------------------------------------- models
def _resolve_model(model: Any) -> tuple[nn.Module, dict]:
    from .checkpoint import load_weights

    if isinstance(model, (str, Path)):
        net, meta = load_weights(model)
        return net, {"weights": str(model), "architecture": meta.get("architecture"),
                     "input_range": meta.get("input_range"), "weights_hash": meta.get("weights_hash")}
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a DeblurModel (from neurmap.core.load_weights) or a weights path, "
                         f"got {type(model).__name__}")
    return model, {"weights": None, "architecture": getattr(model, "name", type(model).__name__) or type(model).__name__,
                   "input_range": getattr(model, "input_range", None), "weights_hash": None}


def _checkpoint_has_motion(model: Any) -> bool:
    if not isinstance(model, (str, Path)):
        return False
    from .checkpoint import read_metadata, resolve_weights

    try:
        p = resolve_weights(model)
        return p.suffix == ".safetensors" and "motion_architecture" in read_metadata(p)
    except NeurmapError:
        return False


def _resolve_motion(motion: Any, model: Any) -> tuple[Optional[nn.Module], Optional[str]]:
    from .checkpoint import load_motion
    from .models.wrapper import MotionModel

    if motion is None:
        if _checkpoint_has_motion(model):
            return load_motion(model).eval(), f"motion net carried in {model}"
        return None, None
    if isinstance(motion, (str, Path)):
        return load_motion(motion).eval(), str(motion)
    if isinstance(motion, MotionModel):
        return motion.eval(), "MotionModel"
    if isinstance(motion, nn.Module):
        if hasattr(motion, "pad_multiple"):
            return MotionModel(motion).eval(), type(motion).__name__
        return motion.eval(), type(motion).__name__
    raise InputError(f"motion must be a motion net, a checkpoint path or None, got {type(motion).__name__}")


def _device_of(module: nn.Module) -> torch.device:
    p = next(iter(module.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


# -------------------------------------------------------------------------------------------- metrics
class _Scorer:
    """Computes the requested metrics of one image; a metric an image is too small for gives None + a note."""

    def __init__(self, metrics: Sequence[str], notes: list[str], device: torch.device) -> None:
        self.metrics, self.notes, self.device = tuple(metrics), notes, device
        self._lpips = None
        self._lpips_failed = False

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def lpips_net(self):
        if self._lpips is None and not self._lpips_failed:
            from .metrics.lpips import load_lpips_alex
            try:
                self._lpips = load_lpips_alex(device=self.device)
            except NeurmapError as e:
                self._lpips_failed = True
                self.note(f"LPIPS skipped: {e}")
        return self._lpips

    def full_reference(self, x: torch.Tensor, sharp: torch.Tensor) -> dict:
        from .metrics.lpips import lpips_per_image
        from .metrics.psnr import psnr_per_image
        from .metrics.ssim import ssim_per_image

        out: dict[str, Optional[float]] = {}
        if "psnr" in self.metrics:
            out["psnr"] = _num(psnr_per_image(x, sharp)[0])
        if "ssim" in self.metrics:
            out["ssim"] = _num(ssim_per_image(x, sharp)[0])
        if "lpips" in self.metrics:
            net = self.lpips_net()
            val = None
            if net is not None:
                try:
                    val = _num(lpips_per_image(x, sharp, net)[0])
                except InputError as e:
                    self.note(f"LPIPS skipped on some images: {e}")
            out["lpips"] = val
        return out

    def niqe(self, x: torch.Tensor) -> Optional[float]:
        from .metrics.niqe import niqe

        try:
            return _num(niqe(x[0].cpu()))
        except InputError as e:
            self.note(f"NIQE skipped on some images: {e} (NIQE needs at least two 96x96 blocks)")
            return None


def _num(v) -> Optional[float]:
    """A finite float, or None (JSON has no NaN)."""
    v = float(v)
    return v if math.isfinite(v) else None


def _finite_mean(values: Iterable[Optional[float]]) -> Optional[float]:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(sum(v) / len(v)) if v else None


def _motion_error(pred: torch.Tensor, truth: torch.Tensor) -> dict:
    from .models.motion import MOTION_SCALE
    from .reblur import canonical_motion

    d = (canonical_motion(pred.float()) - canonical_motion(truth.float())) * MOTION_SCALE   # px
    return {"mse_px2": _num(d.pow(2).mean()), "epe_px": _num(d.norm(dim=1).mean())}


# ----------------------------------------------------------------------------------------------- grid
def _tile(img: torch.Tensor, width: int) -> torch.Tensor:
    h, w = img.shape[-2:]
    if w <= width:
        return img.clone()
    nh = max(1, int(round(h * width / w)))
    return F.interpolate(img[None], size=(nh, width), mode="bilinear", align_corners=False, antialias=True)[0].clamp(0, 1)


def _label(arr: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.45) -> None:
    import cv2

    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x, y = org
    cv2.rectangle(arr, (x - 2, y - th - 3), (x + tw + 2, y + base), (0, 0, 0), thickness=-1)
    cv2.putText(arr, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)


def write_grid(path: PathLike, rows: Sequence[dict], tile_width: int = GRID_TILE_WIDTH, gap: int = 4) -> Path:
    """A PNG grid, one row per example: blurry | deblurred | sharp (when any row has one), written atomically.

    ``rows``: dicts with (3,H,W) tensors ``blurry``, ``output``, optionally ``sharp``, and optional captions
    ``caption_blurry`` / ``caption_output``.
    """
    from .data.io import array_to_tensor, tensor_to_array, write_image

    if not rows:
        raise InputError("no examples to put in the grid")
    cols = ["blurry", "output"] + (["sharp"] if any(r.get("sharp") is not None for r in rows) else [])
    titles = {"blurry": "blurry (input)", "output": "deblurred (output)", "sharp": "sharp (target)"}
    tiles = [[_tile(r[c], tile_width) if r.get(c) is not None else None for c in cols] for r in rows]
    tw = max(t.shape[-1] for row in tiles for t in row if t is not None)
    heights = [max(t.shape[-2] for t in row if t is not None) for row in tiles]
    header = 22
    H = header + sum(heights) + gap * (len(rows) - 1)
    W = len(cols) * tw + gap * (len(cols) - 1)
    canvas = torch.ones(3, H, W)
    y = header
    for r, row, rh in zip(rows, tiles, heights):
        for j, t in enumerate(row):
            x = j * (tw + gap)
            if t is None:
                canvas[:, y:y + rh, x:x + tw] = 0.5
            else:
                canvas[:, y:y + t.shape[-2], x:x + t.shape[-1]] = t
        y += rh + gap
    arr = tensor_to_array(canvas).copy()                   # (H,W,3) RGB uint8
    for j, c in enumerate(cols):
        _label(arr, titles[c], (j * (tw + gap) + 4, 16), 0.5)
    y = header
    for r, rh in zip(rows, heights):
        for j, c in enumerate(cols):
            cap = r.get(f"caption_{c}")
            if cap:
                _label(arr, cap, (j * (tw + gap) + 4, y + rh - 6))
        y += rh + gap
    return write_image(path, array_to_tensor(arr, bgr=False))


# ------------------------------------------------------------------------------------------ evaluation
def _check_metrics(metrics: Iterable[str]) -> tuple[str, ...]:
    if isinstance(metrics, str):
        metrics = [m for m in metrics.replace(",", " ").split() if m]
    ms = tuple(dict.fromkeys(str(m).lower() for m in metrics))
    bad = [m for m in ms if m not in METRICS]
    if bad:
        raise InputError(f"unknown metric(s) {bad}; choose from {', '.join(METRICS)}")
    if not ms:
        raise InputError(f"no metrics requested; choose from {', '.join(METRICS)}")
    return ms


def _check_crop(crop) -> Optional[tuple[int, int]]:
    if crop is None:
        return None
    if isinstance(crop, int):
        crop = (crop, crop)
    try:
        h, w = (int(v) for v in crop)
    except (TypeError, ValueError):
        raise InputError(f"crop must be (height, width), got {crop!r}") from None
    if h < 1 or w < 1:
        raise InputError(f"crop must be positive, got {h}x{w}")
    return h, w


def evaluate(model, dataset_or_path, metrics: Sequence[str] = METRICS, max_images: Optional[int] = None,
             crop: Optional[tuple[int, int]] = None, motion=None, grid_path: Optional[PathLike] = None, *,
             grid_examples: int = GRID_EXAMPLES, progress: bool = True) -> dict:
    """Score ``model`` on ``dataset_or_path``; returns a JSON-ready dict (see the module docstring).

    ``model``: a :class:`~neurmap.core.DeblurModel` or anything :func:`~neurmap.core.load_weights` takes.
    ``max_images``: evaluate only that many items, evenly spaced over the data. ``crop``: (H, W) centre
    crop of every item (smaller images are kept whole). ``motion``: a motion net, a checkpoint path, or
    None (then the motion net carried in ``model``'s checkpoint, if ``model`` is a path and it has one).
    ``grid_path``: write a PNG grid of ``grid_examples`` examples there. ``progress``: a rich bar on stderr.

    Result keys: ``data`` (path, kind, description, counts), ``settings``, ``means`` (``input``/``output``
    metric means, ``sharp`` NIQE, ``gain`` = output - input, ``motion`` errors), ``per_image`` (one row per
    item: index, name, size, ``input``, ``output``, ``sharp``, ``motion``), ``notes`` and ``timing``.
    Values a metric could not give (no reference, image too small) are None.
    """
    ms = _check_metrics(metrics)
    crop = _check_crop(crop)
    if grid_path is not None:
        from .data.io import IMAGE_EXTENSIONS
        if Path(grid_path).suffix.lower() not in IMAGE_EXTENSIONS:
            raise InputError(f"grid path {grid_path} needs an image extension such as .png")
    data = open_data(dataset_or_path)
    net, model_info = _resolve_model(model)
    motion_net, motion_desc = _resolve_motion(motion, model)
    net.eval()
    device = _device_of(net)
    indices = _select(len(data), max_images)
    notes: list[str] = []
    scorer = _Scorer(ms, notes, device)
    fr = [m for m in ms if m in FULL_REFERENCE]

    rows: list[dict] = []
    grid_rows: list[dict] = []
    t_start = time.perf_counter()
    t_infer = 0.0
    have_sharp = have_motion = False
    bar = _progress(progress)
    with bar, torch.inference_mode():
        task = bar.add_task(f"eval {model_info['architecture']}", total=len(indices))
        for i in indices:
            item = _center_crop(data.get(i), crop)
            blurry = item["blurry"][None].to(device)
            sharp = item["sharp"][None].to(device) if item["sharp"] is not None else None
            t0 = time.perf_counter()
            out = net(blurry)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t_infer += time.perf_counter() - t0
            if not torch.isfinite(out).all():
                scorer.note("the model produced NaN/Inf values; they were set to 0 before scoring")
                out = torch.nan_to_num(out, nan=0.0, posinf=1.0, neginf=0.0)
            out = out.clamp(0.0, 1.0)
            row: dict[str, Any] = {"index": i, "name": data.name(i), "size": list(blurry.shape[-2:]),
                                   "input": {}, "output": {}}
            if sharp is not None and fr:
                have_sharp = True
                row["input"].update(scorer.full_reference(blurry, sharp))
                row["output"].update(scorer.full_reference(out, sharp))
            if "niqe" in ms:
                row["input"]["niqe"] = scorer.niqe(blurry)
                row["output"]["niqe"] = scorer.niqe(out)
                if sharp is not None:
                    have_sharp = True
                    row["sharp"] = {"niqe": scorer.niqe(sharp)}
            if item["motion"] is not None:
                have_motion = True
                if motion_net is not None:
                    pred = motion_net(blurry.to(_device_of(motion_net)))
                    row["motion"] = _motion_error(pred, item["motion"][None].to(pred.device))
            rows.append(row)
            if grid_path is not None and len(grid_rows) < grid_examples:
                grid_rows.append(_grid_row(item, out, row))
            bar.advance(task)

    if fr and not have_sharp:
        scorer.note(f"no sharp references in this data: {', '.join(m.upper() for m in fr)} skipped "
                    "(no-reference NIQE only)")
    if motion_net is not None and not have_motion:
        scorer.note("a motion net was given but the data carries no ground-truth motion: motion error skipped")
    if have_motion and motion_net is None:
        scorer.note("the data carries ground-truth motion but no motion net was given (--motion): motion error skipped")

    means = _means(rows, ms)
    grid_written = None
    if grid_path is not None and grid_rows:
        grid_written = str(write_grid(grid_path, grid_rows))
    total = time.perf_counter() - t_start
    return {
        "data": {"path": str(data.path) if data.path is not None else None, "kind": data.kind,
                 "description": data.description, "n_total": len(data), "n_evaluated": len(rows),
                 "has_reference": have_sharp, "has_motion": have_motion},
        "settings": {**model_info, "metrics": list(ms), "max_images": max_images,
                     "crop": list(crop) if crop else None, "motion": motion_desc, "grid": grid_written,
                     "device": str(device), "torch": torch.__version__},
        "means": means,
        "per_image": rows,
        "notes": notes,
        "timing": {"total_s": round(total, 3), "inference_s_per_image": round(t_infer / max(len(rows), 1), 4)},
    }


def _grid_row(item: dict, out: torch.Tensor, row: dict) -> dict:
    def cap(side: str) -> Optional[str]:
        r = row[side]
        parts = []
        if r.get("psnr") is not None:
            parts.append(f"{r['psnr']:.2f} dB")
        if r.get("niqe") is not None:
            parts.append(f"NIQE {r['niqe']:.2f}")
        return "  ".join(parts) or None

    return {"blurry": item["blurry"], "output": out[0].cpu(), "sharp": item["sharp"],
            "caption_blurry": cap("input"), "caption_output": cap("output")}


def _means(rows: list[dict], ms: Sequence[str]) -> dict:
    means: dict[str, Any] = {"input": {}, "output": {}, "gain": {}}
    for m in ms:
        a = _finite_mean(r["input"].get(m) for r in rows)
        b = _finite_mean(r["output"].get(m) for r in rows)
        if a is None and b is None:
            continue
        means["input"][m], means["output"][m] = a, b
        means["gain"][m] = (b - a) if a is not None and b is not None else None
    sharp = _finite_mean(r.get("sharp", {}).get("niqe") for r in rows)
    if sharp is not None:
        means["sharp"] = {"niqe": sharp}
    mot = [r["motion"] for r in rows if "motion" in r]
    if mot:
        means["motion"] = {k: _finite_mean(x[k] for x in mot) for k in ("mse_px2", "epe_px")}
    return means


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), transient=True, disable=not enabled)


# -------------------------------------------------------------------------------------------- reports
def summary_rows(result: dict) -> list[tuple[str, str, str, str, str]]:
    """(metric, better, input, output, change) strings for a summary table of ``result['means']``."""
    def fmt(v: Optional[float], m: str, signed: bool = False) -> str:
        if v is None:
            return "-"
        digits = 2 if m in ("psnr", "niqe") else 4
        s = f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"
        return f"{s} {UNITS[m]}".strip()

    means = result["means"]
    rows = []
    for m in METRICS:
        if m not in means["input"]:
            continue
        rows.append((m.upper(), "higher" if HIGHER_IS_BETTER[m] else "lower", fmt(means["input"][m], m),
                     fmt(means["output"][m], m), fmt(means["gain"].get(m), m, signed=True)))
    if "sharp" in means:
        rows.append(("NIQE of sharp", "lower", "-", fmt(means["sharp"]["niqe"], "niqe"), "(reference)"))
    if "motion" in means:
        mo = means["motion"]
        rows.append(("motion MSE px^2", "lower", "-", "-" if mo["mse_px2"] is None else f"{mo['mse_px2']:.3f}", ""))
        rows.append(("motion EPE px", "lower", "-", "-" if mo["epe_px"] is None else f"{mo['epe_px']:.3f}", ""))
    return rows


def write_json(result: dict, path: PathLike) -> Path:
    """Write ``result`` as indented JSON, atomically (temp file + rename)."""
    from .checkpoint import atomic_write

    text = json.dumps(result, indent=2, allow_nan=False)
    return atomic_write(Path(path), lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))


__all__ = ["evaluate", "open_data", "EvalData", "write_grid", "write_json", "summary_rows", "METRICS"]
