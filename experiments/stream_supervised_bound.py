"""How much can 20 steps on a stream's window give at all? The supervised bound on bench/adapt_stream.py's clips.

Issue 13 asks ≥ +0.5 dB after the window in ≤ 20 steps with no ground truth. This runs the same 20 steps with
the ground truth — plain L1 to the window's sharp frames, the stream path's parameter set and crops (all weights,
4 crops of 96² per step) — at the stream rate 5e-5 and at 10× it, on the held-out clips of
``bench/adapt_stream.py`` (same photos, exposures, seeds), and scores the frames after the window as that bench
does. No choice is made here: it bounds what any unsupervised objective could reach on these clips.

    python experiments/stream_supervised_bound.py [--clips 8]      # ~1 minute on 2 cores
    python experiments/stream_supervised_bound.py --crop 0 --rates 5e-5 2e-4 5e-4 --name stream_supervised_bound_window
"""
from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from _setup import RESULTS, shipped_start  # noqa: I001  (first: puts bench/ on sys.path)
from adapt_stream import EXPOSURES, heldout_clips, psnr_frames
from common import report, uptime

RATES = (5e-5, 5e-4)


def supervised_round(G0, blurry: torch.Tensor, sharp: torch.Tensor, lr: float, steps: int = 20, seed: int = 0,
                     crops: int = 4, crop: int = 96):
    """A copy of ``G0`` after ``steps`` Adam steps of L1(G(B), S) on ``crops`` random ``crop``² crops of the
    window's frames (``crop`` 0: every whole frame of the window, each step)."""
    G = copy.deepcopy(G0).train()
    opt = torch.optim.Adam(G.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    n, _, h, w = blurry.shape
    for _ in range(steps):
        if not crop:
            x, y = blurry, sharp
        else:
            idx = torch.randint(n, (crops,), generator=g)
            t, l = (int(torch.randint(0, d - crop + 1, (1,), generator=g)) for d in (h, w))
            x, y = blurry[idx, :, t:t + crop, l:l + crop], sharp[idx, :, t:t + crop, l:l + crop]
        loss = (G(x) - y).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return G.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--crops", type=int, default=4, help="crops per step (the stream path's 4)")
    ap.add_argument("--crop", type=int, default=96, help="crop side (the stream path's 96); 0: the whole window")
    ap.add_argument("--rates", type=float, nargs="+", default=list(RATES))
    ap.add_argument("--name", default="stream_supervised_bound")
    args = ap.parse_args()
    G0, _, t0, load_before = shipped_start(args.threads)
    from neurmap.core.data import camera_shake_clip

    rows = []
    for k, photo in enumerate(heldout_clips(args.clips)):
        b, s = camera_shake_clip(str(photo), n_frames=16, size=(192, 256), max_blur_px=12.0,
                                 exposure=EXPOSURES[k % len(EXPOSURES)], seed=100 + k)[:2]
        after = slice(10, 16)
        p0 = psnr_frames(G0, b[after], s[after])
        row = {"photo": f"{photo.parent.name}/{photo.name}", "psnr_unadapted": round(p0, 3)}
        for lr in args.rates:
            G = supervised_round(G0, b[:10], s[:10], lr, crops=args.crops, crop=args.crop)
            row[f"supervised_lr{lr:g}_gain_db"] = round(psnr_frames(G, b[after], s[after]) - p0, 3)
        print(row, flush=True)
        rows.append(row)
    summary = [{"lr": lr, "mean_gain_db": round(float(np.mean(g)), 3), "min_gain_db": round(float(np.min(g)), 3),
                "clips_gaining_0.5dB": int(sum(v >= 0.5 for v in g))}
               for lr in args.rates for g in [[r[f"supervised_lr{lr:g}_gain_db"] for r in rows]]]
    crops = f"{args.crops} x {args.crop}^2" if args.crop else "the whole window (10 x 192x256)"
    report(args.name, summary, {"clips": rows, "steps": 20, "crops": f"{crops}, all weights",
                                                "uptime_before": load_before, "uptime_after": uptime(),
                                                "seconds": round(time.perf_counter() - t0, 1)}, results=RESULTS)


if __name__ == "__main__":
    main()
