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

Recognising the data lives in :mod:`.eval_data`, the grid / table / JSON reports in :mod:`.eval_report`
(both re-exported here).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import torch
from torch import nn

from .errors import InputError, NeurmapError
from .eval_data import EvalData, _center_crop, _select, open_data  # noqa: F401  (re-exported)
from .eval_report import (GRID_TILE_WIDTH, HIGHER_IS_BETTER, METRICS, UNITS, PathLike,  # noqa: F401
                          summary_rows, write_grid, write_json)

FULL_REFERENCE = ("psnr", "ssim", "lpips")
GRID_EXAMPLES = 4


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


__all__ = ["evaluate", "open_data", "EvalData", "write_grid", "write_json", "summary_rows", "METRICS"]
