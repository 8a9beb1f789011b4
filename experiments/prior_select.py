"""Choosing the blur prior's two rules (:mod:`neurmap.core.models.blur_prior`) on training-split photos only.

For each (edge power of the structure tensor, depth of the first autocorrelation minimum): the length scale is fitted
on ``motion_bounds.training_clips``' 16 clips, then the error is read on 32 *other* camera-shake clips of
training-split photos (seeds 900-931) — the selection set. ``bench/motion_quality.py``'s held-out clips never take
part; their column is reported after the choice, for the record.

    python experiments/prior_select.py

~4 minutes on 2 cores.
"""
from __future__ import annotations

import torch

from _setup import RESULTS  # noqa: I001  (first: puts bench/ on sys.path)
from common import report
from motion_bounds import fit_prior_scale, training_clips
from motion_quality import shake_clips, sums

from neurmap.core.models.blur_prior import frame_blur

#: (edge power, depth): the plain tensor and the global minimum first, then each rule alone, then the grid's rest
VARIANTS = [(2, 1.0), (2, 0.8), (2, 0.6), (2, 0.4), (2, 0.3), (4, 0.4), (8, 0.4), (12, 0.4), (16, 0.4), (24, 0.4),
            (16, 1.0), (16, 0.6), (16, 0.3)]


def error(clips, scale: float, **prior) -> tuple[float, float]:
    acc = sum(sums(frame_blur(b, **prior) * scale, t) for b, t in clips)
    return float(acc[0] / acc[2]), float(acc[1] / acc[2])


def main() -> None:
    torch.set_num_threads(2)
    fit, select = training_clips(), training_clips(32, stride=7, offset=3, seed=900)   # disjoint seeds
    held = [(c["blurry"], c["truth"]) for c in shake_clips()]
    rows = []
    for power, depth in VARIANTS:
        prior = {"edge_power": power, "depth": depth}
        scale = fit_prior_scale(fit, **prior)
        sel, _ = error(select, scale, **prior)
        he, mag = error(held, scale, **prior)
        rows.append({"edge_power": power, "depth": depth, "scale": round(scale, 3), "select_epe": round(sel, 3),
                     "heldout_epe": round(he, 3), "heldout_mag": round(mag, 2)})
    best = min(rows, key=lambda r: r["select_epe"])
    report("prior_select", rows, {
        "chosen": {"edge_power": best["edge_power"], "depth": best["depth"]},
        "select_epe": "sign-invariant EPE / true mean blur on 32 camera-shake clips of training-split photos "
                      "(8 frames, 192x256, exposures 0.3-1, seeds 900-931), scale fitted on 16 others",
        "heldout_epe": "bench/motion_quality.py's acceptance clips (held-out photos), read after the choice"},
        results=RESULTS)
    print("chosen on the selection set:", best)


if __name__ == "__main__":
    main()
