"""``neurmap export`` / ``neurmap check`` / ``neurmap bench``: parse, validate per target, call, print one line.

The lead's ``neurmap/cli.py`` calls :func:`register` to add the three commands.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from neurmap.core.errors import NeurmapError
from neurmap.core.options import parse_hw

PARITY_CROP = 256
DEFAULT_SHAPE = (720, 1280)
THRESHOLDS = {"fp32": 50.0, "fp16": 45.0, "int8": 35.0, "w8": 35.0, "w8a8": 35.0}


def gate_failures(p, precision: str, min_psnr: Optional[float] = None, max_loss: float = 0.2) -> list[str]:
    """Why an artifact's parity fails the gate (``neurmap check``'s thresholds, which export reports too); [] to pass."""
    need = min_psnr if min_psnr is not None else THRESHOLDS.get(precision, 35.0)
    fails = []
    if p.psnr_vs_float < need:
        fails.append(f"PSNR vs float {p.psnr_vs_float:.2f} dB < {need:.1f}")
    if precision in ("int8", "w8a8") and p.loss_db is not None and p.loss_db > max_loss:
        fails.append(f"loss vs ground truth {p.loss_db:.2f} dB > {max_loss:.2f}")
    return fails


def _err(msg: str) -> None:
    raise NeurmapError(msg)


def _log(msg: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[dim]{msg}[/dim]", highlight=False)


def _sources(calib: str) -> list[Path]:
    paths = [Path(p.strip()) for p in calib.split(",") if p.strip()]
    for p in paths:
        if not p.exists():
            raise NeurmapError(f"--calib {p}: does not exist; give a folder of frames or a video (comma-separate several)")
    return paths


def _sample_frames(n: int, h: int, w: int) -> np.ndarray:
    """Parity frames when no --calib is given: photos that ship with scikit-image, cropped (or tiled) to h x w."""
    import skimage.data as d

    from neurmap.core.data.io import array_to_tensor

    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket")[:max(1, n)]:
        t = array_to_tensor(getattr(d, name)())
        if t.shape[1] < h or t.shape[2] < w:
            reps = (1, -(-h // t.shape[1]), -(-w // t.shape[2]))
            t = t.repeat(*reps)
        out.append(t[:, :h, :w].numpy())
    return np.stack(out).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------------------

def export_cmd(
    target: str = typer.Option("onnx", "--target", "-t", help="onnx | ort | trt | coreml (aliases: tensorrt, engine, ios, mlpackage, onnxruntime)."),
    weights: str = typer.Option(..., "--weights", "-w", help="Checkpoint, official DMPHN folder or shipped model name."),
    precision: Optional[str] = typer.Option(None, "--precision", "-p", help="fp32 | fp16 | int8 (Core ML also w8, w8a8). Default per target."),
    shape: Optional[str] = typer.Option(None, "--shape", help="Input HxW (multiple of the net's pad multiple), default 720x1280."),
    shapes: Optional[str] = typer.Option(None, "--shapes", help="Several HxW,HxW: Core ML EnumeratedShapes / TensorRT profile min..max."),
    dynamic: bool = typer.Option(False, "--dynamic", help="Free N, H, W (onnx, ort, trt)."),
    calib: Optional[str] = typer.Option(None, "--calib", help="Calibration frames: image folder(s) or video(s), comma-separated."),
    calib_frames: Optional[int] = typer.Option(None, "--calib-frames", help="How many calibration crops (default 32)."),
    method: Optional[str] = typer.Option(None, "--method", help="INT8 ranges: percentile (default, 99.999th: keeps the rare highlights a deblur net needs) | mse | entropy | minmax."),
    exclude: Optional[str] = typer.Option(None, "--exclude", help="INT8 nodes kept in float: auto (default) | none | node,node."),
    exclude_budget: Optional[int] = typer.Option(None, "--exclude-budget", help="Max convs kept in float by --exclude auto (default: measured per network — 12 of DMPHN 1-2-4's 90, 0.09 dB loss; 0 for the compact nets, 0.01-0.03 dB loss at 2.1x the speed of 12)."),
    qat_steps: Optional[int] = typer.Option(None, "--qat-steps", help="Quantization-aware fine-tuning steps on the calibration frames (default 0)."),
    workspace: Optional[float] = typer.Option(None, "--workspace", help="TensorRT builder workspace in GiB (default 2)."),
    image_io: bool = typer.Option(False, "--image-io", help="Core ML: ImageType input and output (camera pipelines)."),
    min_target: Optional[str] = typer.Option(None, "--min-target", help="Core ML minimum deployment target (default iOS17)."),
    opset: Optional[int] = typer.Option(None, "--opset", help="ONNX opset (default 17; TensorRT wants 16-19)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output path (default: derived from the net, target, precision, shape)."),
    no_parity: bool = typer.Option(False, "--no-parity", help="Skip the parity check against the float model."),
    parity_frames: Optional[int] = typer.Option(None, "--parity-frames", help="Hold-out frames for the parity check (default 2)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Export a deblurring net to ONNX, ONNX Runtime INT8, TensorRT or Core ML, then check it against the float model."""
    from .targets import ExportRequest, TARGETS, artifact_json, default_out, resolve_target

    spec = resolve_target(target)
    given = {"precision": precision, "shape": shape, "shapes": shapes, "dynamic": dynamic or None, "calib": calib,
             "calib_frames": calib_frames, "method": method, "exclude": exclude, "exclude_budget": exclude_budget,
             "qat_steps": qat_steps, "workspace": workspace, "image_io": image_io or None, "min_target": min_target,
             "opset": opset, "parity_frames": parity_frames}
    bad = [k for k, v in given.items() if v is not None and k not in spec.options]
    if bad:
        where = {k: [t for t, s in TARGETS.items() if k in s.options] for k in bad}
        parts = [f"--{k.replace('_', '-')} (only for {', '.join(where[k]) or 'no target'})" for k in bad]
        takes = sorted(o.replace("_", "-") for o in spec.options - {"weights", "out"})
        _err(f"--target {spec.name} does not take {', '.join(parts)}; it takes --{', --'.join(takes)}")
    prec = (precision or spec.default_precision).lower()
    if prec not in spec.precisions:
        _err(f"--target {spec.name} does not do --precision {prec}; choose one of {', '.join(spec.precisions)}")
    if shape and shapes:
        _err("give --shape HxW or --shapes HxW,HxW, not both")
    if dynamic and shapes and spec.name != "trt":
        _err("--dynamic and --shapes do not combine for this target")
    size_list = [parse_hw(s, "--shapes") for s in shapes.split(",")] if shapes else [parse_hw(shape, "--shape") if shape else DEFAULT_SHAPE]
    needs_calib = prec in ("int8", "w8a8") and spec.name in ("ort", "trt", "coreml")
    if needs_calib and not calib:
        _err(f"--precision {prec} needs --calib DIR|VIDEO: calibration frames like the ones the model will see "
             "(e.g. ../shared/data/gopro240/GOPR0477_11_00, turned into GoPro-protocol blurry frames)")
    if calib and not needs_calib:
        _err(f"--calib is only used for int8 (and Core ML w8a8); --precision {prec} takes no calibration")
    if method is not None:
        from .ort_quant import METHODS
        if method not in METHODS:
            import difflib
            near = difflib.get_close_matches(method, METHODS, n=1)
            _err(f"--method {method!r} is not one of {', '.join(METHODS)}" + (f" (did you mean {near[0]!r}?)" if near else ""))
    if min_target is not None:
        from .coreml import TARGETS as CM_TARGETS
        if min_target not in CM_TARGETS:
            _err(f"--min-target {min_target!r}: choose one of {', '.join(CM_TARGETS)}")

    from neurmap.core import load_weights

    model, meta = load_weights(weights)
    mult = model.pad_multiple
    for h, w in size_list:
        if h % mult or w % mult:
            _err(f"size {h}x{w} is not a multiple of {meta['architecture']}'s pad multiple {mult}; use "
                 f"{-(-h // mult) * mult}x{-(-w // mult) * mult} (the runtime pads frames to it and crops)")
    if spec.name == "trt":
        from .trt import import_tensorrt
        import_tensorrt()                           # one red line, before any calibration work, where there is no GPU
    n_parity = 0 if no_parity else (parity_frames if parity_frames is not None else 2)
    calib_set = hold = None
    if calib:
        from neurmap.calibration.frames import select_frames
        ch, cw = min(size_list[0][0], PARITY_CROP), min(size_list[0][1], PARITY_CROP)
        ch, cw = ch // mult * mult, cw // mult * mult
        _log(f"selecting {calib_frames or 32} calibration frames (+{n_parity} hold-out) from {calib}")
        calib_set, hold = select_frames(_sources(calib), calib_frames or 32, ch, cw, holdout=n_parity)
    path = out or default_out(spec, meta["architecture"], prec, size_list, dynamic)
    req = ExportRequest(model=model, weights_meta=meta, out=Path(path), precision=prec, shapes=size_list, dynamic=dynamic,
                        calib=None if calib_set is None else calib_set.blurry, method=method or "percentile",
                        exclude=exclude or "auto", exclude_budget=exclude_budget,
                        qat_steps=qat_steps or 0, workspace_gb=workspace or 2.0, image_io=image_io,
                        min_target=min_target or "iOS17", opset=opset or 17, log=_log)
    art = spec.build(req)
    par = None
    if n_parity:
        par = _parity(art.path, model, hold, n_parity, size_list[0], mult)
    summary = artifact_json(art, par)
    # written, but never silently: `neurmap check`'s float threshold (2 hold-out frames are too few to judge the
    # 0.2 dB loss vs ground truth: a good INT8 export loses 0.65 dB there at 44 dB and passes check on 4 others)
    fails = gate_failures(par, art.precision, max_loss=float("inf")) if par is not None else []
    if fails:
        summary["gate_failures"] = fails
        asked, got = calib_frames or 32, 0 if calib_set is None else len(calib_set.blurry)
        fix = (f"calibrate on more frames (got {got} of the {asked} asked: give --calib more or longer footage)"
               if calib_set is not None and got < asked else
               "re-export with other --exclude / more --calib frames, or --precision fp16")
        _log(f"[bold red]warning: {art.path} fails the parity gate ({'; '.join(fails)}): {fix}[/bold red]")
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    line = f"{art.path}  {art.size_mb:.1f} MB  {art.target} {art.precision}  {'dynamic' if art.dynamic else ','.join(summary['shapes'])}"
    if art.info.get("excluded"):
        line += f"  ({len(art.info['excluded'])} nodes kept float)"
    if par is not None:
        line += f"  parity: {par.summary()}"
    elif n_parity and art.target in ("coreml", "trt"):
        line += "  parity: skipped"
    print(line)


