#!/usr/bin/env python
"""What flow-derived blur costs and how right it is, per flow setting — the stream path's choice (issue #13).

The stream path reads each flowed frame's blur from dense flow of its neighbours (:mod:`neurmap.core.flow_motion`).
Each setting (DIS preset × scale × stencil) is scored on held-out camera-shake clips at the stream's 640×360 with
known per-pixel blur and known exposure — ``epe`` = mean sign-invariant endpoint error / true mean blur, ``mag`` =
mean length / true (``bench/motion_quality.py``'s metric; 15 sub-frames span 14/15 of the exposure, so a perfect
flow reads ~1.07) — and timed as CPU process time on one thread per flowed frame, beside the shipped default's
INT8 engine (the demo's recipe) on one thread at the same size, in the same run. The issue's limit: flow per frame
≤ 20 % of that inference.

    python bench/flow_cost.py [--clips 6] [--name flow_cost]

~3-5 minutes on one thread.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adapt_stream import cpu_ms  # noqa: E402
from common import report  # noqa: E402
from motion_quality import EXPOSURES, shake_clips, sums  # noqa: E402

from neurmap.core.flow_motion import FlowEstimator, velocity, velocity_to_motion  # noqa: E402

SIZE = (360, 640)
#: (preset, scale, points); the stream path's default before this bench: ("fast", 0.5, 5)
SETTINGS = [(p, s, n) for n in (5, 3) for p, s in (("medium", 0.5), ("fast", 0.5), ("ultrafast", 0.5),
                                                   ("fast", 0.4), ("ultrafast", 0.4), ("fast", 0.33),
                                                   ("ultrafast", 0.33))]


def stream_clips(n_clips: int, frames: int = 7) -> list[dict]:
    """``bench/motion_quality.py``'s held-out shake clips, at the stream's size and as the stream buffer holds
    frames (uint8)."""
    clips = shake_clips(n_clips=n_clips, frames=frames, size=SIZE)
    return [dict(c, frames=[(f * 255 + 0.5).to(torch.uint8) for f in c["blurry"]]) for c in clips]


def int8_ms(clip_frames: list[torch.Tensor]) -> float:
    """CPU ms per 640×360 frame of the shipped default's INT8 engine (the demo's recipe), one thread."""
    from neurmap.core.checkpoint import load_weights
    from neurmap.demo import prepare_runner

    G, meta = load_weights("default")
    calib = np.stack([f.float().numpy() / 255.0 for f in clip_frames[:2]]).astype(np.float32)
    runner = prepare_runner(G.eval(), meta, SIZE[0], SIZE[1], calib, backend="ort-int8", threads=1)
    one = calib[:1]
    return cpu_ms(lambda: runner.infer(one), repeat=9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=6)
    ap.add_argument("--name", default="flow_cost", help="results file name (bench/results/NAME.json)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)                      # one thread each, like the INT8 engine it is compared with
    t0, load0 = time.time(), os.getloadavg()
    clips = stream_clips(args.clips)
    ref_ms = int8_ms(clips[0]["frames"])
    rows = []
    for preset, scale, points in SETTINGS:
        flow, acc, times = FlowEstimator(scale=scale, preset=preset), np.zeros(4), []
        for clip in clips:
            frames = clip["frames"]
            for t in range(2, len(frames) - 2):             # where the five-point stencil applies
                v = velocity(frames, t, flow, points)
                acc += sums(velocity_to_motion(v, clip["exposure"])[None], clip["truth"][t:t + 1])
            times.append(cpu_ms(lambda: velocity(frames, 3, flow, points)))
        ms = float(np.median(times))
        rows.append({"preset": preset, "scale": scale, "points": points, "epe": round(acc[0] / acc[2], 3),
                     "mag": round(acc[1] / acc[2], 3), "flow_ms": round(ms, 2), "int8_ms": round(ref_ms, 2),
                     "flow_over_int8_%": round(100 * ms / ref_ms, 1), "within_20%": bool(ms <= 0.2 * ref_ms)})
    report(args.name, rows, {
        "seconds": round(time.time() - t0, 1), "load_avg_start": load0, "load_avg_end": os.getloadavg(),
        "clips": f"bench/motion_quality.py's first {args.clips} held-out shake clips, 7 frames at {SIZE[1]}x{SIZE[0]} "
                 "(15 sub-frames, max 15 px / 1 deg), "
                 f"exposures {EXPOSURES}, scored on frames 2-4 (known exposure), 8 px border excluded",
        "clock": "CPU ms (process time) per flowed frame, one thread; int8_ms: the shipped default's INT8 engine "
                 "(neurmap.demo.prepare_runner, ort-int8) on one 640x360 frame, one thread, same run"})


if __name__ == "__main__":
    main()
