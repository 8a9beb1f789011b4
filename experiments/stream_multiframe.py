"""Does a second frame make the stream path's reblur objective better posed? On training-split clips only.

A stream round asks G(B_t), reblurred along frame t's flow-derived blur m_t, to reproduce B_t. One frame leaves
what the blur removed unconstrained (the sharp anchor stands in for that prior). In a handheld clip the same
content is blurred differently in the neighbouring frames, so the latent of frame t, warped onto frame n = t±1
by the flow between them and reblurred along m_n, must also reproduce B_n: multi-frame deconvolution, whose
directions differ frame to frame. This runs the stream round's 20 Adam steps (all weights, the stream defaults'
lr, crops, w_reblur, w_anchor) with the cross-frame term at weight ``x`` beside the own-frame term (x = 0: today's
objective, the control) and scores the frames after the window against the truth, every round kept.

    python experiments/stream_multiframe.py [--clips 8] [--cross 0 1 3]      # ~45 s per clip on 2 cores
    python experiments/stream_multiframe.py --cross 0 1 --oracle-warp --name stream_multiframe_oracle_warp
"""
from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
import torch.nn.functional as F

from _setup import RESULTS, shipped_start  # noqa: I001  (first: puts bench/ on sys.path)
from adapt_stream import psnr_frames
from common import report, uptime
from stream_guard import training_windows


