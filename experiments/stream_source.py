"""Which motion should a stream round take — the flow alone, M's reading, or M fused with the flow — chosen on
training-split photos only?

``bench/adapt_stream.py`` measures the three sources on held-out clips; this is the choice it verifies, made on
the clips of ``bench/stream_guard.py`` (camera-shake clips of ``photo_split(..., "train")`` photos, 16 frames of
192x256, exposure 0.3 / 0.5 / 0.75 / 1.0 in turn). Per clip and source, one 20-step round of the shipped default
at the stream path's defaults (sharp anchor on; for m / fused the shipped M, adapted to the flow first) with every
guard off, so its true gain on the frames after the window is known; then each source's own default guard is
replayed (flow: score + sharp probe; m / fused: score + sharp + blurred probe), a rejected round counting 0. Beside
them the anchor alone (``w_reblur`` 0: no motion at all), to read what the motion itself adds.

    python experiments/stream_source.py [--clips 16]      # ~20 s per clip on 2 cores
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from _setup import RESULTS, shipped_start  # noqa: I001  (first: puts bench/ on sys.path)
from adapt_stream import psnr_frames
from common import report, uptime
from stream_guard import kept_round, rules, training_windows

#: name -> the round's overrides; "anchor only" drops the reblur term (no motion at all): what the motion adds
SOURCES = {"flow": {"motion_source": "flow"}, "fused": {"motion_source": "fused"}, "m": {"motion_source": "m"},
           "anchor only": {"motion_source": "flow", "w_reblur": 0.0}}


def default_guard(source: str, r: dict) -> bool:
    """The source's default guard (``stream_config``) on a recorded round, from stream_guard's rules."""
    guards = rules()
    ok = guards["score + sharp (stream default)"](r)
    return ok and (SOURCES[source]["motion_source"] == "flow" or guards["score + probe"](r))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    G0, M0, t0, load_before = shipped_start(args.threads)
    rounds = []
    for photo, _e, _est, b, s, train, held in training_windows(args.clips):
        after = slice(10, 16)
        p0 = psnr_frames(G0, b[after], s[after])
        for source, overrides in SOURCES.items():
            G, res = kept_round(G0, train, held, M0 if overrides["motion_source"] != "flow" else None, **overrides)
            rounds.append({"photo": photo, "source": source, "psnr_unadapted": round(p0, 3),
                           "gain_db": round(psnr_frames(G, b[after], s[after]) - p0, 3),
                           "m_accepted": res.motion.get("m_accepted"),
                           **{k: [round(getattr(res.before, k), 6), round(getattr(res.after, k), 6)]
                              for k in ("total", "sharp_psnr", "probe_psnr")}})
            print(rounds[-1], flush=True)
    rows = []
    for source in SOURCES:
        rs = [r for r in rounds if r["source"] == source]
        g = np.array([r["gain_db"] for r in rs])
        ok = np.array([default_guard(source, r) for r in rs])
        rows.append({"source": source, "mean_gain_db": round(float(g.mean()), 3), "worst_db": round(float(g.min()), 3),
                     "losing": int((g < 0).sum()), "guard_accepted": int(ok.sum()),
                     "guard_mean_db": round(float((g * ok).mean()), 3),
                     "guard_worst_db": round(float(g[ok].min()), 3) if ok.any() else None,
                     "guard_losing": int((g[ok] < 0).sum())})
    report("stream_source", rows, {"rounds": rounds, "clips": args.clips, "steps": 20,
                                   "set": "photo_split train photos (never the held-out ones adapt_stream.py scores)",
                                   "uptime_before": load_before, "uptime_after": uptime(),
                                   "seconds": round(time.perf_counter() - t0, 1)}, results=RESULTS)


if __name__ == "__main__":
    main()
