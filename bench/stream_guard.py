"""Which guard should decide a stream adaptation round (issue 13) — calibrated on training-split photos only.

Per clip (``--clips`` camera-shake clips of ``photo_split(..., "train")`` photos, 16 frames of 192x256, exposure
fractions 0.3 / 0.5 / 0.75 / 1.0 in turn, shake up to 12 px — the set-up of ``bench/adapt_stream.py``, which
runs the chosen guard on held-out photos): one stream round of the shipped default under the flow-derived blur
(five-point stencil, exposure estimated on the window), with **every guard off**, so the round is always kept;
its true gain on the frames after the window beside what each guard signal read before and after:

- ``score``: the held-out flow-reblur objective (the round's own score; ``min_gain``);
- ``probe``: the single-image path's blurred probe (held-out outputs re-blurred, restored as well as before?);
- ``sharp``: the sharp probe (does G alter already-sharp images more than before?);
- ``niqe``: NIQE of the held-out outputs.

Then every rule is replayed on those rows: what it would have accepted, the mean gain over all clips (a
rejected round counts 0: the unadapted model is kept) and the worst accepted round.

    python bench/stream_guard.py [--clips 24]      # one thread, ~45 s per clip
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adapt_stream import DATA, EXPOSURES, psnr_frames, split_items  # noqa: E402
from common import report, uptime  # noqa: E402

#: every signal measured, none enforced (infinite tolerances): every finite round is kept, so its gain is known
PERMISSIVE = {"probe_guard": False, "reblur_guard": False, "sharp_guard": True, "sharp_tol_db": float("inf"),
              "niqe_guard": True, "niqe_tol": float("inf"), "min_gain": -float("inf")}
SIGNALS = ("total", "probe_psnr", "sharp_psnr", "niqe")


def rules(tol: float = 0.0) -> dict:
    """name -> accept(row): the guards the stream path could use, on the recorded before/after readings."""
    from neurmap.edge_runtime.adapt_config import AdaptConfig

    min_gain = AdaptConfig.min_gain                                                  # the stream path's default
    fell = lambda r: r["total"][1] < r["total"][0] * (1 - min_gain)                  # noqa: E731
    probe = lambda r: r["probe_psnr"][1] >= r["probe_psnr"][0]                       # noqa: E731
    sharp = lambda r: r["sharp_psnr"][1] >= r["sharp_psnr"][0] - tol                 # noqa: E731
    niqe = lambda r: r["niqe"][1] <= r["niqe"][0]                                    # noqa: E731
    return {"none (every round kept)": lambda r: True, "score": fell,
            "score + probe + NIQE (single-image path's)": lambda r: fell(r) and probe(r) and niqe(r),
            "score + probe": lambda r: fell(r) and probe(r), "score + NIQE": lambda r: fell(r) and niqe(r),
            "score + sharp (stream default)": lambda r: fell(r) and sharp(r)}


def training_windows(n: int, worker=None):
    """The clips every stream-guard choice is made on: per one of ``n`` training-split photos (spread over the
    sorted list), its 16-frame camera-shake clip, the exposure estimated on the window (frames 0-9) and the
    window's flow-derived items (flow by ``worker``, the stream path's default one if None) split as a round
    splits them. Yields (photo, exposure, estimate, blurry, sharp, train, held)."""
    from neurmap.core.data import camera_shake_clip
    from neurmap.core.data.photos import photo_split
    from neurmap.core.exposure import estimate_exposure
    from neurmap.edge_runtime.stream_adapt import flow_worker, motion_frames, stream_config

    worker = worker or flow_worker(stream_config())
    photos = photo_split(DATA / "sharp_photos", "train")
    for k, i in enumerate(np.linspace(0, len(photos) - 1, n).round().astype(int)):
        e = EXPOSURES[k % len(EXPOSURES)]
        b, s = camera_shake_clip(str(photos[i]), n_frames=16, size=(192, 256), max_blur_px=12.0, exposure=e,
                                 seed=900 + k)
        est = estimate_exposure(list(b[:10]), points=5)
        train, held = split_items(motion_frames(list(b[:11]), list(range(10)), est.exposure, worker, 5))
        yield f"{photos[i].parent.name}/{photos[i].name}", e, est, b, s, train, held


def kept_round(G0, train, held, M0=None, **overrides):
    """One stream round of a copy of ``G0`` (and of the motion net ``M0`` for sources m / fused) with every guard
    signal measured and none enforced (``PERMISSIVE``), so it is always kept and its true gain can be read:
    (the adapted copy of G, the round's result)."""
    from neurmap.edge_runtime.stream_adapt import StreamAdapter, stream_config

    G, M = copy.deepcopy(G0), copy.deepcopy(M0) if M0 is not None else None
    res = StreamAdapter(G, stream_config({"device": "cpu", **overrides, **PERMISSIVE}), M).run_round(train, held)
    return G, res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from neurmap.core import load_weights
    from neurmap.edge_runtime.stream_adapt import flow_worker, stream_config

    t0, load_before = time.perf_counter(), uptime()
    G0, _ = load_weights("default")
    G0.eval()
    worker = flow_worker(stream_config())
    rows = []
    for photo, e, est, b, s, train, held in training_windows(args.clips, worker):
        after = slice(10, 16)
        G, res = kept_round(G0, train, held, steps=args.steps)
        p0, p1 = psnr_frames(G0, b[after], s[after]), psnr_frames(G, b[after], s[after])
        row = {"photo": photo, "exposure": e,
               "exposure_est": round(est.exposure, 3), "gain_db": round(p1 - p0, 3), "kept": res.accepted,
               **{k2: [round(getattr(res.before, k2), 5), round(getattr(res.after, k2), 5)] for k2 in SIGNALS}}
        rows.append(row)
        print(row, flush=True)
    summary = {}
    gains = np.array([r["gain_db"] for r in rows])
    for name, accept in rules().items():
        acc = np.array([bool(r["kept"]) and accept(r) for r in rows])
        kept = gains[acc]
        summary[name] = {"accepted": int(acc.sum()), "mean_gain_db": round(float(np.where(acc, gains, 0).mean()), 3),
                         "worst_accepted_db": round(float(kept.min()), 3) if kept.size else None,
                         "losing_rounds_accepted": int((kept < 0).sum()),
                         "rounds_gaining_0.3dB_rejected": int(((gains >= 0.3) & ~acc).sum())}
    table = [{"rule": k, **v} for k, v in summary.items()]
    report("stream_guard", table, {"rounds": rows, "clips": args.clips, "steps": args.steps,
                                   "set": "photo_split train photos (never the held-out ones adapt_stream.py scores)",
                                   "uptime_before": load_before, "uptime_after": uptime(),
                                   "seconds": round(time.perf_counter() - t0, 1)})


if __name__ == "__main__":
    main()
