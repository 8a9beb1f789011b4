"""Seconds per NeurMAP iteration (2 paired + 2 unpaired, 256², DMPHN 1-2-4-8, M + D + G steps) on this CPU,
against the arithmetic floor measured in the same run: FLOPs of the iteration ÷ this machine's conv
throughput. Also the measured ratio of each optimisation. Runs with no arguments:

    python bench/train_step.py [--size 256] [--iters 3]

Writes bench/results/train_step.json (seconds_per_iter, floor_seconds, ...).
Reference: the official code takes ~15 s per iteration on this class of 2-core machine (ANCHORS.md).
"""
from __future__ import annotations

import argparse
import contextlib

import torch

from common import report, time_it
from core_bench import reblur_loop
from neurmap.core import build_model, reblur
from neurmap.core.profile import count_macs
from neurmap.core.step import NeurMAPStep


def conv_throughput(channels_last: bool) -> float:
    """FLOP/s of this CPU on the dominant layer of DMPHN (128→128 3×3 at 64², batch 4), fwd+bwd."""
    conv = torch.nn.Conv2d(128, 128, 3, padding=1)
    x = torch.rand(4, 128, 64, 64, requires_grad=True)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
        x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    flops = 3 * 2 * 4 * 128 * 128 * 9 * 64 * 64  # forward + input grad + weight grad

    def run():
        conv(x).sum().backward()
    return flops / time_it(run, repeat=5, warmup=2)


def iteration_flops(size: int, n_p: int = 2, n_u: int = 2) -> float:
    """FLOPs (2·MACs) of one iteration as NeurMAPStep runs it; backward = 2× forward where weights train,
    1× where only input gradients flow (frozen nets in G's step)."""
    def macs(name, n):
        with torch.device("meta"):
            net = build_model(name)
        return count_macs(net, torch.empty(n, 3, size, size, device="meta"))
    n = n_p + n_u
    g = macs("dmphn_1_2_4_8", n)
    m1, d1 = macs("motion", 1), macs("discriminator", 1)
    total = (3 * g                      # G forward + backward (weights + input)
             + 3 * 3 * n * m1           # M step: M on B, Ŝ, S (fwd + bwd)
             + 3 * 2 * n * d1           # D step: D on fake + real
             + 2 * n * m1 + n * m1      # G step: M(Ŝ) fwd + input-grad, M(B) no-grad fwd
             + 2 * n * d1)              # G step: D(Ŝ) fwd + input-grad
    return 2.0 * total


def make_step(channels_last: bool, autocast=contextlib.nullcontext, size: int = 256):
    torch.manual_seed(0)
    nets = [build_model("dmphn_1_2_4_8"), build_model("motion"), build_model("discriminator")]
    if channels_last:
        nets = [n.to(memory_format=torch.channels_last) for n in nets]
    step = NeurMAPStep(*nets, autocast=autocast)
    batch = [torch.rand(2, 3, size, size) for _ in range(4)]
    if channels_last:
        batch = [b.contiguous(memory_format=torch.channels_last) for b in batch]
    return step, batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--iters", type=int, default=3)
    args = ap.parse_args()
    s = args.size
    rows, extra = [], {}
    flops = iteration_flops(s)
    peak = {cl: conv_throughput(cl) for cl in (False, True)}
    best_peak = max(peak.values())
    floor = flops / best_peak
    variants = {"fp32 contiguous": (False, contextlib.nullcontext),
                "fp32 channels-last": (True, contextlib.nullcontext)}
    bf16 = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported") \
        and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if bf16:
        variants["bf16 autocast channels-last"] = (True, lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    times = {}
    for name, (cl, ac) in variants.items():
        step, batch = make_step(cl, ac, s)
        times[name] = time_it(lambda: step(*batch), repeat=args.iters, warmup=1)
        rows.append({"variant": name, "seconds_per_iter": times[name], "x_floor": times[name] / floor})
        print(rows[-1])
    best = min((t, n) for n, t in times.items() if "bf16" not in n)
    # micro-optimisations, each as a measured ratio
    x = torch.rand(4, 3, s, s)
    m = torch.rand(4, 2, s, s) * 0.5
    r_loop, r_batch = time_it(lambda: reblur_loop(x, m)), time_it(lambda: reblur(x, m))
    M = build_model("motion").to(memory_format=torch.channels_last)
    imgs = [torch.rand(4, 3, s, s).contiguous(memory_format=torch.channels_last) for _ in range(3)]
    with torch.no_grad():
        t_sep = time_it(lambda: [M(i) for i in imgs])
        t_cat = time_it(lambda: M(torch.cat(imgs)))
    ratios = {"reblur_batched_vs_loop_of_15": r_loop / r_batch,
              "motion_net_one_batched_call_vs_three": t_sep / t_cat,
              "channels_last_vs_contiguous": times["fp32 contiguous"] / times["fp32 channels-last"]}
    if bf16:
        ratios["bf16_vs_best_fp32"] = best[0] / times["bf16 autocast channels-last"]
    for k, v in ratios.items():
        rows.append({"variant": k, "ratio": v})
    extra = {"seconds_per_iter": best[0], "best_fp32_variant": best[1], "floor_seconds": floor,
             "iteration_gflops": flops / 1e9, "conv_gflops_per_s": {str(k): v / 1e9 for k, v in peak.items()},
             "ratios": ratios, "official_reference_seconds_per_iter": 15.0, "size": s,
             "bf16_supported": bool(bf16)}
    if bf16:
        extra["seconds_per_iter_bf16"] = times["bf16 autocast channels-last"]
    report("train_step", rows, extra)
    print(f"best fp32: {best[0]:.2f} s/iter = {best[0] / floor:.2f}x the fp32 floor ({floor:.2f} s)")


if __name__ == "__main__":
    main()
