"""What does issue #13's motion acceptance ask of M: reading the blur's direction, or its length?

On ``bench/motion_quality.py``'s held-out camera-shake clips (the acceptance set, same metric: sign-invariant EPE /
true mean blur, magnitude ratio), readers that each know part of the truth:

* the true direction with one length for every pixel (the set's mean), or with each frame's mean length;
* the direction of least gradient energy of the blurry frame (its structure tensor, per frame or per 64² tile —
  no learning) with the true per-pixel length, or with each frame's mean length;
* a motion net as it reads, its direction with the true length, and the true direction with its length — which
  half of its error is direction and which is length;
* the closed-form prior of :mod:`neurmap.core.models.blur_prior` alone, its length scaled by ``--prior-scale``;
  ``--fit-prior`` fits that scale (mean true / mean read blur) on 16 clips of *training-split* photos first — the
  value ``configs/motion_prior.yaml`` ships.

    python experiments/motion_bounds.py [--motion default] [--fit-prior | --prior-scale 0.758]

~1 minute.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from _setup import RESULTS  # noqa: I001  (first: puts bench/ on sys.path)
from common import report
from motion_quality import DATA, EXPOSURES, load_motion_net, predict, shake_clips, sums

from neurmap.core.data import camera_shake_clip, photo_split
from neurmap.core.models.blur_prior import blur_direction, frame_blur


def unit(m: torch.Tensor) -> torch.Tensor:
    return m / m.norm(dim=1, keepdim=True).clamp(min=1e-9)


def structure_direction(blurry: torch.Tensor, tile: int | None = None) -> torch.Tensor:
    """(N,2,H,W) unit (dy, dx) of least luma-gradient energy per frame (``tile=None``: the prior's
    :func:`blur_direction`) or per tile²-pixel tile."""
    g = blurry.mean(1, keepdim=True)
    if tile is None:
        return blur_direction(g)[:, :, None, None].expand(-1, -1, *g.shape[-2:])
    gy, gx = torch.zeros_like(g), torch.zeros_like(g)
    gy[:, :, 1:-1] = (g[:, :, 2:] - g[:, :, :-2]) / 2
    gx[:, :, :, 1:-1] = (g[:, :, :, 2:] - g[:, :, :, :-2]) / 2
    prods = torch.cat([gy * gy, gx * gx, gy * gx], 1)
    pooled = torch.nn.functional.avg_pool2d(prods, tile, ceil_mode=True)
    s = torch.nn.functional.interpolate(pooled, scale_factor=tile, mode="nearest")[..., :g.shape[-2], :g.shape[-1]]
    theta = 0.5 * torch.atan2(2 * s[:, 2], s[:, 1] - s[:, 0])          # direction of largest gradient energy
    return torch.stack([torch.cos(theta), -torch.sin(theta)], 1)       # the perpendicular, as (dy, dx)


def training_clips(n_clips: int = 16, stride: int = 13, offset: int = 5, seed: int = 700) -> list[tuple]:
    """(blurry, truth) camera-shake clips of training-split photos (never held out): photo ``stride·k + offset``,
    seed ``seed + k``. The defaults are the clips the prior's scale is fitted on."""
    train = photo_split(DATA / "sharp_photos", "train")
    clips = []
    for k in range(n_clips):
        b, _, t = camera_shake_clip(str(train[(stride * k + offset) % len(train)]), n_frames=8, sub_frames=15,
                                    size=(192, 256), max_blur_px=15.0, exposure=EXPOSURES[k % len(EXPOSURES)],
                                    seed=seed + k, motion=True)
        clips.append((b, t))
    return clips


def fit_prior_scale(clips: list[tuple] | None = None, **prior) -> float:
    """Mean true / mean read blur of the prior (``prior``: :func:`frame_blur`'s rules) on ``clips`` (default
    :func:`training_clips`)."""
    acc = sum(sums(frame_blur(b, **prior), t) for b, t in (clips if clips is not None else training_clips()))
    return float(acc[2] / acc[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--motion", default="default", help="NAME_OR_PATH of the motion net to decompose")
    ap.add_argument("--prior-scale", type=float, default=0.758, help="the prior's length scale")
    ap.add_argument("--fit-prior", action="store_true", help="fit --prior-scale on training-split clips first")
    args = ap.parse_args()
    torch.set_num_threads(2)
    scale = fit_prior_scale() if args.fit_prior else args.prior_scale
    net = load_motion_net(args.motion)
    clips = shake_clips()
    truth_px = torch.cat([c["truth"] for c in clips]).norm(dim=1).mean()
    acc: dict[str, np.ndarray] = {}
    for c in clips:
        b, t = c["blurry"], c["truth"]
        length = t.norm(dim=1, keepdim=True)
        frame_len = length.mean((2, 3), keepdim=True)
        p = predict(net, b)
        st_frame, st_tile = structure_direction(b), structure_direction(b, 64)
        prior = frame_blur(b) * scale
        readers = {
            "zero": torch.zeros_like(t),
            "true direction, one length": unit(t) * truth_px,
            "true direction, frame's mean length": unit(t) * frame_len,
            "structure-tensor direction (frame), true length": st_frame * length,
            "structure-tensor direction (64² tiles), true length": st_tile * length,
            "structure-tensor direction (frame), frame's mean length": st_frame * frame_len,
            f"closed-form prior x {scale:.3f}": prior,
            "closed-form prior: its direction, true length": unit(prior) * length,
            "closed-form prior: true direction, its length": unit(t) * prior.norm(dim=1, keepdim=True),
            f"{args.motion}: as it reads": p,
            f"{args.motion}: its direction, true length": unit(p) * length,
            f"{args.motion}: true direction, its length": unit(t) * p.norm(dim=1, keepdim=True),
        }
        for name, m in readers.items():
            acc[name] = acc.get(name, 0) + sums(m, t)
    rows = [{"reader": name, "epe": round(s[0] / s[2], 3), "mag": round(s[1] / s[2], 3)} for name, s in acc.items()]
    report("motion_bounds", rows, {
        "clips": "bench/motion_quality.py's held-out shake clips (8 photos x 8 frames, 192x256, exposures 0.3-1)",
        "epe": "mean sign-invariant endpoint error / true mean |m|; the acceptance asks <= 0.35 with mag 0.8-1.25",
        "motion": args.motion, "prior_scale": scale, "prior_scale_fitted": bool(args.fit_prior),
        "prior_fit": "mean true / mean read blur on 16 camera-shake clips of training-split photos (8 frames, "
                     "192x256, exposures 0.3-1, seeds 700-715)"}, results=RESULTS)


if __name__ == "__main__":
    main()
