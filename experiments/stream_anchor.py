"""Choosing the stream path's sharp anchor (``w_anchor``, :func:`neurmap.core.losses.sharp_anchor_loss`), its
share against the reblur term (``w_reblur``) and the learning rate, on training-split photos only.

The clips of ``bench/stream_guard.py`` (camera-shake clips of ``photo_split(..., "train")`` photos, 16 frames of
192x256, exposure 0.3 / 0.5 / 0.75 / 1.0 in turn, seeds 900+), one 20-step stream round of the shipped default
per clip and variant under the flow-derived blur (five-point stencil, exposure estimated on the window) with
every guard off, so each round's true gain on the frames after the window is known; beside it the sharp and the
blurred probe before and after, and the score's parts (total, reblur, anchor), so the guards and acceptance rules
can be replayed (a rejected round counts 0). ``bench/adapt_stream.py`` then runs the chosen defaults on held-out
photos.

    python experiments/stream_anchor.py [--clips 16]      # ~40 s per clip on 2 cores
    python experiments/stream_anchor.py --set crop=192 --set batch=8 --variant 2e-4,10,300 --name NAME
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from _setup import RESULTS, shipped_start  # noqa: I001  (first: puts bench/ on sys.path)
from adapt_stream import psnr_frames
from common import key_values, report, uptime
from stream_guard import kept_round, training_windows

#: (lr, w_anchor, w_reblur): the defaults before the anchor, with it, faster rates, then the reblur term's weight
#: (Adam is scale-free, so w_reblur sets the anchor's share: 10 : 10 first, 10 : 1000 last)
VARIANTS = [(5e-5, 0.0, 10.0), (5e-5, 10.0, 10.0), (2e-4, 10.0, 10.0), (2e-4, 3.0, 10.0),
            (5e-5, 10.0, 30.0), (5e-5, 10.0, 100.0), (5e-5, 10.0, 300.0), (5e-5, 10.0, 1000.0)]


#: acceptance rules replayed on the recorded score parts (each beside the sharp guard); "total" is today's
RULES = {"total": lambda r: falls(r["total"]),
         "reblur": lambda r: falls(r["reblur"]),
         "reblur+anchor": lambda r: falls(r["reblur"]) and r["sharp"][1] <= r["sharp"][0]}


def falls(pair, min_gain: float = 0.002) -> bool:
    """The stream path's acceptance test on one score part: after < before by ``AdaptConfig.min_gain``."""
    return pair[1] < pair[0] * (1.0 - min_gain)


def replayed_rules(rs: list, g: np.ndarray, sharp_ok: np.ndarray) -> dict:
    """Per rule: rounds accepted, mean gain over all rounds (a rejected round counts 0) and worst accepted."""
    out = {}
    for name, rule in RULES.items():
        ok = sharp_ok & np.array([rule(r) for r in rs])
        out[f"{name}_accepted"] = int(ok.sum())
        out[f"{name}_mean_db"] = round(float((g * ok).mean()), 3)
        out[f"{name}_worst_db"] = round(float(g[ok].min()), 3) if ok.any() else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variant", action="append", default=[], metavar="LR,W_ANCHOR,W_REBLUR",
                    help="a variant to run, repeatable (default: VARIANTS)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a stream-config key for every round, repeatable (e.g. --set crop=192 --set batch=8)")
    ap.add_argument("--name", default="stream_anchor", help="results file NAME.json")
    args = ap.parse_args()
    variants = [tuple(float(v) for v in item.split(",")) for item in args.variant] or VARIANTS
    overrides = key_values(args.set)
    if any(len(v) != 3 for v in variants):
        raise SystemExit(f"--variant takes LR,W_ANCHOR,W_REBLUR, got {args.variant}")
    G0, _, t0, load_before = shipped_start(args.threads)
    rounds = []
    for photo, _e, _est, b, s, train, held in training_windows(args.clips):
        after = slice(10, 16)
        p0 = psnr_frames(G0, b[after], s[after])
        for lr, w, wr in variants:
            G, res = kept_round(G0, train, held, steps=20, lr=lr, w_anchor=w, w_reblur=wr, motion_source="flow",
                                flow_points=5, **overrides)
            rounds.append({"photo": photo, "lr": lr, "w_anchor": w, "w_reblur": wr,
                           "psnr_unadapted": round(p0, 3),
                           "gain_db": round(psnr_frames(G, b[after], s[after]) - p0, 3),
                           "sharp_psnr": [round(res.before.sharp_psnr, 3), round(res.after.sharp_psnr, 3)],
                           "probe_psnr": [round(res.before.probe_psnr, 3), round(res.after.probe_psnr, 3)],
                           **{part: [round(getattr(res.before, part), 6), round(getattr(res.after, part), 6)]
                              for part in ("total", "reblur", "sharp")}})
            print(rounds[-1], flush=True)
    rows = []
    for lr, w, wr in variants:
        rs = [r for r in rounds if (r["lr"], r["w_anchor"], r["w_reblur"]) == (lr, w, wr)]
        g = np.array([r["gain_db"] for r in rs])
        ok = np.array([r["sharp_psnr"][1] >= r["sharp_psnr"][0] for r in rs])
        both = ok & np.array([r["probe_psnr"][1] >= r["probe_psnr"][0] for r in rs])
        rows.append({"lr": lr, "w_anchor": w, "w_reblur": wr, "mean_gain_db": round(float(g.mean()), 3),
                     "median_gain_db": round(float(np.median(g)), 3), "worst_db": round(float(g.min()), 3),
                     "losing": int((g < 0).sum()), "gaining_0.5dB": int((g >= 0.5).sum()),
                     "sharp_guard_accepted": int(ok.sum()), "sharp_guard_mean_db": round(float((g * ok).mean()), 3),
                     "sharp_guard_worst_db": round(float(g[ok].min()), 3) if ok.any() else None,
                     "sharp+probe_accepted": int(both.sum()), "sharp+probe_mean_db": round(float((g * both).mean()), 3),
                     "sharp+probe_worst_db": round(float(g[both].min()), 3) if both.any() else None,
                     **replayed_rules(rs, g, ok)})
    report(args.name, rows, {"rounds": rounds, "clips": args.clips, "steps": 20, "set": overrides,
                             "photos": "photo_split train photos (never the held-out ones adapt_stream.py scores)",
                             "uptime_before": load_before, "uptime_after": uptime(),
                             "seconds": round(time.perf_counter() - t0, 1)}, results=RESULTS)


if __name__ == "__main__":
    main()
