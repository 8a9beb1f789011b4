"""CompactDeblur (shipped default) vs DMPHN 1-2-4 (official weights): cost, ONNX Runtime speed, quality.

Runs with no arguments: `python bench/compact_bench.py`. Prints a table and writes bench/results/compact.json.
Per network: parameters, GMAC at 720p and 360p (hooks on the meta device), ONNX Runtime CPU FPS for FP32 and
static-QDQ INT8 (U8 activations / S8 per-channel weights from ``neurmap.export.ort_quant``, MSE ranges from 4
native-scale 256² GoPro-protocol training crops, calibrated on a dynamic twin) at 640×360 and 1280×720 (each
net's input padded to its own pad multiple), and PSNR on the held-out GoPro-protocol pairs of
``bench/default_quality.py`` (4 full 1280×720 frames from GOPR0477_11_00 frames 80-119).

Both networks are timed in the same run, alternating per resolution, with the same thread setting, so
their ratio holds even on a loaded machine; the load average (``uptime``) before and after is in the JSON.
DMPHN's held-out PSNR is taken from bench/results/compact_training.json when that file scored it on the
same pairs (it takes minutes on a 2-core CPU); ``--recompute-dmphn`` scores it again.
Goal (issue 7): compact ≥ 15× DMPHN 1-2-4's ORT FP32 FPS at equal resolution.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import RESULTS, report, time_it, uptime

from default_quality import DATA, gopro_heldout, psnrs  # noqa: E402  (held-out pairs, PSNR)

GOPRO_SEQ, TRAIN_FRAMES = "gopro240/GOPR0477_11_00", (0, 80)

RESOLUTIONS = {"360p": (360, 640), "720p": (720, 1280)}


def padded(h: int, w: int, mult: int) -> tuple[int, int]:
    return -(-h // mult) * mult, -(-w // mult) * mult


def calibration_crops(data: Path, n: int = 4, size: int = 256) -> np.ndarray:
    """GoPro-protocol blurry crops from the training frames (0-79), native scale."""
    from neurmap.core.data import gopro_pairs_from_folder

    pairs = gopro_pairs_from_folder(data / GOPRO_SEQ, n_frames=range(7, 14, 2), frame_range=TRAIN_FRAMES,
                                    seed=3, count=n)
    rng = np.random.default_rng(3)
    out = []
    for b, _ in pairs:
        top, left = int(rng.integers(0, 720 - size)), int(rng.integers(0, 1280 - size))
        out.append(b[:, top:top + size, left:left + size].numpy())
    return np.stack(out).astype(np.float32)


def ort_fps(path: Path, hp: int, wp: int, threads: int, budget_s: float) -> float:
    from neurmap.export.onnx_export import onnx_session

    sess = onnx_session(path, threads=threads)
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).random((1, 3, hp, wp), dtype=np.float32)
    return 1.0 / time_it(lambda: sess.run(None, {name: x}), repeat=3, warmup=1, budget_s=budget_s)


def ort_psnr(path: Path, blurry: torch.Tensor, sharp: torch.Tensor, mult: int, threads: int) -> float:
    from neurmap.core.metrics import psnr_per_image
    from neurmap.core.models.wrapper import pad_to_multiple
    from neurmap.export.onnx_export import onnx_session

    sess = onnx_session(path, threads=threads)
    name = sess.get_inputs()[0].name
    vals = []
    for i in range(len(blurry)):
        xp, (h, w) = pad_to_multiple(blurry[i:i + 1], mult)
        y = torch.from_numpy(sess.run(None, {name: xp.numpy()})[0])[..., :h, :w].clamp(0, 1)
        vals.append(psnr_per_image(y, sharp[i:i + 1]))
    return float(torch.cat(vals).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: ORT's default)")
    ap.add_argument("--skip-int8", action="store_true")
    ap.add_argument("--recompute-dmphn", action="store_true", help="score DMPHN on the held-out pairs again")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    from neurmap.core import load_weights
    from neurmap.core.profile import network_cost
    from neurmap.export.onnx_export import export_onnx

    try:
        from neurmap.export.ort_quant import QuantConfig, quantize_int8
        have_int8 = not args.skip_int8
    except ImportError:
        have_int8 = False

    load_before, t_start = uptime(), time.perf_counter()
    models = {"compact": load_weights("default")}
    dmphn_dir = args.data / "pretrained/dmphn_1_2_4"
    notes = []
    if dmphn_dir.exists():
        models["dmphn_1_2_4"] = load_weights(dmphn_dir)
    else:
        notes.append(f"{dmphn_dir} absent: DMPHN 1-2-4 row skipped")
    blurry, sharp = gopro_heldout(args.data)
    calib = calibration_crops(args.data) if have_int8 else None

    rows = {name: {"net": name, "weights": "shipped default" if name == "compact" else "official",
                   "params_M": round(network_cost(name, 720, 1280).params / 1e6, 3),
                   "gmac_720p": round(network_cost(name, 720, 1280).gmacs, 1),
                   "gmac_360p": round(network_cost(name, 360, 640).gmacs, 1)} for name in models}
    with tempfile.TemporaryDirectory(prefix="compact-bench-") as tmp:
        tmp = Path(tmp)
        for res, (h, w) in RESOLUTIONS.items():
            for name, (model, meta) in models.items():          # alternate nets within a resolution
                hp, wp = padded(h, w, model.pad_multiple)
                fp32 = export_onnx(model, tmp / f"{name}_{res}.onnx", height=hp, width=wp)
                budget = 60.0 if name != "compact" else 20.0
                rows[name][f"ort_fp32_fps_{res}"] = round(ort_fps(fp32, hp, wp, args.threads, budget), 3)
                print(f"{name} {res} fp32: {rows[name][f'ort_fp32_fps_{res}']} fps  ({uptime()})", flush=True)
                if have_int8:
                    dyn = export_onnx(model, tmp / f"{name}_dyn.onnx", height=256, width=256, dynamic=True)
                    q = quantize_int8(fp32, tmp / f"{name}_{res}_int8.onnx", frames=calib,
                                      config=QuantConfig(chunk=1), dynamic_twin=dyn, static_shape=(1, hp, wp))
                    rows[name][f"ort_int8_fps_{res}"] = round(ort_fps(q.path, hp, wp, args.threads, budget), 3)
                    print(f"{name} {res} int8: {rows[name][f'ort_int8_fps_{res}']} fps", flush=True)
                    if res == "720p" and name == "compact":
                        rows[name]["heldout_psnr_int8"] = round(ort_psnr(q.path, blurry, sharp, model.pad_multiple,
                                                                         args.threads), 3)
        # quality on the held-out pairs
        rows["compact"]["heldout_psnr"] = round(float(psnrs(models["compact"][0], blurry, sharp, chunk=1).mean()), 3)
        if "dmphn_1_2_4" in models:
            curve = RESULTS / "compact_training.json"
            cached = json.loads(curve.read_text()).get("dmphn_1_2_4_psnr") if curve.exists() else None
            if cached is not None and not args.recompute_dmphn:
                rows["dmphn_1_2_4"]["heldout_psnr"] = cached
                notes.append("DMPHN 1-2-4 held-out PSNR from bench/results/compact_training.json (same pairs)")
            else:
                p = float(psnrs(models["dmphn_1_2_4"][0], blurry, sharp, chunk=1).mean())
                rows["dmphn_1_2_4"]["heldout_psnr"] = round(p, 3)
    blurry_psnr = round(float(psnrs(None, blurry, sharp).mean()), 3)

    out_rows = list(rows.values())
    extra = {"blurry_heldout_psnr": blurry_psnr, "uptime_before": load_before, "uptime_after": uptime(),
             "ort_threads": args.threads or "ORT default", "int8": have_int8, "notes": notes,
             "heldout": "4 GoPro-protocol pairs, GOPR0477_11_00 frames 80-119, full 1280x720, 8-bit PSNR",
             "seconds": round(time.perf_counter() - t_start, 1)}
    if "dmphn_1_2_4" in rows:
        c, d = rows["compact"], rows["dmphn_1_2_4"]
        speed = {k: round(c[k] / d[k], 1) for k in c if k.startswith("ort_") and k in d and d[k] > 0}
        extra["speedup_vs_dmphn"] = speed
        extra["goal_15x_fp32"] = {r: speed.get(f"ort_fp32_fps_{r}", 0) >= 15 for r in RESOLUTIONS}
        extra["psnr_gap_db"] = round(c["heldout_psnr"] - d["heldout_psnr"], 3)
    print(f"held-out PSNR of the blurry input: {blurry_psnr} dB")
    report("compact", out_rows, extra)
    if "speedup_vs_dmphn" in extra:
        print("compact / DMPHN 1-2-4 speed:", extra["speedup_vs_dmphn"])


if __name__ == "__main__":
    main()
