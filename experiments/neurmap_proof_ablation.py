"""Why does (b) NeurMAP lose to (a) paired-only in bench/neurmap_proof.py? One G term at a time.

Same start, data, seed, iterations and held-out scoring as the proof; each row changes one thing in (b):
no reblur term (λ_G_reblur = 0), no adversarial term (λ_G_global = 0), neither (content + sharp prior only),
and SPEC's real-blur config (λ_G_reblur 10, λ_G_Itv 1, λ_M_tv 0.02, lr_G 1e-5). Writes
experiments/results/neurmap_proof_ablation.json.

    python experiments/neurmap_proof_ablation.py [--iterations 40]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from _setup import RESULTS  # noqa: I001  (first: puts bench/ on sys.path)
from common import report
from neurmap_proof import config, held_out, motion_reading, score
from neurmap.core.step import LossWeights
from neurmap.core.train import run_training

VARIANTS = {
    "(b) SPEC defaults": {},
    "(b) without the reblur term (G_reblur 0)": {"loss_weights": {"G_reblur": 0.0}},
    "(b) without the adversarial term (G_global 0)": {"loss_weights": {"G_global": 0.0}},
    "(b) without both (content + sharp prior)": {"loss_weights": {"G_reblur": 0.0, "G_global": 0.0}},
    "(b) real-blur config (SPEC)": {"loss_weights": {k: v for k, v in LossWeights.real_blur().as_dict().items()
                                                     if v != getattr(LossWeights(), k)}, "lr_G": 1e-5},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--out", default="runs/proof_ablation")
    ap.add_argument("--only", default="", help="comma list of variant numbers (1-based) to run")
    args = ap.parse_args()
    kernel, car = held_out()
    pick = {int(i) for i in args.only.split(",") if i}
    rows = []
    for i, (name, change) in enumerate(VARIANTS.items(), 1):
        if pick and i not in pick:
            continue
        out = Path(args.out) / f"v{i}"
        cfg = config(out, False, args)
        for k, v in change.items():
            setattr(cfg, k, v)
        t = time.perf_counter()
        run_training(cfg, progress=False)
        rows.append({"variant": name, **score(out / "final.safetensors", kernel, car),
                     **motion_reading(out / "final.safetensors", kernel), "train_s": round(time.perf_counter() - t)})
        print(rows[-1], flush=True)
    report("neurmap_proof_ablation", rows, {"settings": vars(args)}, results=RESULTS)


if __name__ == "__main__":
    main()
