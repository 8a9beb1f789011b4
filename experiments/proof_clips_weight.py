#!/usr/bin/env python
"""Which G_reblur_flow weight (b*) of the NeurMAP proof takes — chosen on training-split photos, never on the
proof's held-out sets.

(b*) (``bench/neurmap_proof.py --photo-clips N``) is (b) whose unpaired blurry also holds N handheld clips of
training-split photos (blurry frames only) and whose G reblur term runs under their flow-derived blur
(``G_reblur_flow``). Its one new knob is that term's weight against the paired content term (SPEC's G_content 100).
This trains (a) and (b*) at each weight exactly as the proof does (same start, data, iterations, lrs) and scores
them on validation sets made only of training-split photos that none of the N unpaired clips shows:

* ``val_shake_clips``: handheld camera-shake clips (8 frames of 256², up to 15 px, as the proof's shake_clips);
* ``val_photo_kernel``: one 256² kernel-blur pair per photo (as the proof's photo_kernel).

    python experiments/proof_clips_weight.py [--weights 100 300 1000 3000] [--photo-clips 24] [--iterations 150]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import _setup  # noqa: F401  (bench/ on sys.path)
import torch
from common import report, uptime
from neurmap_proof import SHARED, config, score_sets

from neurmap.core.data import PhotoPairs, camera_shake_clip, photo_split
from neurmap.core.data.photos import shake_video_photos
from neurmap.core.train import run_training


def validation_sets(n_clips_unpaired: int, n_val: int = 6, seed: int = 0) -> dict:
    """Validation pairs from training-split photos the unpaired clips leave out."""
    used = set(shake_video_photos(SHARED / "sharp_photos", n_clips_unpaired, "train", seed))
    free = [p for p in photo_split(SHARED / "sharp_photos", "train") if p not in used]
    clips = [camera_shake_clip(str(free[(37 * k) % len(free)]), n_frames=8, size=(256, 256), max_blur_px=15.0,
                               seed=900 + k) for k in range(n_val)]
    shake = [(b, s) for c in clips for b, s in zip(c[0], c[1])]
    kernel_photos = [free[(53 * k + 11) % len(free)] for k in range(36)]
    ds = PhotoPairs(kernel_photos, crop_size=256, blur="kernel", p_sharp=0.0, degrade=False, scale=(0.8, 1.0),
                    seed=4321)
    kernel = [(it["blurry"], it["sharp"]) for it in (ds[i] for i in range(len(ds)))]
    return {"val_shake_clips": shake, "val_photo_kernel": kernel}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", type=float, nargs="+", default=[100.0, 300.0, 1000.0, 3000.0])
    ap.add_argument("--photo-clips", type=int, default=24)
    ap.add_argument("--iterations", type=int, default=150)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="runs/proof_clips_weight")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0, load_before = time.perf_counter(), uptime()
    proof_args = argparse.Namespace(backbone="default", iterations=args.iterations, crop=128, precision="bf16",
                                    w_video=0.5, w_supervised=1.0, device="cpu")
    sets = validation_sets(args.photo_clips)
    runs = [("(a) paired only", "a", dict(paired_only=True))]
    runs += [(f"(b*) G_reblur_flow {w:g}", f"b_{w:g}",
              dict(paired_only=False, motion="default", prior=True, reblur_flow=w, photo_clips=args.photo_clips))
             for w in args.weights]
    rows, scored = [], {"default (start)": score_sets("default", sets)}
    for name, folder, kw in runs:
        out = Path(args.out) / folder
        run_training(config(out, args=proof_args, **kw), progress=False)
        scored[name] = score_sets(out / "final.safetensors", sets)
        print(name, {r["set"]: (round(r["psnr"], 3), round(r["lpips"], 4)) for r in scored[name]}, flush=True)
    a = {r["set"]: r for r in scored["(a) paired only"]}
    for name, rs in scored.items():
        for r in rs:
            row = {"model": name, **r}
            if name.startswith("(b*)"):
                row.update(psnr_minus_a=r["psnr"] - a[r["set"]]["psnr"], lpips_minus_a=r["lpips"] - a[r["set"]]["lpips"])
            rows.append(row)
    report("proof_clips_weight", rows, {"settings": vars(args), "seconds": round(time.perf_counter() - t0, 1),
                                        "uptime_before": load_before, "uptime_after": uptime(),
                                        "validation": "training-split photos none of the unpaired clips shows"},
           results=_setup.RESULTS)


if __name__ == "__main__":
    main()
