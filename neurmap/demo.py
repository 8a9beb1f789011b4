"""``neurmap demo``: see the shipped model deblur a clip in under two minutes, on any machine.

With no input it renders a short handheld-shake clip from scikit-image's bundled photos with
:func:`neurmap.core.data.camera_shake_clip` (GoPro-protocol averaging along a camera-shake trajectory, so
the sharp truth is known and PSNR can be reported), deblurs it with the default model through the fastest
backend available here — ONNX Runtime INT8 (``neurmap export``'s shipped recipe), then ONNX Runtime FP32,
then PyTorch — and writes into the output folder:

* ``side_by_side.mp4`` — blurry | deblurred, labelled;
* ``comparison.png`` — a few frames as rows: blurry | deblurred (| sharp);
* ``summary.json`` — PSNR before/after (synthetic clip), FPS, backend (and why faster ones were skipped),
  model, sizes and timings.

With ``input`` (a video file or a folder of frames) it does the same on that clip (no PSNR then; NIQE of
the middle frame when the NIQE parameters are installed). Exported/quantized ONNX files are cached under
``$NEURMAP_CACHE`` (default ``~/.cache/neurmap/demo``), keyed by the weights' hash and the frame size (INT8 also
by the recipe and a hash of the calibration frames), so a second run on the same clip starts at once.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from neurmap.core.errors import InputError, NeurmapError

BACKENDS = ("auto", "ort-int8", "ort-fp32", "torch")
#: the INT8 graph is used only if its output stays this close (PSNR, dB) to the float model's
INT8_MIN_AGREEMENT_DB = 35.0
#: scikit-image's bundled photos of at least 400 px height (small ones, e.g. chelsea at 300x451, would be
#: upscaled to the clip size: soft images that every GoPro-trained deblurrer "sharpens" into artifacts)
DEMO_IMAGES = ("astronaut", "coffee", "rocket", "stereo_motorcycle")


def cache_dir() -> Path:
    return Path(os.environ.get("NEURMAP_CACHE", Path.home() / ".cache" / "neurmap")) / "demo"


# ------------------------------------------------------------------------------------------------
# input clips
# ------------------------------------------------------------------------------------------------

def synthetic_clip(frames: int = 24, size: tuple[int, int] = (360, 640), max_blur_px: float = 20.0,
                   seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(blurry, sharp), each (frames, 3, H, W): camera shake over scikit-image's bundled photos."""
    import skimage.data

    from neurmap.core.data import camera_shake_clip

    images = []
    for name in DEMO_IMAGES:
        im = getattr(skimage.data, name)()
        images.append(im[0] if isinstance(im, tuple) else im)      # stereo_motorcycle: (left, right, disparity)
    images = images[:max(1, min(len(images), frames))]
    return camera_shake_clip(images, n_frames=frames, sub_frames=9, max_blur_px=max_blur_px,
                             max_rotation_deg=0.5, size=size, seed=seed)


def read_clip(path: str | Path, frames: int, max_side: int = 1280) -> tuple[torch.Tensor, Optional[float]]:
    """Up to ``frames`` frames of a video / image folder as (N, 3, H, W), downscaled to ``max_side``."""
    import torch.nn.functional as F

    from neurmap.core.data import frame_source

    src = frame_source(path)
    n = min(int(frames), len(src))
    if n < 1:
        raise InputError(f"{path} holds no frames")
    clip = torch.stack([src[i] for i in range(n)])
    h, w = clip.shape[-2:]
    if max(h, w) > max_side:
        s = max_side / max(h, w)
        clip = F.interpolate(clip, size=(round(h * s / 2) * 2, round(w * s / 2) * 2), mode="area")
    return clip.clamp(0, 1), src.fps


# ------------------------------------------------------------------------------------------------
# backends
# ------------------------------------------------------------------------------------------------

@dataclass
class Runner:
    name: str                               # "onnxruntime-int8" | "onnxruntime-fp32" | "pytorch"
    infer: Callable[[np.ndarray], np.ndarray]   # (1,3,Hp,Wp) float32 -> same
    notes: list[str] = field(default_factory=list)
    prepare_s: float = 0.0
    artifact: Optional[Path] = None          # the ONNX file an ORT runner runs


