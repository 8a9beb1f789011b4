#!/usr/bin/env python
"""How well a motion net reads camera blur, beside flow-derived blur — what issue #13 accepts the shipped M on.

* ``shake`` — held-out camera-shake clips with known per-pixel blur: 8 photos of ``photo_split(..., "heldout")``
  (never drawn in training), one 8-frame 192×256 clip each (:func:`camera_shake_clip`, 15 sub-frames — reblur's
  15 taps —, shake up to 15 px and 1°), exposure fractions 0.3 / 0.5 / 0.75 / 1.0 (two clips each). Truth:
  ``camera_shake_clip(..., motion=True)`` (:func:`affine_blur_motion`). Per exposure and over all clips:
  ``epe`` = mean over pixels of min(‖p − t‖, ‖p + t‖) (a symmetric blur has no sign) / the true mean ‖t‖,
  ``mag`` = mean ‖p‖ / mean ‖t‖ (pooled over pixels; an 8 px border left out for every method alike).
  Acceptance: epe ≤ 0.35 and 0.8 ≤ mag ≤ 1.25. Methods: each ``--motion`` net, flow-derived blur
  (:mod:`neurmap.core.flow_motion`) with the known exposure and with :func:`estimate_exposure` per clip.
  By convention flow-derived blur is e·v/2 while 15 sub-frames span 14/15 of the exposure, so a perfect flow
  reads mag ≈ 1.07 here.
* ``car`` — frames 40-59 of the real ``car`` clip (``motion.yaml`` trains on 0-39 only): no truth, so each net's
  mean blur against the flow-derived blur of those frames (exposure estimated on them, the training target's
  code: :class:`VideoFlowMotion`), their ratio, and the sign-invariant EPE against the flow / its mean.

    python bench/motion_quality.py [--motion default] [--motion runs/motion/final.safetensors] [--name NAME]

``--motion`` takes a shipped name, a checkpoint with a motion net, or a run's ``ckpt_*.pt`` (its EMA when it
has one). One thread: ~2-4 minutes.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402

from neurmap.core.data import VideoFlowMotion, camera_shake_clip, photo_split  # noqa: E402
from neurmap.core.exposure import estimate_exposure  # noqa: E402
from neurmap.core.flow_motion import FlowEstimator, clip_velocities, velocity_to_motion  # noqa: E402
from neurmap.core.models.motion import MOTION_SCALE  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
EXPOSURES = (0.3, 0.5, 0.75, 1.0)
BORDER = 8
CAR_FRAMES = (40, 60)


def shake_clips(data: Path = DATA, n_clips: int = 8, frames: int = 8, size=(192, 256)) -> list[dict]:
    """The held-out clips: blurry frames, truth and exposure; the same every run."""
    held = photo_split(data / "sharp_photos", "heldout")
    clips = []
    for k in range(n_clips):
        e = EXPOSURES[k % len(EXPOSURES)]
        b, _, m = camera_shake_clip(str(held[(9 * k + 4) % len(held)]), n_frames=frames, sub_frames=15, size=size,
                                    max_blur_px=15.0, exposure=e, seed=500 + k, motion=True)
        clips.append({"blurry": b, "truth": m, "exposure": e})
    return clips


def load_motion_net(spec: str) -> torch.nn.Module:
    """A shipped name or checkpoint (:func:`load_motion`), or a run's ``ckpt_*.pt`` (EMA preferred)."""
    from neurmap.core import load_motion
    from neurmap.core.models import build_network
    from neurmap.core.models.wrapper import MotionModel

    if spec.endswith(".pt"):
        state = torch.load(spec, map_location="cpu", weights_only=True)
        ema = state.get("ema")
        if ema is not None and state.get("config", {}).get("motion_only"):
            sd = {k[len("module."):]: v for k, v in ema.items() if k.startswith("module.")}
        else:
            sd = state["M"]
        model = MotionModel(build_network("motion"))
        model.load_state_dict(sd)
        return model.eval()
    return load_motion(spec).eval()


@torch.no_grad()
def predict(net, blurry: torch.Tensor, chunk: int = 4) -> torch.Tensor:
    return torch.cat([net(blurry[i:i + chunk].contiguous(memory_format=torch.channels_last)).float()
                      for i in range(0, blurry.shape[0], chunk)])


