"""Does NeurMAP work? (a) paired-only vs (b) NeurMAP (paired + unpaired), same iterations, same start.

Start: the official DMPHN 1-2-4 weights (../shared/data/pretrained/dmphn_1_2_4). Paired data: GoPro-protocol
pairs from gopro240 frames 0-79. Unpaired blurry: a blur the paired set never shows — kernel-synthesized
blur of frames 80-99 and the real `car` frames 0-39. Held out for evaluation: kernel blur of frames 100-119
(whole frames at 640x360: PSNR, SSIM, LPIPS) and car frames 40-59 (NIQE). Writes bench/results/neurmap_proof.json.

    python bench/neurmap_proof.py [--iterations 60] [--warmup 60] [--crop 128] [--precision bf16]
        [--motion runs/motion/motion_pretrained.safetensors [--motion-lr 0]] [--name neurmap_proof]

With ``--warmup N`` a third run, (b') NeurMAP after N warm-up iterations of M and D alone (G frozen), tests the
explanation for (b) losing: a fresh motion net reads almost no motion, so the reblur term pulls G toward the
identity. ``--motion`` adds (b''): M starts from a pre-trained motion net (experiments/motion_pretrain.py) instead of
Xavier init. Every trained run also reports what its motion net reads on the held-out kernel blur (mean |motion|,
error against the known field, in pixels).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.utils.data import Subset

from common import report
from neurmap.core import load_motion, load_weights
from neurmap.core.data import KernelBlurred, UnpairedFolder, frame_source
from neurmap.core.evaluate import evaluate
from neurmap.core.reblur import canonical_motion
from neurmap.core.train import TrainConfig, run_training

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
GOPRO = SHARED / "gopro240" / "GOPR0477_11_00"
CAR = SHARED / "real_video" / "car"


def config(out: Path, paired_only: bool, args, warmup: int = 0, motion: str | None = None) -> TrainConfig:
    extra = {"lr_M": args.motion_lr} if motion and args.motion_lr is not None else {}
    return TrainConfig.from_dict(dict(**extra,
        backbone="dmphn_1_2_4", init_weights=str(SHARED / "pretrained" / "dmphn_1_2_4"), output_dir=str(out),
        iterations=args.iterations, crop=args.crop, checkpoint_every=max(args.iterations // 2, 1),
        tensorboard=False, precision=args.precision, channels_last=True, paired_only=paired_only, seed=0,
        warmup_iterations=warmup, init_motion=motion,
        data={"paired": {"type": "gopro240", "path": str(GOPRO), "frame_range": [0, 80], "n_frames": [7, 13]},
              "unpaired_blurry": [{"type": "kernel", "path": str(GOPRO), "frame_range": [80, 100]},
                                  {"type": "folder", "path": str(CAR), "frame_range": [0, 40]}],
              "unpaired_sharp": {"type": "folder", "path": str(GOPRO), "frame_range": [0, 80]}}))


def held_out():
    frames = frame_source(GOPRO)
    # whole frames at 640x360 (random crops of this clip are mostly flat water), blurred after resizing
    kernel = KernelBlurred([frames[i] for i in range(100, 120, 3)], resize=(360, 640), seed=1234)
    car = Subset(UnpairedFolder(CAR), range(40, 60, 3))
    return kernel, car


@torch.no_grad()
def motion_reading(weights, kernel) -> dict:
    """What the run's motion net reads on the held-out kernel blur (pixels): mean |motion| and its error."""
    M = load_motion(weights).eval()
    items = [kernel[i] for i in range(len(kernel))]
    blurry = torch.stack([it["blurry"] for it in items])
    truth = canonical_motion(torch.stack([it["motion"] for it in items]))
    m = torch.cat([canonical_motion(M(blurry[i:i + 2]).float()) for i in range(0, len(blurry), 2)])
    return {"motion_read_px": float(20 * m.abs().mean()), "motion_true_px": float(20 * truth.abs().mean()),
            "motion_err_px": float(20 * (m - truth).abs().mean())}


def score(weights, kernel, car) -> dict:
    model, _ = load_weights(weights)
    k = evaluate(model, kernel, metrics=("psnr", "ssim", "lpips"), progress=False)
    c = evaluate(model, car, metrics=("niqe",), crop=(360, 640), progress=False)
    return {"psnr": k["means"]["output"]["psnr"], "ssim": k["means"]["output"]["ssim"],
            "lpips": k["means"]["output"]["lpips"], "niqe_car": c["means"]["output"]["niqe"],
            "input_psnr": k["means"]["input"]["psnr"], "input_lpips": k["means"]["input"]["lpips"],
            "input_niqe_car": c["means"]["input"]["niqe"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=0, help="also run (b') with this many M+D warm-up iterations")
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--motion", default=None,
                    help="also run (b'') NeurMAP with M starting from this pre-trained motion net "
                         "(experiments/motion_pretrain.py); SPEC starts M from Xavier init")
    ap.add_argument("--motion-lr", type=float, default=None,
                    help="lr_M for the (b'') run (0 keeps the pre-trained M fixed; default SPEC's 1e-4)")
    ap.add_argument("--only-motion-run", action="store_true", help="skip (a)/(b) training; reuse them from --out")
    ap.add_argument("--name", default="neurmap_proof", help="results file bench/results/NAME.json")
    ap.add_argument("--out", default="runs/proof")
    args = ap.parse_args()
    kernel, car = held_out()
    rows, timing = [], {}
    rows.append({"model": "official DMPHN 1-2-4 (start)", **score(SHARED / "pretrained" / "dmphn_1_2_4", kernel, car)})
    print(rows[-1])
    runs = [("(a) paired only", "paired_only", True, 0, None), ("(b) NeurMAP", "neurmap", False, 0, None)]
    if args.warmup:
        runs.append((f"(b') NeurMAP after {args.warmup} M+D warm-up iterations", "neurmap_warmup", False,
                     args.warmup, None))
    if args.motion:
        lr_m = "" if args.motion_lr is None else f", lr_M {args.motion_lr:g}"
        runs.append((f"(b'') NeurMAP, M pre-trained on kernel blur{lr_m}", "neurmap_premotion" + lr_m.replace(", lr_M ", "_lrM"),
                     False, 0, args.motion))
    for name, folder, paired_only, warmup, motion in runs:
        out = Path(args.out) / folder
        t = time.perf_counter()
        if not (args.only_motion_run and motion is None and (out / "final.safetensors").exists()):
            run_training(config(out, paired_only, args, warmup, motion), progress=True)
        timing[name] = time.perf_counter() - t
        row = {"model": name, **score(out / "final.safetensors", kernel, car)}
        if not paired_only:
            row.update(motion_reading(out / "final.safetensors", kernel))
        rows.append(row)
        print(rows[-1], f"{timing[name]:.0f} s")
    a, b = rows[1], rows[2]
    def beats(r):
        return r["psnr"] > a["psnr"] and r["lpips"] < a["lpips"] and r["niqe_car"] < a["niqe_car"]

    verdict = {"psnr_b_minus_a": b["psnr"] - a["psnr"], "lpips_b_minus_a": b["lpips"] - a["lpips"],
               "niqe_b_minus_a": b["niqe_car"] - a["niqe_car"], "b_beats_a": beats(b)}
    for r in rows[3:]:
        verdict[r["model"]] = {**{f"{k}_minus_a": r[k] - a[k] for k in ("psnr", "lpips", "niqe_car")},
                               "beats_a": beats(r)}
    report(args.name, rows, {"settings": vars(args), "train_seconds": timing, "verdict": verdict})
    print(verdict)


if __name__ == "__main__":
    main()