def _psnr_np(a: np.ndarray, b: np.ndarray) -> float:
    from neurmap.core.metrics import psnr
    return psnr(torch.from_numpy(a), torch.from_numpy(b))


def _ort_runner(model, meta: dict, hp: int, wp: int, calib: np.ndarray, int8: bool, threads: int,
                cache: Path) -> Runner:
    from neurmap.export.onnx_export import export_onnx, onnx_session

    t0 = time.perf_counter()
    key = f"{meta.get('weights_hash', 'nohash')}_{hp}x{wp}"
    cache.mkdir(parents=True, exist_ok=True)
    fp32 = cache / f"{key}_fp32.onnx"
    if not fp32.exists():
        export_onnx(model, fp32, height=hp, width=wp)
    path = fp32
    notes: list[str] = []
    if int8:
        from neurmap.export.targets import ExportRequest, build_ort_int8

        # ExportRequest's defaults are `neurmap export --target ort --precision int8`'s shipped recipe
        # (percentile ranges + the net's measured budget of sensitivity-chosen convs in float, 0 for the compact
        # nets): the demo shows what the CLI ships
        req = ExportRequest(model=model, weights_meta=meta, out=Path(), precision="int8", shapes=[(hp, wp)],
                            calib=np.ascontiguousarray(calib, dtype=np.float32), log=lambda _msg: None)
        recipe = f"{req.method}-x{req.exclude_budget if req.exclude == 'auto' else req.exclude}-q{req.qat_steps}"
        req.out = cache / f"{key}_int8_{recipe}_{_frames_hash(req.calib)}.onnx"
        if not req.out.exists():
            build_ort_int8(req)
        path = req.out
        kept = "no conv" if req.exclude_budget == 0 else f"up to {req.exclude_budget} convs"
        notes.append(f"INT8 recipe: neurmap export's default ({req.method} ranges, {kept} kept in float), "
                     f"calibrated on {len(calib)} frames of this clip")
    sess = onnx_session(path, threads=threads)
    name = sess.get_inputs()[0].name

    def infer(x: np.ndarray) -> np.ndarray:
        return sess.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]

    return Runner("onnxruntime-int8" if int8 else "onnxruntime-fp32", infer, notes=notes,
                  prepare_s=time.perf_counter() - t0, artifact=path)


def _frames_hash(frames: np.ndarray) -> str:
    """Content hash of the calibration frames (shape, dtype, values): part of the INT8 cache key, so another
    clip (or another frame pick) never reuses ranges calibrated on different frames."""
    import hashlib

    a = np.ascontiguousarray(frames)
    h = hashlib.sha256(f"{a.shape}{a.dtype}".encode())
    h.update(a.tobytes())
    return h.hexdigest()[:16]


def calibration_frames(padded: torch.Tensor, n: int = 4) -> np.ndarray:
    """The INT8 calibration frames of a padded clip: ``n`` evenly spaced frames (part of the INT8 cache key, so
    bench/default_speed.py calls this to time exactly the engine the demo builds)."""
    k = len(padded)
    return padded[np.linspace(0, k - 1, min(k, n)).round().astype(int)].numpy()