def _parity(path: Path, model, hold, n: int, shape: tuple[int, int], mult: int):
    from neurmap.calibration.parity import parity, torch_runner

    from .runners import padded_runner

    try:
        run = padded_runner(path)
    except NeurmapError as e:
        _log(f"parity check skipped: {e}")
        return None
    if hold is not None and len(hold):
        blurry, sharp = hold.blurry[:n], (None if hold.sharp is None else hold.sharp[:n])
    else:
        h, w = min(shape[0], PARITY_CROP) // mult * mult, min(shape[1], PARITY_CROP) // mult * mult
        blurry, sharp = _sample_frames(n, h, w), None
    p, _ = parity(run, torch_runner(model), blurry, sharp)
    return p


# ---------------------------------------------------------------------------------------------------------
# check
# ---------------------------------------------------------------------------------------------------------

def check_cmd(
    artifact: Path = typer.Argument(..., help="An exported .onnx / .engine / .mlpackage."),
    data: str = typer.Option(..., "--data", "-d", help="Frames to check on: folder(s) or video(s); a 240 fps sharp folder gives ground truth."),
    weights: Optional[str] = typer.Option(None, "--weights", "-w", help="Float weights to compare with (default: the source recorded in the artifact)."),
    frames: int = typer.Option(4, "--frames", help="How many frames (crops) to check."),
    size: Optional[str] = typer.Option(None, "--size", help="Crop HxW for dynamic artifacts (default 256x256)."),
    min_psnr: Optional[float] = typer.Option(None, "--min-psnr", help="Minimum PSNR vs float in dB (default fp16 45, int8 35, fp32 50)."),
    max_loss: float = typer.Option(0.2, "--max-loss", help="Maximum PSNR loss vs ground truth in dB for int8 (when ground truth is known)."),
    seed: int = typer.Option(7, "--seed", help="Frame selection seed."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Check an artifact against the float model (and ground truth): exit 1 when below the thresholds."""
    from neurmap.calibration.frames import select_frames
    from neurmap.calibration.parity import parity, torch_runner
    from neurmap.core import load_weights

    from .onnx_export import read_artifact_metadata
    from .runners import padded_runner, static_hw

    meta = read_artifact_metadata(artifact)
    src = weights or meta.get("weights_source")
    if not src:
        _err(f"{artifact} does not record its float weights; pass --weights")
    model, wmeta = load_weights(src)
    if meta.get("weights_hash") and wmeta.get("weights_hash") and meta["weights_hash"] != wmeta["weights_hash"]:
        _err(f"{artifact} was exported from weights {meta['weights_hash']}, --weights {src} are {wmeta['weights_hash']}: "
             "compare with the weights it came from")
    mult = int(meta.get("pad_multiple", model.pad_multiple))
    fixed = static_hw(meta)
    h, w = parse_hw(size, "--size") if size else (fixed if fixed else (PARITY_CROP, PARITY_CROP))
    h, w = max(mult, h // mult * mult), max(mult, w // mult * mult)
    sel, _ = select_frames(_sources(data), frames, h, w, seed=seed)
    run = padded_runner(artifact)
    p, _ = parity(run, torch_runner(model), sel.blurry, sel.sharp)
    prec = meta.get("precision", "fp32")
    fails = gate_failures(p, prec, min_psnr, max_loss)
    res = {"artifact": str(artifact), "precision": prec, "frames": p.n, "size": f"{h}x{w}", **p.to_dict(),
           "ok": not fails, "failures": fails}
    if as_json:
        print(json.dumps(res, indent=2))
    else:
        status = "PASS" if not fails else "FAIL: " + "; ".join(fails)
        print(f"{artifact}  {prec}  {p.n} frames {h}x{w}  {p.summary()}  {status}")
    if fails:
        raise typer.Exit(1)


# ---------------------------------------------------------------------------------------------------------
# bench
# ---------------------------------------------------------------------------------------------------------

def bench_cmd(
    weights: str = typer.Option(..., "--weights", "-w", help="Float weights (the PyTorch baseline)."),
    artifacts: Optional[str] = typer.Option(None, "--artifacts", help="Comma-separated artifacts to time (default: build onnx fp32 and, with --data, ort int8)."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Frames for PSNR vs ground truth and INT8 calibration."),
    size: str = typer.Option("360x640", "--size", help="Resolution to time at, HxW."),
    runs: int = typer.Option(5, "--runs", help="Timed runs per row (after one warm-up)."),
    threads: int = typer.Option(0, "--threads", help="Intra-op threads for PyTorch and ONNX Runtime (0: library default)."),
    out_json: Optional[Path] = typer.Option(None, "--json", help="Also write the rows to this JSON file."),
) -> None:
    """One row per artifact/backend/precision available here: status, size MB, PSNR vs GT, latency p50/p99, FPS."""
    import tempfile

    from neurmap.core import load_weights

    from .runners import padded_runner
    from .targets import ExportRequest, TARGETS
    from .trt import gpu_info

    h, w = parse_hw(size, "--size")
    model, meta = load_weights(weights)
    mult = model.pad_multiple
    hp, wp = -(-h // mult) * mult, -(-w // mult) * mult
    rows: list[dict] = []
    eval_set = None
    with tempfile.TemporaryDirectory(prefix="neurmap-bench-") as tmp:
        tmp = Path(tmp)
        if data:
            from neurmap.calibration.frames import select_frames
            c = min(PARITY_CROP, hp, wp) // mult * mult
            cal, eval_set = select_frames(_sources(data), 16, c, c, holdout=4)
        entries: list[tuple[str, str, str, object]] = []   # (name, backend, precision, path or None)
        if artifacts:
            for a in artifacts.split(","):
                a = a.strip()
                from .onnx_export import read_artifact_metadata
                from .runners import artifact_kind
                entries.append((Path(a).name, artifact_kind(a), read_artifact_metadata(a).get("precision", "?"), Path(a)))
        else:
            req = ExportRequest(model=model, weights_meta=meta, out=tmp / "fp32.onnx", precision="fp32",
                                shapes=[(hp, wp)], dynamic=True, log=_log)
            entries.append(("onnx fp32", "onnxruntime", "fp32", TARGETS["onnx"].build(req).path))
            if data:
                req = ExportRequest(model=model, weights_meta=meta, out=tmp / "int8.onnx", precision="int8",
                                    shapes=[(hp, wp)], dynamic=True, calib=cal.blurry, log=_log)
                entries.append(("ort int8", "onnxruntime", "int8", TARGETS["ort"].build(req).path))
            else:
                rows.append(_row("ort int8", "onnxruntime", "int8", "skipped: needs --data for calibration"))
        rows.insert(0, _time_row("pytorch eager", "torch", "fp32", None, model, h, w, runs, eval_set, threads))
        for name, backend, prec, path in entries:
            try:
                run = padded_runner(path, threads)
            except NeurmapError as e:
                rows.append(_row(name, backend, prec, f"unavailable: {e}"))
                continue
            rows.append(_time_row(name, backend, prec, path, run, h, w, runs, eval_set, threads))
    if not artifacts:
        if gpu_info() is None:
            rows.append(_row("tensorrt", "tensorrt", "fp16/int8", "unavailable: no NVIDIA GPU with TensorRT here"))
        import platform
        if platform.system() != "Darwin":
            rows.append(_row("coreml", "coreml", "fp16", "unavailable: Core ML prediction needs macOS"))
    base = rows[0].get("p50_ms")
    for r in rows:
        if base and r.get("p50_ms"):
            r["speedup_vs_eager"] = round(base / r["p50_ms"], 2)
    _print_rows(rows, f"{h}x{w}")
    if out_json:
        from neurmap.core.checkpoint import atomic_write
        atomic_write(out_json, lambda t: Path(t).write_text(json.dumps({"size": f"{h}x{w}", "rows": rows}, indent=2)))


def _row(name, backend, prec, status, **kw) -> dict:
    return {"name": name, "backend": backend, "precision": prec, "status": status, **kw}


def _time_row(name, backend, prec, path, run, h, w, runs, eval_set, threads) -> dict:
    import time

    import torch

    if backend == "torch":
        if threads:
            torch.set_num_threads(threads)
        model = run

        def run(x):  # noqa: F811
            with torch.inference_mode():
                return model(torch.from_numpy(x)).numpy()
    x = np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32)
    try:
        run(x)
        ts = []
        for _ in range(max(1, runs)):
            t = time.perf_counter()
            run(x)
            ts.append((time.perf_counter() - t) * 1e3)
    except NeurmapError as e:
        return _row(name, backend, prec, f"failed: {e}")
    size_mb = None
    if path is not None:
        p = Path(path)
        size_mb = round((sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size) / 1e6, 2)
    r = _row(name, backend, prec, "ok", size_mb=size_mb, p50_ms=round(float(np.percentile(ts, 50)), 1),
             p99_ms=round(float(np.percentile(ts, 99)), 1))
    r["fps"] = round(1000.0 / r["p50_ms"], 2)
    if eval_set is not None and eval_set.sharp is not None and len(eval_set):
        from neurmap.calibration.parity import _psnr
        outs = np.concatenate([run(eval_set.blurry[i:i + 1]) for i in range(len(eval_set))])
        r["psnr_gt"] = round(_psnr(np.clip(outs, 0, 1), eval_set.sharp), 3)
    return r


def _print_rows(rows: list[dict], size: str) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"neurmap bench at {size}")
    cols = [("name", "name"), ("backend", "backend"), ("precision", "prec"), ("status", "status"), ("size_mb", "MB"),
            ("psnr_gt", "PSNR GT"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"), ("fps", "FPS"), ("speedup_vs_eager", "x eager")]
    for _, head in cols:
        t.add_column(head)
    for r in rows:
        t.add_row(*["" if r.get(k) is None else str(r.get(k)) for k, _ in cols])
    Console().print(t)


def register(app: typer.Typer) -> None:
    """Add ``export``, ``check`` and ``bench`` to the ``neurmap`` app."""
    app.command("export")(export_cmd)
    app.command("check")(check_cmd)
    app.command("bench")(bench_cmd)
