"""Forward (and forward+backward) time of every network and of the reblur module R on this CPU.

Runs with no arguments: `python bench/core_bench.py [--full]`. Variants measured in the same run, so their
ratios are comparable: eager fp32 (no_grad) vs inference_mode vs channels-last. `--full` adds 720p.
References (ANCHORS.md, official code, 2-core CPU): DMPHN 1-2-4-8 forward at 256² ≈ 0.8 s, MPRNet ≈ 9.5 s,
motion net 0.05 s.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from common import report, time_it
from neurmap.core import build_model, reblur

NETS = ["dmphn_1_2_4", "dmphn_1_2_4_8", "mprnet", "motion", "discriminator"]


def reblur_loop(x, m):
    """R written as the naive 15-call loop (one grid_sample per tap): the baseline for the batched R."""
    b, c, h, w = x.shape
    ys = torch.arange(h, dtype=x.dtype).view(1, h, 1)
    xs = torch.arange(w, dtype=x.dtype).view(1, 1, w)
    out = 0
    for k in range(-7, 8):
        t = k / 7
        gx = (xs + t * 20 * m[:, 1]) * 2 / (w - 1) - 1
        gy = (ys + t * 20 * m[:, 0]) * 2 / (h - 1) - 1
        out = out + F.grid_sample(x, torch.stack((gx, gy), -1), align_corners=True)
    return out / 15


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--full", action="store_true", help="also 720p (slow: minutes)")
    ap.add_argument("--nets", nargs="*", default=NETS)
    args = ap.parse_args()
    sizes = [(256, 256)] + ([(720, 1280)] if args.full else [])
    rows = []
    for h, w in sizes:
        for name in args.nets:
            if name == "mprnet" and h > 256:
                continue  # 10.7 TMAC: minutes per forward on 2 cores
            model = build_model(name).eval()
            x = torch.rand(1, 3, h, w)
            budget = 60 if name == "mprnet" else 20
            with torch.no_grad():
                t_eager = time_it(lambda: model(x), repeat=3, budget_s=budget)
            with torch.inference_mode():
                t_inf = time_it(lambda: model(x), repeat=3, budget_s=budget)
            cl = build_model(name).eval().to(memory_format=torch.channels_last)
            cl.load_state_dict(model.state_dict())
            xc = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                t_cl = time_it(lambda: cl(xc), repeat=3, budget_s=budget)
            row = {"net": name, "size": f"{h}x{w}", "fwd_no_grad_s": t_eager, "fwd_inference_mode_s": t_inf,
                   "fwd_channels_last_s": t_cl, "channels_last_speedup": t_inf / t_cl}
            if name != "discriminator":
                # fusion: TorchScript freeze folds and fuses conv+add/relu through oneDNN
                with torch.no_grad():
                    # sizes here are multiples of every net's pad_multiple, so the bare net sees xc as is
                    frozen = torch.jit.freeze(torch.jit.trace(cl.net, (xc,), check_trace=False))
                    t_fz = time_it(lambda: frozen(xc), repeat=3, warmup=2, budget_s=budget)
                row["fwd_channels_last_frozen_s"] = t_fz
                row["freeze_speedup_over_channels_last"] = t_cl / t_fz
            if h <= 256 and name != "mprnet":
                model.train()
                xg = torch.rand(1, 3, h, w)

                def fb():
                    out = model(xg)
                    (out[0] if isinstance(out, list) else out).float().mean().backward()
                row["fwd_bwd_s"] = time_it(fb, repeat=3, budget_s=budget)
            rows.append(row)
            print(row)
        x = torch.rand(1, 3, h, w)
        m = torch.rand(1, 2, h, w) * 0.5
        t_b = time_it(lambda: reblur(x, m), repeat=5)
        t_l = time_it(lambda: reblur_loop(x, m), repeat=5)
        assert torch.allclose(reblur(x, m), reblur_loop(x, m), atol=1e-5)
        rows.append({"net": "reblur R (batched)", "size": f"{h}x{w}", "fwd_no_grad_s": t_b,
                     "loop_of_15_s": t_l, "batched_speedup": t_l / t_b})
    report("core_bench", rows)


if __name__ == "__main__":
    main()
