#!/usr/bin/env python
"""Quality of deblur models on held-out data, per source — what issue #12 accepts the default on.

Sources (none ever drawn in training: photos split by name hash, GoPro frames by range):

* ``gopro_80_119`` — GoPro-protocol pairs of gopro240 frames 80-119 (4 full 1280×720 frames; windows at
  80/89/98/107, 7-13 frames, the pairs `scripts`' earlier model card used).
* ``photo_shake`` / ``photo_kernel`` — one 256² camera-shake / kernel-blur pair per held-out photo
  (71 photos of BSDS500, Urban100, Sun–Hays 80), clean; ``photo_shake_camera`` adds the camera
  degradations (noise, JPEG, clipped highlights).
* ``shake_clips`` — 12 handheld camera-shake clips of held-out photos (8 frames of 256², smooth random
  shake up to 15 px: some frames nearly sharp); reports the worst frame too — a model must not make a
  nearly sharp frame worse.

Models: ``--weights NAME=PATH`` (repeatable; a checkpoint or shipped name), the blurry input, and the
official DMPHN 1-2-4 weights (cached in the JSON after one run: they take minutes on a CPU).

    python bench/default_quality.py --weights new=runs/default/final.safetensors --weights old=default
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, report  # noqa: E402

from neurmap.core import load_weights  # noqa: E402
from neurmap.core.data import PhotoPairs, camera_shake_clip, gopro_pairs_from_folder, photo_split  # noqa: E402
from neurmap.core.metrics import psnr_per_image  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def gopro_heldout(data: Path = DATA) -> tuple[torch.Tensor, torch.Tensor]:
    """(blurry, sharp), each (4, 3, 720, 1280): GoPro-protocol pairs of frames 80-119, never trained on."""
    pairs = gopro_pairs_from_folder(data / "gopro240" / "GOPR0477_11_00", n_frames=range(7, 14, 2), stride=9,
                                    frame_range=(80, 120), seed=1)
    return tuple(torch.stack(t) for t in zip(*[pairs[i] for i in range(len(pairs))]))


def photo_pairs(blur: str, degrade: bool = False, data: Path = DATA) -> tuple[torch.Tensor, torch.Tensor]:
    """(blurry, sharp), each (71, 3, 256, 256): one ``blur`` pair per held-out photo, the same every run."""
    ds = PhotoPairs(data / "sharp_photos", crop_size=256, split="heldout", blur=blur, p_sharp=0.0, degrade=degrade,
                    scale=(0.8, 1.0), seed=12_345)
    items = [ds[i] for i in range(len(ds))]
    return torch.stack([x["blurry"] for x in items]), torch.stack([x["sharp"] for x in items])


def shake_clips(data: Path = DATA, n_clips: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """(blurry, sharp), each (8 * n_clips, 3, 256, 256): handheld camera-shake clips of held-out photos."""
    held = photo_split(data / "sharp_photos", "heldout")
    clips = [camera_shake_clip(str(held[(7 * k) % len(held)]), n_frames=8, size=(256, 256), max_blur_px=15.0,
                               seed=100 + k) for k in range(n_clips)]
    return torch.cat([c[0] for c in clips]), torch.cat([c[1] for c in clips])


def heldout_sources(data: Path = DATA, n_clips: int = 12) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """name -> (blurry, sharp) stacks; the same pairs every run."""
    out = {"gopro_80_119": gopro_heldout(data)}
    for name, blur, degrade in (("photo_shake", "shake", False), ("photo_kernel", "kernel", False),
                                ("photo_shake_camera", "shake", True)):
        out[name] = photo_pairs(blur, degrade, data)
    out["shake_clips"] = shake_clips(data, n_clips)
    return out


@torch.no_grad()
def psnrs(model, blurry: torch.Tensor, sharp: torch.Tensor, chunk: int = 8) -> np.ndarray:
    vals = []
    for i in range(0, blurry.shape[0], chunk):
        b = blurry[i:i + chunk]
        y = b if model is None else model(b.contiguous(memory_format=torch.channels_last)).float().clamp(0, 1)
        vals.append(psnr_per_image(y, sharp[i:i + chunk]).double())
    return torch.cat(vals).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", action="append", default=[], help="NAME=PATH (or a shipped name); repeatable")
    ap.add_argument("--no-dmphn", action="store_true", help="skip the official DMPHN 1-2-4 (else cached)")
    ap.add_argument("--name", default="default_quality", help="results file name")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    sources = heldout_sources()
    models = {"blurry": None}
    for item in args.weights:
        name, _, path = item.partition("=")
        models[name] = load_weights(path or name)[0].eval().to(memory_format=torch.channels_last)
    out_path = RESULTS / f"{args.name}.json"
    cached = {}
    if out_path.exists():
        cached = {r["source"]: r for r in json.loads(out_path.read_text()).get("rows", [])}
    dmphn_dir = DATA / "pretrained" / "dmphn_1_2_4"
    rows, worst = [], {}
    for src, (b, s) in sources.items():
        row = {"source": src, "n": int(b.shape[0])}
        per = {}
        for name, model in models.items():
            per[name] = psnrs(model, b, s)
            row[name] = float(per[name].mean())
        if not args.no_dmphn and dmphn_dir.exists():
            if "dmphn_1_2_4" in cached.get(src, {}):
                row["dmphn_1_2_4"] = cached[src]["dmphn_1_2_4"]
            else:
                row["dmphn_1_2_4"] = float(psnrs(load_weights(str(dmphn_dir))[0].eval(), b, s, chunk=2).mean())
        for name in models:
            if name != "blurry":
                row[f"{name}_gain"] = row[name] - row["blurry"]
                row[f"{name}_worst_frame_gain"] = float((per[name] - per["blurry"]).min())
                if "dmphn_1_2_4" in row:
                    row[f"{name}_vs_dmphn"] = row[name] - row["dmphn_1_2_4"]
        rows.append(row)
    report(args.name, rows, {"seconds": round(time.time() - t0, 1), "weights": args.weights,
                             "psnr": "8-bit PSNR, dB, mean over the images of each source",
                             "heldout": "photos: 10% split by name hash (neurmap.core.data.photo_split); "
                                        "gopro240 frames 80-119"})


if __name__ == "__main__":
    from neurmap.core.errors import NeurmapError

    try:
        main()
    except NeurmapError as e:            # a weights path that is not there and the like: one line, not a traceback
        sys.exit(f"default_quality: {e}")
