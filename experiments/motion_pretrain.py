"""Pre-train the motion net M supervised on kernel-synthesized blur with a known motion field.

Why: issues 3 and 6 both found that SPEC's unpaired G terms pull G toward its input unless M reads the blur in B
(experiments/objective_check.py): the reblur term is exactly zero at the identity. M trained from Xavier init with
SPEC's own losses reads ~0.3 of ~4 px in a CPU-hour; the earlier supervised net (adapt_bench.train, 2,246 steps
of 64² crops, one thread on a busy box) reads 0.85 of 4.15 px on the adaptation bench's crops. This script gives
M far more supervised steps in the same wall time: bf16 autocast, channels-last, both cores, batches of 96² crops,
linear lr decay.

Loss (per pixel, pixels/20 units): sign-invariant L1 against the known field (a symmetric blur has no direction
sign) + ``--reblur-weight`` · MSE(R(S, vn M(B) − vn M(S)), B), the reblur consistency with the true sharp crop —
the quantity NeurMAP's G objective relies on, with zero gradient on flat crops where blur is unobservable.

Sharp sources (``adapt_bench._sources``): gopro240 frames 0-79 (the proof's *paired* frames; the proof's unpaired
80-99 and held-out 100-119 are never seen), Levin's sharp images, scikit-image photos other than the adaptation
bench's test scenes. Held-out score: kernel blur of gopro240 frames 100-119 (96² textured crops).

    python experiments/motion_pretrain.py [--minutes 40] [--init runs/adapt/motion_kernel.safetensors]
        -> runs/motion/motion_pretrained.safetensors (+ .json), experiments/results/motion_pretrain.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from _setup import RESULTS  # noqa: I001  (first: puts bench/ on sys.path)
from adapt_bench import SHARED, _sources, sample_batch, save_motion_net, sign_invariant_l1
from common import report

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "motion" / "motion_pretrained.safetensors"


def heldout(n: int = 32, crop: int = 96) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from neurmap.core.data import list_images, read_image
    held = [(read_image(p) * 255).round().to(torch.uint8)
            for p in list_images(SHARED / "gopro240" / "GOPR0477_11_00")[100:120:4]]
    return sample_batch(held, n, crop, torch.Generator().manual_seed(1234), p_sharp=0.0)


@torch.no_grad()
def score(net, data) -> dict:
    """Held-out error and what M reads, in pixels: mean |vn M(B)| vs the true mean |m| (textured crops only)."""
    from neurmap.core.reblur import canonical_motion
    b, s, m = data
    net.eval()
    pred = torch.cat([net(b[i:i + 8]) for i in range(0, len(b), 8)])
    ps = torch.cat([net(s[i:i + 8]) for i in range(0, len(s), 8)])
    net.train()
    rel = canonical_motion(pred) - canonical_motion(ps)
    return {"heldout_l1_px": round(sign_invariant_l1(pred, m).item() * 20, 3),
            "zero_predictor_l1_px": round(sign_invariant_l1(torch.zeros_like(m), m).item() * 20, 3),
            "reads_px": round(float(pred.norm(dim=1).mean() * 20), 3),
            "true_px": round(float(m.norm(dim=1).mean() * 20), 3),
            "on_sharp_px": round(float(ps.norm(dim=1).mean() * 20), 3),
            "reblur_mse_M": float(reblur_mse(s, rel, b)),
            "reblur_mse_true": float(reblur_mse(s, m, b)),
            "reblur_mse_identity": float(reblur_mse(s, torch.zeros_like(m), b))}


def reblur_mse(sharp, motion, blurry, border: int = 8):
    """MSE(R(S, motion), B) with replicated borders (zeros would darken them and teach M to read less there)."""
    from neurmap.core.data import kernel_blur
    d = kernel_blur(sharp, motion, border="replicate") - blurry
    return torch.mean(d[..., border:-border, border:-border] ** 2)


def train(minutes: float, init: Path | None, batch: int, crop: int, lr: float, reblur_weight: float,
          seed: int, threads: int, out: Path) -> dict:
    from neurmap.core import load_motion
    from neurmap.core.models import build_network
    from neurmap.core.reblur import canonical_motion

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = build_network("motion")
    prior_steps = 0
    if init is not None:
        net.load_state_dict(load_motion(init).net.state_dict())
        meta = init.with_suffix(".json")
        prior_steps = int(json.loads(meta.read_text()).get("steps", 0)) if meta.exists() else 0
    net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    frames, data = _sources(), heldout()
    before = score(net, data)
    print("before", before, flush=True)
    budget = minutes * 60.0
    t0, step, log = time.perf_counter(), 0, []
    while (elapsed := time.perf_counter() - t0) < budget:
        for pg in opt.param_groups:                       # linear decay to 0 over the wall-time budget
            pg["lr"] = lr * max(1.0 - elapsed / budget, 0.0)
        b, s, m = sample_batch(frames, batch, crop, g)
        x = torch.cat((b, s)).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = net(x).float()
        pb, ps = y[:batch], y[batch:]
        loss = sign_invariant_l1(pb, m) + ps.abs().sum(1).mean()   # the same crops unblurred: zero motion
        if reblur_weight > 0:
            rel = canonical_motion(pb) - canonical_motion(ps)
            loss = loss + reblur_weight * reblur_mse(s, rel, b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 200 == 0:
            row = {"step": step, "seconds": round(time.perf_counter() - t0), "loss": round(loss.item(), 4),
                   **score(net, data)}
            log.append(row)
            print(row, flush=True)
    after = score(net, data)
    stats = {"steps": prior_steps + step, "this_run_steps": step, "init": str(init) if init else None,
             "seconds": round(time.perf_counter() - t0, 1), "batch": batch, "crop": crop, "lr": lr,
             "reblur_weight": reblur_weight, "threads": threads, "precision": "bf16", "before": before,
             "after": after, "log": log}
    save_motion_net(out, net, "experiments/motion_pretrain.py",
                    {k: v for k, v in stats.items() if k not in ("log", "before")}, stats)
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=40.0)
    ap.add_argument("--init", type=Path, default=None, help="continue from this motion net")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--crop", type=int, default=96)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--reblur-weight", type=float, default=100.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    stats = train(a.minutes, a.init, a.batch, a.crop, a.lr, a.reblur_weight, a.seed, a.threads, a.out)
    rows = [{"": k, **{c: stats[k][c] for c in ("heldout_l1_px", "zero_predictor_l1_px", "reads_px", "true_px",
                                               "on_sharp_px", "reblur_mse_M", "reblur_mse_true")}}
            for k in ("before", "after")]
    report("motion_pretrain", rows, stats, results=RESULTS)


if __name__ == "__main__":
    main()
