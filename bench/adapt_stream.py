"""Adaptation on streams (issue 13): ``python bench/adapt_stream.py`` -> bench/results/adapt_stream.json.

Held-out photos: :func:`photo_split`'s ``heldout`` split of ``../shared/data/sharp_photos`` (the split no shipped
model trains on), ``--clips`` of them spread over the sorted list.

1. Per held-out photo: a handheld clip (``camera_shake_clip``, a known exposure fraction per clip; the known
   per-pixel blur too where the function offers it). The exposure is *estimated* from the adaptation window
   (its error vs the known fraction is reported), the flow-derived blur of the window's frames computed in
   the flow worker (per ``--flow-points`` stencil: 3 = today's central difference, 5 = four flows), and —
   once per ``--motion-source`` (flow, m, fused) from the same start — the shipped default G
   (``load_weights("default")``, with the shipped M for m / fused, adapted first) adapted ≤ ``--steps`` steps
   on the window (frames 0..W-1; every 4th held out for the guard; no ground truth). PSNR is scored on the
   frames AFTER the window, unadapted vs adapted. An ``oracle`` round under the known blur bounds what the
   reblur objective can give with perfect motion. Per clip: the shake band, and the flow's and M's blur
   against the truth (px, sign-invariant; and the ratio of mean lengths: flow under-reads fast shake).
2. The objective at B, G(B) and S on an after-window frame, under each motion: the flow's, M's absolute
   reading (the ``m`` source), SPEC's relative motion (0 at B by construction) and the known truth.
3. Real ``car`` clip (no truth): adapted on frames 0-29, NIQE of outputs on frames 30-59 (at 640×360).
4. Cost: one adaptation step ÷ (G forward + M forward) on the same crops (and M's own steps); flow per frame
   at 640×360 (×4 for the five-point stencil) vs the default's ONNX Runtime INT8 inference at 640×360
   (``neurmap export``'s recipe), both in CPU time on one thread.

One torch thread (a shared 2-core CPU); the load average is recorded. ``--set KEY=VALUE`` (repeatable) changes a
stream-config key for every round and ``--name`` the results file, for variants beside the defaults, e.g.
``--flow-points 5 --set lr=2e-4 --set reblur_guard=true --name adapt_stream_reblur_guard``.
"""
from __future__ import annotations

import argparse
import copy
import inspect
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import key_values, report, time_it  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
EXPOSURES = (0.3, 0.5, 0.75, 1.0)
SHAKE_BAND = "0.08-0.4 cycles/frame (camera_shake_clip's band)"


def heldout_clips(n: int) -> list[Path]:
    """``n`` photos of photo_split's held-out split, spread over its sorted list."""
    from neurmap.core.data.photos import photo_split

    photos = photo_split(DATA / "sharp_photos", "heldout")
    idx = np.linspace(0, len(photos) - 1, min(n, len(photos))).round().astype(int)
    return [photos[i] for i in sorted(set(idx.tolist()))]


def psnr_frames(G, frames: torch.Tensor, sharp: torch.Tensor) -> float:
    from neurmap.core.metrics import psnr
    with torch.no_grad():
        return float(np.mean([psnr(G(frames[i:i + 1]).clamp(0, 1), sharp[i:i + 1]) for i in range(len(frames))]))


def split_items(items: list) -> tuple[list, list]:
    """The guard's split of the window: every 4th frame held out."""
    return [it for i, it in enumerate(items) if i % 4 != 3], [it for i, it in enumerate(items) if i % 4 == 3]


def adapt(G, M, items: list, source: str, steps: int, points: int = 3, overrides: dict | None = None):
    """One guarded stream round of ``G`` (and ``M`` for m / fused) in place on the window's items;
    ``overrides``: stream-config keys set for every round (``--set``)."""
    from neurmap.edge_runtime.stream_adapt import StreamAdapter, stream_config

    train, held = split_items(items)
    cfg = stream_config({"steps": steps, "device": "cpu", "motion_source": source, "flow_points": points,
                         **(overrides or {})})
    return StreamAdapter(G, cfg, M if source != "flow" else None).run_round(train, held)