def warp_to(x: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B,C,H,W) on frame t's grid sampled at p + flow(p) (flow (B,2,H,W), (dy, dx), n → t): x seen from frame
    n, and the mask of pixels whose source lies inside the crop."""
    b, _, h, w = x.shape
    ys = torch.arange(h, dtype=x.dtype).view(1, h, 1) + flow[:, 0]
    xs = torch.arange(w, dtype=x.dtype).view(1, 1, w) + flow[:, 1]
    grid = torch.stack((xs * (2.0 / (w - 1)) - 1.0, ys * (2.0 / (h - 1)) - 1.0), dim=-1)
    valid = ((ys >= 0) & (ys <= h - 1) & (xs >= 0) & (xs <= w - 1)).unsqueeze(1).to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True), valid


def cross_loss(s_hat, flow, m_n, b_n, border: int = 16) -> torch.Tensor:
    """ℓ_rb(R(warp(Ŝ_t), m_n), B_n) where the warp and its blur stay inside the crop (elsewhere B_n itself)."""
    from neurmap.core.losses import reblur_loss
    from neurmap.core.reblur import reblur, reblur_in

    w, valid = warp_to(s_hat, flow)
    r = reblur_in("linear", w, m_n)
    ok = (reblur(valid, m_n) > 0.999).to(r.dtype)
    r = ok * r + (1 - ok) * b_n
    return reblur_loss(r[..., border:-border, border:-border], b_n[..., border:-border, border:-border])


def window_items(b: torch.Tensor, exposure: float, worker, warp_frames: torch.Tensor | None = None) -> dict:
    """Per window frame t in 0..9: its blur m_t, and per neighbour n = t±1 in 0..10 the flow n → t (between the
    blurry frames, or between ``warp_frames``: the sharp ones, the oracle warp)."""
    from neurmap.core.flow_motion import velocity_to_motion

    frames = list(b[:11])
    wf = list((warp_frames if warp_frames is not None else b)[:11])
    est = worker.flow()
    m = {t: velocity_to_motion(worker.velocity(frames, t, 5), exposure) for t in range(11)}
    fl = {(n, t): torch.from_numpy(est(wf[n], wf[t])) for t in range(10) for n in (t - 1, t + 1) if 0 <= n <= 10}
    return {"m": m, "flow": fl}


def round_with_cross(G0, b, items, train_t, x_weight: float, cfg, seed: int):
    """20 Adam steps of w_reblur · (own + x · cross) / (1 + x) + w_anchor · anchor on random crops."""
    from neurmap.core.losses import reblur_objective, sharp_anchor_loss

    G = copy.deepcopy(G0)
    params = list(G.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=cfg.lr)
    g = torch.Generator().manual_seed(seed)
    h, w = b.shape[-2:]
    s = min(cfg.crop, h, w)
    for _ in range(cfg.steps):
        xs, ms, xn, mn, fn = [], [], [], [], []
        for _k in range(cfg.batch):
            t = train_t[int(torch.randint(len(train_t), (1,), generator=g))]
            nbrs = [n for n in (t - 1, t + 1) if 0 <= n <= 10]
            n = nbrs[int(torch.randint(len(nbrs), (1,), generator=g))]
            top = int(torch.randint(0, h - s + 1, (1,), generator=g))
            left = int(torch.randint(0, w - s + 1, (1,), generator=g))
            box = (slice(None), slice(top, top + s), slice(left, left + s))
            xs.append(b[t][box]), ms.append(items["m"][t][box]), xn.append(b[n][box])
            mn.append(items["m"][n][box]), fn.append(items["flow"][(n, t)][box])
        x, m = torch.stack(xs), torch.stack(ms)
        s_hat = G(x).float()
        own = reblur_objective(s_hat, m, x, "linear", cfg.loss_border)
        loss = own
        if x_weight:
            cross = cross_loss(s_hat, torch.stack(fn), torch.stack(mn), torch.stack(xn), cfg.loss_border)
            loss = (own + x_weight * cross) / (1 + x_weight)
        loss = cfg.w_reblur * loss + cfg.w_anchor * sharp_anchor_loss(G, x, 4)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    G.eval()
    for p in params:
        p.requires_grad_(False)
    return G


def main() -> None:
    from neurmap.edge_runtime.stream_adapt import flow_worker, stream_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--cross", type=float, nargs="+", default=[0.0, 1.0, 3.0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--oracle-warp", action="store_true",
                    help="warp by the flow between the sharp frames (a bound: is the warp what limits the term?)")
    ap.add_argument("--name", default="stream_multiframe")
    args = ap.parse_args()
    G0, _, t0, load_before = shipped_start(args.threads)
    cfg = stream_config({"device": "cpu"})
    worker = flow_worker(cfg)
    train_t = [t for t in range(10) if t % 4 != 3]           # the guard's split: every 4th frame held out
    rounds = []
    for k, (photo, e, est, b, s, _train, _held) in enumerate(training_windows(args.clips, worker)):
        items = window_items(b, est.exposure, worker, s if args.oracle_warp else None)
        after = slice(10, 16)
        p0 = psnr_frames(G0, b[after], s[after])
        for x in args.cross:
            G = round_with_cross(G0, b, items, train_t, x, cfg, seed=cfg.seed + k)
            rounds.append({"photo": photo, "exposure": e, "cross": x, "psnr_unadapted": round(p0, 3),
                           "gain_db": round(psnr_frames(G, b[after], s[after]) - p0, 3)})
            print(rounds[-1], flush=True)
    rows = []
    for x in args.cross:
        g = np.array([r["gain_db"] for r in rounds if r["cross"] == x])
        rows.append({"cross": x, "mean_gain_db": round(float(g.mean()), 3), "median_gain_db": round(float(np.median(g)), 3),
                     "worst_db": round(float(g.min()), 3), "losing": int((g < 0).sum()), "gaining_0.5dB": int((g >= 0.5).sum())})
    worker.close()
    report(args.name, rows, {"rounds": rounds, "clips": args.clips, "oracle_warp": args.oracle_warp, "steps": cfg.steps, "lr": cfg.lr,
                             "crop": cfg.crop, "batch": cfg.batch, "w_reblur": cfg.w_reblur, "w_anchor": cfg.w_anchor,
                             "photos": "photo_split train photos (stream_guard's clips), every round kept",
                             "uptime_before": load_before, "uptime_after": uptime(),
                             "seconds": round(time.perf_counter() - t0, 1)}, results=RESULTS)


if __name__ == "__main__":
    main()