def _torch_runner(model) -> Runner:
    net = model.net.eval()
    offset = float(model.offset)

    @torch.no_grad()
    def infer(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        return (net(t + offset) - offset).numpy()

    return Runner("pytorch", infer)


def prepare_runner(model, meta: dict, hp: int, wp: int, calib: np.ndarray, backend: str = "auto",
                   threads: int = 0, cache: Optional[Path] = None) -> Runner:
    """The fastest backend that works here for frames of (hp, wp); fallbacks are explained in ``notes``."""
    if backend not in BACKENDS:
        raise NeurmapError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    order = ["ort-int8", "ort-fp32", "torch"] if backend == "auto" else [backend]
    cache = cache or cache_dir()
    notes: list[str] = []
    reference = _torch_runner(model).infer(calib[:1])
    for kind in order:
        try:
            if kind == "torch":
                r = _torch_runner(model)
            else:
                r = _ort_runner(model, meta, hp, wp, calib, kind == "ort-int8", threads, cache)
            out = r.infer(calib[:1])
            if not np.isfinite(out).all():
                raise NeurmapError("non-finite output")
            if kind == "ort-int8":
                notes += r.notes
                agree = _psnr_np(np.clip(out, 0, 1), np.clip(reference, 0, 1))
                notes.append(f"INT8 output agrees with the float model to {agree:.1f} dB PSNR")
                if agree < INT8_MIN_AGREEMENT_DB and backend == "auto":
                    raise NeurmapError(f"INT8 output differs from the float model ({agree:.1f} dB < "
                                       f"{INT8_MIN_AGREEMENT_DB} dB)")
            r.notes = notes
            return r
        except Exception as e:  # any failure of a faster backend falls through to the next one
            if backend != "auto":
                raise NeurmapError(f"backend {kind} failed: {str(e).splitlines()[0][:200]}") from None
            notes.append(f"{kind} skipped: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")
    raise NeurmapError("no backend could run the model")  # pragma: no cover - torch always works


# ------------------------------------------------------------------------------------------------
# outputs
# ------------------------------------------------------------------------------------------------

def _bgr(frame: torch.Tensor | np.ndarray) -> np.ndarray:
    a = frame.numpy() if isinstance(frame, torch.Tensor) else frame
    a = np.clip(np.round(a.transpose(1, 2, 0) * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(a[..., ::-1])


def _label(img: np.ndarray, text: str) -> np.ndarray:
    import cv2

    scale = max(0.4, img.shape[0] / 720)
    th = max(1, int(round(2 * scale)))
    (tw, tht), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, th)
    cv2.rectangle(img, (0, 0), (tw + 12, tht + 14), (0, 0, 0), -1)
    cv2.putText(img, text, (6, tht + 6), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), th, cv2.LINE_AA)
    return img


def write_video(path: Path, left: torch.Tensor, right: torch.Tensor, fps: float, labels: tuple[str, str]) -> Path:
    """Side-by-side MP4 (mp4v); falls back to MJPG AVI where this OpenCV has no MP4 writer."""
    import cv2

    h, w = left.shape[-2:]
    for suffix, fourcc in ((".mp4", "mp4v"), (".avi", "MJPG")):
        p = path.with_suffix(suffix)
        vw = cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*fourcc), float(fps), (2 * w, h))
        if vw.isOpened():
            for a, b in zip(left, right):
                vw.write(np.concatenate([_label(_bgr(a), labels[0]), _label(_bgr(b), labels[1])], axis=1))
            vw.release()
            if p.exists() and p.stat().st_size > 0:
                return p
        vw.release()
    raise NeurmapError("OpenCV could not write a video here (no mp4v or MJPG writer)")


def write_grid(path: Path, columns: list[tuple[str, torch.Tensor]], rows: list[int]) -> Path:
    import cv2

    lines = [np.concatenate([_label(_bgr(t[i]), f"{name} #{i}") for name, t in columns], axis=1) for i in rows]
    grid = np.concatenate(lines, axis=0)
    if grid.shape[1] > 2400:                                      # keep the PNG viewable
        s = 2400 / grid.shape[1]
        grid = cv2.resize(grid, (2400, int(grid.shape[0] * s)), interpolation=cv2.INTER_AREA)
    if not cv2.imwrite(str(path), grid):
        raise NeurmapError(f"could not write {path}")
    return path


# ------------------------------------------------------------------------------------------------
# the demo
# ------------------------------------------------------------------------------------------------