@torch.no_grad()
def vs_truth(motion: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    """(sign-invariant per-pixel error in px, mean length ÷ the truth's) of a motion map (N,2,H,W) or (2,H,W)."""
    from neurmap.core.flow_motion import blur_px
    from neurmap.core.losses import sign_invariant_l1

    m, t = (x.float()[None] if x.dim() == 3 else x.float() for x in (motion, truth))
    return 20.0 * float(sign_invariant_l1(m, t)), blur_px(m) / max(blur_px(t), 1e-6)


@torch.no_grad()
def m_reading(M, frames: torch.Tensor) -> torch.Tensor:
    from neurmap.core.reblur import canonical_motion
    return torch.cat([canonical_motion(M(frames[i:i + 1]).float()) for i in range(len(frames))])


def cpu_ms(fn, repeat: int = 5) -> float:
    """Median CPU milliseconds of ``fn`` (process time after one warm-up): on a shared, loaded CPU wall time
    is mostly the other jobs' (both sides of a cost ratio run on one thread here)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return 1000 * float(np.median(times))


def dominant_frequency(truth: torch.Tensor) -> float:
    """Cycles per frame of the strongest component of the clip's mean blur vector over time (a coarse reading
    of the shake band: resolution 1 / n_frames)."""
    s = truth.float().mean(dim=(2, 3)).numpy()                 # (n, 2)
    spec = np.abs(np.fft.rfft(s - s.mean(0), axis=0)).sum(1)
    k = int(np.argmax(spec[1:])) + 1
    return round(k / len(s), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=8, help="held-out photos (photo_split 'heldout'), one clip each")
    ap.add_argument("--motion-source", default="flow,m,fused", help="comma-separated: flow, m, fused")
    ap.add_argument("--flow-points", default="3,5", help="comma-separated velocity stencils: 3 and/or 5")
    ap.add_argument("--no-oracle", action="store_true", help="skip the oracle round under the known blur "
                    "(an upper bound of what the reblur objective gives; needs camera_shake_clip's motion=True)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--window", type=int, default=10, help="adaptation window: frames 0..W-1; scored after it")
    ap.add_argument("--size", default="192x256")
    ap.add_argument("--skip-car", action="store_true")
    ap.add_argument("--skip-int8", action="store_true")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a stream-config key for every round, repeatable (e.g. --set lr=2e-4 --set reblur_guard=true)")
    ap.add_argument("--name", default="adapt_stream", help="results file NAME.json")
    ap.add_argument("--results", type=Path, default=None, help="folder for NAME.json (default bench/results)")
    args = ap.parse_args()
    overrides = key_values(args.set)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    from neurmap.core import load_motion, load_weights
    from neurmap.core.data import camera_shake_clip, frame_source
    from neurmap.core.exposure import estimate_exposure
    from neurmap.core.flow_motion import FlowEstimator, blur_px, velocity, velocity_to_motion
    from neurmap.edge_runtime.adapt_config import AdaptConfig
    from neurmap.edge_runtime.adaptation import _to_uint8_chw
    from neurmap.edge_runtime.stream_adapt import MotionFrame, flow_worker, motion_frames, objective_at, stream_config

    sources = [s.strip() for s in args.motion_source.split(",") if s.strip()]
    points = [int(p) for p in args.flow_points.split(",") if p.strip()]
    for s in sources:
        AdaptConfig(motion_source=s)                       # a one-line ConfigError for an unknown one
    for p in points:
        AdaptConfig(flow_points=p)
    h, w = (int(v) for v in args.size.split("x"))
    M0 = load_motion("default").eval()
    G0, _ = load_weights("default")
    G0.eval()
    has_truth = "motion" in inspect.signature(camera_shake_clip).parameters
    worker = flow_worker(stream_config())               # the stream path's default flow settings
    rows, clips, objective = [], [], []
    t_all = time.perf_counter()
    for k, photo in enumerate(heldout_clips(args.clips)):
        e_true = EXPOSURES[k % len(EXPOSURES)]
        out = camera_shake_clip(str(photo), n_frames=args.frames, size=(h, w), max_blur_px=12.0, exposure=e_true,
                                seed=100 + k, **({"motion": True} if has_truth else {}))
        blurry, sharp = out[0], out[1]
        truth = out[2] if has_truth else None
        frames = list(blurry)
        after = slice(args.window, args.frames)
        clip = {"photo": f"{photo.parent.name}/{photo.name}", "exposure": e_true,
                "psnr_blurry": round(psnr_frames(torch.nn.Identity(), blurry[after], sharp[after]), 3),
                "psnr_unadapted": round(psnr_frames(G0, blurry[after], sharp[after]), 3)}
        win = truth[:args.window] if truth is not None else None
        if truth is not None:
            clip.update({"truth_blur_px": round(blur_px(win), 2), "shake_peak_cpf": dominant_frequency(truth),
                         **dict(zip(("M_err_px", "M_over_truth"),
                                    (round(v, 3) for v in vs_truth(m_reading(M0, blurry[:args.window]), win))))})
        runs = []                                      # (label, points, items)
        for pts in points:
            est = estimate_exposure(frames[:args.window], points=pts)
            items = motion_frames(frames[:args.window + 1], list(range(args.window)), est.exposure, worker, pts)
            clip.update({f"exposure_est@{pts}": round(est.exposure, 3),
                         f"exposure_err_%@{pts}": round(100 * abs(est.exposure - e_true) / e_true, 1),
                         f"flow_blur_px@{pts}": round(float(np.mean([blur_px(it.motion) for it in items])), 2)})
            if win is not None:
                err, ratio = vs_truth(torch.stack([it.motion for it in items]), win)
                clip.update({f"flow_err_px@{pts}": round(err, 3), f"flow_over_truth@{pts}": round(ratio, 3)})
            runs += [(src, pts, items) for src in sources]
            if k < 3 and pts == points[0]:             # the objective at B, G(B), S (an after-window frame)
                t = args.window + 2
                m = velocity_to_motion(velocity(frames, t, FlowEstimator(), pts), est.exposure)[None]
                with torch.no_grad():
                    cand = {"B": blurry[t:t + 1], "G(B)": G0(blurry[t:t + 1]).clamp(0, 1), "S": sharp[t:t + 1]}
                    row = {f"{n}:{kk}": round(v, 5) for n, d in objective_at(blurry[t:t + 1], m, cand, M0).items()
                           for kk, v in d.items()}
                    if truth is not None:
                        row.update({f"{n}:absolute_truth": round(d["absolute_flow"], 5) for n, d in
                                    objective_at(blurry[t:t + 1], truth[t:t + 1], cand).items()})
                objective.append({"photo": photo.name, "flow_points": pts, **row})
        if win is not None and not args.no_oracle:
            runs.append(("oracle", 0, [MotionFrame(_to_uint8_chw(frames[t]), truth[t]) for t in range(args.window)]))
        for src, pts, items in runs:
            G, M = copy.deepcopy(G0), copy.deepcopy(M0)
            res = adapt(G, M, items, "flow" if src == "oracle" else src, args.steps, pts or 3, overrides)
            p1 = psnr_frames(G, blurry[after], sharp[after])
            mi = res.motion
            r = {"photo": clip["photo"], "source": src, "points": pts or None, "psnr_unadapted": clip["psnr_unadapted"],
                 "psnr_adapted": round(p1, 3), "gain_db": round(p1 - clip["psnr_unadapted"], 3),
                 "accepted": res.accepted, "steps": res.steps, "step_s": round(res.step_seconds, 3),
                 "m_accepted": mi.get("m_accepted"), "m_step_s": mi.get("m_step_s"), "m_share": mi.get("m_share"),
                 "m_flow_err_px": mi.get("m_heldout_err_px"), "reason": res.reason[:70],
                 **{f"guard_{k}": [round(getattr(res.before, k) or 0, 4), round(getattr(res.after, k) or 0, 4)
                                   if res.after else None] for k in ("total", "probe_psnr", "sharp_psnr", "niqe")}}
            if win is not None and src in ("m", "fused"):
                r["M_err_px_after"] = round(vs_truth(m_reading(M, blurry[:args.window]), win)[0], 3)
            rows.append(r)
            print(rows[-1], flush=True)
        clips.append(clip)
        print(clip, flush=True)

    car = {}
    src_car = DATA / "real_video" / "car"
    seq = None
    if src_car.is_dir() and not args.skip_car:
        import torch.nn.functional as F
        from neurmap.core.metrics import niqe
        seq = frame_source(src_car)
        fr = [F.interpolate(seq[i][None], size=(360, 640), mode="area")[0] for i in range(len(seq))]
        test = [fr[i] for i in range(30, len(fr), 5)]
        with torch.no_grad():
            car = {"niqe_input": round(float(np.mean([niqe(x) for x in test])), 3),
                   "niqe_unadapted": round(float(np.mean([niqe(G0(x[None])[0].clamp(0, 1)) for x in test])), 3)}
        for pts in points:
            est = estimate_exposure(fr[:30], points=pts)
            items = motion_frames(fr[:31], list(range(30)), est.exposure, worker, pts)
            car[f"exposure_est@{pts}"] = round(est.exposure, 3)
            car[f"flow_blur_px@{pts}"] = round(float(np.mean([blur_px(it.motion) for it in items])), 2)
            for s in sources:
                G, M = copy.deepcopy(G0), copy.deepcopy(M0)
                res = adapt(G, M, items, s, args.steps, pts, overrides)
                with torch.no_grad():
                    n1 = float(np.mean([niqe(G(x[None])[0].clamp(0, 1)) for x in test]))
                car[f"{s}@{pts}"] = {"niqe_adapted": round(n1, 3), "accepted": res.accepted, "reason": res.reason,
                                     "motion": res.motion}
        print("car", car, flush=True)

    # cost
    rc = stream_config(overrides)                       # the forward on the round's own crops (batch x crop²)
    x = torch.rand(rc.batch, 3, rc.crop, rc.crop)
    with torch.no_grad():
        fwd = time_it(lambda: (G0(x), M0(x)), repeat=5)
    cost = {"G_plus_M_forward_s": round(fwd, 4), "forward_on": f"{rc.batch} x {rc.crop}^2"}
    for s in sources:
        st = [r["step_s"] for r in rows if r["source"] == s and r["step_s"] > 0]
        ms = [r["m_step_s"] for r in rows if r["source"] == s and r["m_step_s"]]
        if st:
            cost[f"{s}:adapt_step_s"] = round(float(np.median(st)), 4)
            cost[f"{s}:step_over_forward"] = round(float(np.median(st)) / fwd, 2)
        if ms:
            cost[f"{s}:m_step_over_forward"] = round(float(np.median(ms)) / fwd, 2)
    a = (torch.rand(3, 360, 640) * 255).to(torch.uint8)
    car_pair = car_five = None
    if src_car.is_dir():
        import torch.nn.functional as F
        seq = seq if seq is not None else frame_source(src_car)
        car_five = [(F.interpolate(seq[i][None], size=(360, 640), mode="area")[0] * 255 + 0.5).to(torch.uint8)
                    for i in range(10, 15)]         # uint8, as the stream buffer holds frames
        car_pair = [F.interpolate(seq[i][None], size=(360, 640), mode="area")[0] for i in (10, 12)]
    five = car_five or [a] * 5
    import cv2
    cv2.setNumThreads(1)                      # one thread each, like the INT8 engine below
    flow_ms = {f"dis_{p}_scale{s}_{n}pt": cpu_ms(lambda s=s, p=p, n=n: velocity(five, 2, FlowEstimator(scale=s, preset=p), n))
               for p, s in (("medium", 1.0), ("medium", 0.5), ("fast", 0.5), ("ultrafast", 0.5)) for n in (3, 5)}
    int8_ms = None
    if not args.skip_int8:
        from neurmap.demo import prepare_runner
        meta = load_weights("default")[1]
        calib = np.stack([p.numpy() for p in (car_pair or [a.float() / 255])])[:, None][:, 0]
        r = prepare_runner(G0, meta, 360, 640, np.ascontiguousarray(calib, np.float32), backend="ort-int8", threads=1)
        one = calib[:1]
        int8_ms = cpu_ms(lambda: r.infer(one))
    cost.update({"clock": "CPU ms (process time), one thread each", "flow_ms_640x360": {k: round(v, 2) for k, v in flow_ms.items()},
                 "int8_ms_640x360": round(int8_ms, 2) if int8_ms else None,
                 "flow_over_int8_%": {k: round(100 * v / int8_ms, 1) for k, v in flow_ms.items()} if int8_ms else None,
                 "flow_worker_ms_per_frame": round(1000 * worker.per_frame(), 2)})
    worker.close()
    summary = {"clips": len(clips), "seconds": round(time.perf_counter() - t_all, 1), "load_avg": os.getloadavg()}
    for s, pts in dict.fromkeys((r["source"], r["points"]) for r in rows):
        sel = [r for r in rows if r["source"] == s and r["points"] == pts]
        g = [r["gain_db"] for r in sel]
        summary[f"{s}@{pts}" if pts else s] = {
            "mean_gain_db": round(float(np.mean(g)), 3), "min_gain_db": round(float(np.min(g)), 3),
            "accepted": sum(r["accepted"] for r in sel), "clips_gaining_0.5dB": sum(v >= 0.5 for v in g)}
    for key in sorted({k_ for c in clips for k_ in c if k_.split("@")[0] in (
            "exposure_err_%", "flow_err_px", "flow_over_truth", "M_err_px", "M_over_truth")}):
        summary[f"{key}_mean"] = round(float(np.mean([c[key] for c in clips if key in c])), 3)
    print("objective", objective)
    print("cost", cost)
    print("summary", summary)
    report(args.name, rows, {"summary": summary, "clips": clips, "objective_at": objective, "car": car,
                                  "cost": cost, "settings": {**vars(args), "results": str(args.results)},
                                  "shake_band": SHAKE_BAND, "heldout_rule": "photo_split(sharp_photos, 'heldout')",
                                  "weights": "default"}, results=args.results)


if __name__ == "__main__":
    main()
