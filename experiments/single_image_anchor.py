"""Does the stream path's recipe — absolute motion plus the sharp anchor — help single images, where no
neighbours give the blur and the motion comes from M alone?

Kernel blur with moving regions (``KernelBlurred``, up to 12 px) over training-split photos (photo_split
'train'): per photo, 16 blurry 160² crops of its top half are the "camera's images" (every 4th held out for the
score), PSNR is read on 6 other blurs of its bottom half. From the shipped G and M, one 20-step round per variant
with every guard off, so the raw gain is known: today's single-image path (SPEC's relative motion
vn M(B) − vn M(Ŝ), LoRA at its default rate) and the stream path's round under M's absolute reading (source
``m``, M not adapted: there is no flow) at two rates, with and without the anchor (``w_anchor`` 10).

    python experiments/single_image_anchor.py [--photos 8]      # ~2 minutes on 2 cores
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch

from _setup import RESULTS, shipped_start  # noqa: I001  (first: puts bench/ on sys.path)
from adapt_bench import eval_psnr
from common import report, uptime
from stream_guard import PERMISSIVE

SHARP = Path(__file__).resolve().parents[2] / "shared" / "data" / "sharp_photos"
VARIANTS = [(5e-5, 0.0), (5e-5, 10.0), (2e-4, 0.0), (2e-4, 10.0)]      # (lr, w_anchor) of the absolute rounds


def photo_stream(path: Path, k: int):
    """(16 blurry uint8 crops of the top half, 6 blurry and sharp eval crops of the bottom half)."""
    from neurmap.core.data import KernelBlurred
    from neurmap.core.data.io import read_image

    im = read_image(path)
    top, bottom = im[:, : im.shape[1] // 2], im[:, im.shape[1] // 2:]
    stream = KernelBlurred([top] * 16, crop_size=160, seed=k, max_px=12.0)
    ev = KernelBlurred([bottom] * 6, crop_size=128, seed=1000 + k, max_px=12.0)
    frames = [(stream[i]["blurry"] * 255 + 0.5).to(torch.uint8) for i in range(16)]
    return frames, torch.stack([ev[i]["blurry"] for i in range(6)]), torch.stack([ev[i]["sharp"] for i in range(6)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    G0, M, t0, load_before = shipped_start(args.threads)
    from neurmap.core.data import photo_split
    from neurmap.edge_runtime.adaptation import AdaptConfig, Adapter, default_lr
    from neurmap.edge_runtime.stream_adapt import MotionFrame, StreamAdapter, stream_config

    photos = photo_split(SHARP, "train")
    rows = []
    for k, path in enumerate(photos[:: len(photos) // args.photos][: args.photos]):
        frames, eb, es = photo_stream(path, k)
        train = [f for i, f in enumerate(frames) if i % 4 != 3]
        held = [f for i, f in enumerate(frames) if i % 4 == 3]
        p0 = eval_psnr(G0, eb, es)
        row = {"photo": f"{path.parent.name}/{path.name}", "psnr_blurry": eval_psnr(lambda x: x, eb, es),
               "psnr_unadapted": p0}
        G = copy.deepcopy(G0)
        cfg = AdaptConfig(steps=20, params="lora", lr=default_lr("lora"), crop=96, batch=4, niqe_guard=False,
                          probe_guard=False, min_gain=-1e9, min_blur_px=0.0, eval_crop=128, device="cpu")
        Adapter(G, M, cfg).run_round([f.float() / 255 for f in train], [f.float() / 255 for f in held])
        row["relative (today's single path)"] = round(eval_psnr(G, eb, es) - p0, 3)
        no_flow = lambda fs: [MotionFrame(f, torch.zeros(2, *f.shape[-2:])) for f in fs]  # noqa: E731 (unread: m)
        for lr, w in VARIANTS:
            G = copy.deepcopy(G0)
            c = stream_config({"motion_source": "m", "m_steps": 0, "device": "cpu", "lr": lr, "w_anchor": w,
                               "eval_crop": 128, **PERMISSIVE})
            StreamAdapter(G, c, M).run_round(no_flow(train), no_flow(held))
            row[f"absolute m, lr {lr:g}, w_anchor {w:g}"] = round(eval_psnr(G, eb, es) - p0, 3)
        print(row, flush=True)
        rows.append(row)
    summary = []
    for key in [k for k in rows[0] if k.startswith(("relative", "absolute"))]:
        g = np.array([r[key] for r in rows])
        summary.append({"variant": key, "mean_gain_db": round(float(g.mean()), 3),
                        "worst_db": round(float(g.min()), 3), "losing": int((g < 0).sum()), "n": len(g)})
    report("single_image_anchor", summary, {"photos": rows, "steps": 20, "set": "photo_split train photos",
                                            "uptime_before": load_before, "uptime_after": uptime(),
                                            "seconds": round(time.perf_counter() - t0, 1)}, results=RESULTS)


if __name__ == "__main__":
    main()
