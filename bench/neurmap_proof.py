"""Does NeurMAP work? (a) paired-only vs (b) NeurMAP (paired + unpaired), same iterations, same start.

Start: the official DMPHN 1-2-4 weights (../shared/data/pretrained/dmphn_1_2_4). Paired data: GoPro-protocol
pairs from gopro240 frames 0-79. Unpaired blurry: a blur the paired set never shows — kernel-synthesized
blur of frames 80-99 and the real `car` frames 0-39. Held out for evaluation: kernel blur of frames 100-119
(whole frames at 640x360: PSNR, SSIM, LPIPS) and car frames 40-59 (NIQE). Writes bench/results/neurmap_proof.json.

    python bench/neurmap_proof.py [--iterations 60] [--crop 128] [--precision bf16]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from torch.utils.data import Subset

from common import report
from neurmap.core import load_weights
from neurmap.core.data import KernelBlurred, UnpairedFolder, frame_source
from neurmap.core.evaluate import evaluate
from neurmap.core.train import TrainConfig, run_training

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
GOPRO = SHARED / "gopro240" / "GOPR0477_11_00"
CAR = SHARED / "real_video" / "car"


def config(out: Path, paired_only: bool, args) -> TrainConfig:
    return TrainConfig.from_dict(dict(
        backbone="dmphn_1_2_4", init_weights=str(SHARED / "pretrained" / "dmphn_1_2_4"), output_dir=str(out),
        iterations=args.iterations, crop=args.crop, checkpoint_every=max(args.iterations // 2, 1),
        tensorboard=False, precision=args.precision, channels_last=True, paired_only=paired_only, seed=0,
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
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--out", default="runs/proof")
    args = ap.parse_args()
    kernel, car = held_out()
    rows, timing = [], {}
    rows.append({"model": "official DMPHN 1-2-4 (start)", **score(SHARED / "pretrained" / "dmphn_1_2_4", kernel, car)})
    print(rows[-1])
    for name, paired_only in (("(a) paired only", True), ("(b) NeurMAP", False)):
        out = Path(args.out) / ("paired_only" if paired_only else "neurmap")
        t = time.perf_counter()
        run_training(config(out, paired_only, args), progress=True)
        timing[name] = time.perf_counter() - t
        rows.append({"model": name, **score(out / "final.safetensors", kernel, car)})
        print(rows[-1], f"{timing[name]:.0f} s")
    a, b = rows[1], rows[2]
    verdict = {"psnr_b_minus_a": b["psnr"] - a["psnr"], "lpips_b_minus_a": b["lpips"] - a["lpips"],
               "niqe_b_minus_a": b["niqe_car"] - a["niqe_car"],
               "b_beats_a": b["psnr"] > a["psnr"] and b["lpips"] < a["lpips"] and b["niqe_car"] < a["niqe_car"]}
    report("neurmap_proof", rows, {"settings": vars(args), "train_seconds": timing, "verdict": verdict})
    print(verdict)


if __name__ == "__main__":
    main()