def run_demo(input: Optional[str | Path] = None, out_dir: str | Path = "neurmap-demo", frames: int = 24,
             size: tuple[int, int] = (360, 640), weights: str = "default", backend: str = "auto",
             threads: int = 0, max_blur_px: float = 20.0, seed: int = 0, progress: bool = True,
             console=None) -> dict:
    """Run the demo; returns the summary (also written to ``out_dir/summary.json``)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from neurmap.core.checkpoint import load_weights
    from neurmap.core.metrics import psnr_per_image
    from neurmap.core.models.wrapper import pad_to_multiple

    if frames < 1:
        raise InputError(f"frames must be at least 1, got {frames}")
    console = console or Console(stderr=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    cols = [TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(), TextColumn("{task.fields[info]}")]
    with Progress(*cols, console=console, disable=not progress, transient=False) as bar:
        # 1. the clip
        task = bar.add_task("clip", total=1, info="")
        t0 = time.perf_counter()
        sharp = None
        fps_in = None
        if input is None:
            bar.update(task, info=f"rendering {frames} camera-shake frames {size[0]}x{size[1]}")
            blurry, sharp = synthetic_clip(frames, size, max_blur_px=max_blur_px, seed=seed)
            source = {"kind": "synthetic camera shake (GoPro-protocol averaging)",
                      "images": [f"skimage.data.{n}" for n in DEMO_IMAGES], "max_blur_px": max_blur_px, "seed": seed}
        else:
            bar.update(task, info=f"reading {input}")
            blurry, fps_in = read_clip(input, frames)
            source = {"kind": "user clip", "path": str(input)}
        timings["clip_s"] = time.perf_counter() - t0
        n, _, h, w = blurry.shape
        bar.update(task, completed=1, info=f"{n} frames {h}x{w}")

        # 2. model + backend
        task = bar.add_task("backend", total=1, info=f"loading {weights}")
        model, meta = load_weights(weights)
        mult = model.pad_multiple
        padded, _ = pad_to_multiple(blurry, mult)
        hp, wp = padded.shape[-2:]
        calib = calibration_frames(padded)
        bar.update(task, info="preparing (first run exports / quantizes, then cached)")
        t0 = time.perf_counter()
        runner = prepare_runner(model, meta, hp, wp, calib, backend, threads)
        timings["backend_s"] = time.perf_counter() - t0
        bar.update(task, completed=1, info=runner.name)

        # 3. deblur
        task = bar.add_task("deblur", total=n, info="")
        outs = []
        infer_s = 0.0
        for i in range(n):
            x = padded[i:i + 1].numpy()
            t0 = time.perf_counter()
            y = runner.infer(x)
            infer_s += time.perf_counter() - t0
            outs.append(torch.from_numpy(y[0, :, :h, :w]).clamp(0, 1))
            bar.update(task, advance=1, info=f"{(i + 1) / infer_s:.1f} fps")
        deblurred = torch.stack(outs)
        timings["inference_s"] = infer_s

        # 4. outputs
        task = bar.add_task("write", total=3, info=str(out))
        t0 = time.perf_counter()
        video = write_video(out / "side_by_side.mp4", blurry, deblurred, fps_in or 12.0, ("blurry", "deblurred"))
        bar.update(task, advance=1)
        columns = [("blurry", blurry), ("deblurred", deblurred)] + ([("sharp", sharp)] if sharp is not None else [])
        rows = sorted(set(np.linspace(0, n - 1, min(n, 3)).round().astype(int).tolist()))
        grid = write_grid(out / "comparison.png", columns, rows)
        bar.update(task, advance=1)

        quality: dict = {}
        if sharp is not None:
            pb, pd = psnr_per_image(blurry, sharp), psnr_per_image(deblurred, sharp)
            quality = {"psnr_blurry_db": round(float(pb.mean()), 3), "psnr_deblurred_db": round(float(pd.mean()), 3),
                       "psnr_gain_db": round(float((pd - pb).mean()), 3),
                       "frames_improved": int((pd > pb).sum())}
        else:
            try:
                from neurmap.core.metrics import niqe
                mid = n // 2
                quality = {"niqe_blurry_mid_frame": round(niqe(blurry[mid]), 3),
                           "niqe_deblurred_mid_frame": round(niqe(deblurred[mid]), 3)}
            except Exception as e:  # NIQE parameters absent on a fresh machine: optional
                quality = {"niqe": f"not computed ({type(e).__name__})"}
        summary = {
            "model": {"weights": weights, "architecture": meta.get("architecture"),
                      "weights_hash": meta.get("weights_hash"),
                      "heldout_psnr_db": meta.get("provenance", {}).get("heldout_psnr")},
            "backend": runner.name, "backend_notes": runner.notes, "threads": threads or "default",
            "source": source, "frames": n, "size": [h, w], "padded_size": [int(hp), int(wp)],
            "fps": round(n / infer_s, 2), "ms_per_frame": round(1000 * infer_s / n, 1),
            **quality,
            "timings_s": {k: round(v, 2) for k, v in timings.items()},
            "files": {"video": video.name, "grid": grid.name, "summary": "summary.json"},
        }
        summary["timings_s"]["total_s"] = round(time.perf_counter() - t_start, 2)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        bar.update(task, advance=1)
    summary["out_dir"] = str(out.resolve())
    return summary
