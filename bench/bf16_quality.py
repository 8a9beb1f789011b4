"""Does bf16 autocast keep training quality? ``python bench/bf16_quality.py`` -> bench/results/bf16_quality.json.

bench/train_step.py shows bf16 autocast is ~2x faster per iteration on CPUs with AVX512-BF16; this bench checks
that it trains as well, on the proof's data (bench/neurmap_proof.py):

1. Gradient agreement: one full NeurMAP iteration's G and M gradients on the same batch and weights (DMPHN 1-2-4,
   2+2 crops), fp32 vs bf16 autocast — cosine similarity and relative norm difference, and every loss term.
2. Training: the paired-only run, same seed and iterations, in fp32 and in bf16, scored on the proof's held-out
   set (PSNR, SSIM, LPIPS on kernel blur; NIQE on real car frames).
"""
from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import torch

from common import report
from neurmap_proof import SHARED, config, held_out, score
from neurmap.core.train import BatchSampler, build_nets, run_training
from neurmap.core.step import NeurMAPStep


def gradients(precision: str, cfg, it: int = 0) -> tuple[dict, dict, dict]:
    torch.manual_seed(0)
    G, M, D = (n.to(memory_format=torch.channels_last) for n in build_nets(cfg))
    auto = (lambda: torch.autocast("cpu", torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext
    step = NeurMAPStep(G, M, D, grad_clip=None, autocast=auto)
    grads = {"M": None, "G": None}

    def capture(name, net):
        def hook(opt, *_):
            grads[name] = torch.cat([p.grad.flatten().float() for p in net.parameters() if p.grad is not None])
        return hook

    step.opt_M.register_step_pre_hook(capture("M", M))
    step.opt_G.register_step_pre_hook(capture("G", G))
    batch = [b.contiguous(memory_format=torch.channels_last) for b in BatchSampler(cfg).batch(it)]
    losses = step(*batch)
    return grads["G"], grads["M"], {k: float(v) for k, v in losses.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--out", default="runs/bf16_quality")
    ap.add_argument("--seed", type=int, default=0, help="training seed (crops, flips); results go to bf16_quality_seedN.json when not 0")
    args = ap.parse_args()
    rows = []
    cfg = config(Path(args.out) / "grad", False, argparse.Namespace(iterations=1, crop=args.crop, precision="fp32"))
    g32, m32, l32 = gradients("fp32", cfg)
    g16, m16, l16 = gradients("bf16", cfg)
    cos = torch.nn.functional.cosine_similarity
    agreement = {
        "G_grad_cosine": float(cos(g32, g16, dim=0)), "G_grad_rel_norm_diff": float((g16.norm() - g32.norm()) / g32.norm()),
        "M_grad_cosine": float(cos(m32, m16, dim=0)), "M_grad_rel_norm_diff": float((m16.norm() - m32.norm()) / m32.norm()),
        "losses_fp32": l32, "losses_bf16": l16,
        "max_rel_loss_diff": max(abs(l16[k] - l32[k]) / max(abs(l32[k]), 1e-12) for k in l32)}
    print({k: v for k, v in agreement.items() if not k.startswith("losses")})
    kernel, car = held_out()
    rows.append({"run": "official DMPHN 1-2-4 (start)", **score(SHARED / "pretrained" / "dmphn_1_2_4", kernel, car)})
    timing = {}
    for precision in ("fp32", "bf16"):
        out = Path(args.out) / f"{precision}_seed{args.seed}"
        run_cfg = config(out, True, argparse.Namespace(iterations=args.iterations, crop=args.crop, precision=precision))
        run_cfg.seed = args.seed
        t = time.perf_counter()
        run_training(run_cfg, progress=False)
        timing[precision] = round(time.perf_counter() - t, 1)
        rows.append({"run": f"(a) paired only, {precision}, {args.iterations} it",
                     **score(out / "final.safetensors", kernel, car), "train_s": timing[precision]})
        print(rows[-1])
    diff = {k: rows[2][k] - rows[1][k] for k in ("psnr", "ssim", "lpips", "niqe_car")}
    report("bf16_quality" + (f"_seed{args.seed}" if args.seed else ""), rows, {"settings": vars(args), "gradient_agreement": agreement,
                                  "bf16_minus_fp32": diff, "train_seconds": timing})


if __name__ == "__main__":
    main()