def flow_motion(blurry: torch.Tensor, exposure: float | None) -> tuple[torch.Tensor, float]:
    """Flow-derived blur of every frame of a clip (exposure estimated on the clip when None)."""
    frames = list(blurry)
    e = exposure if exposure is not None else estimate_exposure(frames).exposure
    vel = clip_velocities(frames, FlowEstimator())
    return torch.stack([velocity_to_motion(v, e) for v in vel]), e


def sums(pred: torch.Tensor, truth: torch.Tensor, border: int = BORDER) -> np.ndarray:
    """(Σ sign-invariant EPE, Σ ‖p‖, Σ ‖t‖, pixels) in px over the interior, for pooling."""
    c = (slice(None), slice(None), slice(border, -border), slice(border, -border))
    p, t = pred[c] * MOTION_SCALE, truth[c] * MOTION_SCALE
    epe = torch.minimum((p - t).norm(dim=1), (p + t).norm(dim=1))
    return np.array([float(epe.sum()), float(p.norm(dim=1).sum()), float(t.norm(dim=1).sum()), epe.numel()])


def score_row(method: str, group: str, s: np.ndarray) -> dict:
    """One table row from pooled sums; on ``car`` the flow-derived blur stands where the truth would."""
    return {"method": method, "set": group, "epe": s[0] / s[2], "mag": s[1] / s[2], "true_px": s[2] / s[3],
            "pred_px": s[1] / s[3]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--motion", action="append", default=[], help="NAME_OR_PATH of a motion net; repeatable "
                    "(default: the shipped 'default')")
    ap.add_argument("--name", default="motion_quality", help="results file name (bench/results/NAME.json)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    nets = {spec: load_motion_net(spec) for spec in (args.motion or ["default"])}
    clips = shake_clips()
    per: dict[str, dict[str, np.ndarray]] = {}
    est = []
    for clip in clips:
        b, t, e = clip["blurry"], clip["truth"], clip["exposure"]
        preds = {name: predict(net, b) for name, net in nets.items()}
        preds["flow (known exposure)"] = flow_motion(b, e)[0]
        preds["flow (estimated exposure)"], e_hat = flow_motion(b, None)
        est.append({"exposure": e, "estimated": round(e_hat, 3)})
        for name, p in preds.items():
            acc = per.setdefault(name, {})
            for group in (f"shake e={e:g}", "shake all"):
                acc[group] = acc.get(group, 0) + sums(p, t)
    rows = [score_row(name, g, s) for name, groups in per.items()
            for g, s in sorted(groups.items(), key=lambda kv: (kv[0] == "shake all", kv[0]))]
    for r in rows:
        r["accept"] = bool(r["epe"] <= 0.35 and 0.8 <= r["mag"] <= 1.25) if r["set"] == "shake all" else ""

    car = VideoFlowMotion(DATA / "real_video" / "car", frame_range=CAR_FRAMES)
    car_e = car.prepare()
    car_b = torch.stack([f.float() / 255.0 for f in car._frames])
    car_flow = torch.stack([m.float() for m in car._motion])
    car_set = f"car {CAR_FRAMES[0]}-{CAR_FRAMES[1] - 1} vs flow"
    car_rows = [{**score_row(name, car_set, sums(predict(net, car_b, chunk=2), car_flow)), "accept": ""}
                for name, net in nets.items()]
    report(args.name, rows + car_rows, {
        "seconds": round(time.time() - t0, 1), "motion": list(nets), "exposure_estimates": est,
        "car_exposure_estimated": car_e,
        "shake": "8 held-out photos x 8 frames, 192x256, 15 sub-frames, max 15 px / 1 deg; exposures "
                 f"{EXPOSURES} (2 clips each); truth: camera_shake_clip(motion=True); border {BORDER} px excluded",
        "epe": "mean sign-invariant endpoint error / true mean |m| (px); acceptance <= 0.35",
        "mag": "mean |pred| / mean |truth|; acceptance 0.8-1.25 (flow-derived blur is e*v/2: ~1.07 by convention)",
        "car": "frames 40-59 of real_video/car: true_px is their flow-derived blur (exposure estimated on them), "
               "pred_px the net's, mag the ratio, epe the sign-invariant EPE against the flow / its mean"})


if __name__ == "__main__":
    main()
