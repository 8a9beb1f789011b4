"""Second look at the INT8 recipes on crops the recipe was not chosen on: ``python bench/export_validate.py``.

bench/export_bench.py picks the shipped recipe on 6 held-out crops (seed 11); this scores the same quantized
graphs (same calibration histograms and float-node choices, read from its cache — run it first) on other crops of
the held-out frames [64, 120) (seed 23), so the choice is not an artefact of one small evaluation set.
Writes bench/results/export_validation.json.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from common import report
from export_bench import GOPRO, REAL_BLURRY, WEIGHTS, run_all

RECIPES = (("mse", 12), ("percentile", 12), ("percentile", 6), ("mse", 40))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seed", type=int, default=23)
    ap.add_argument("--crops", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(2)
    from neurmap.calibration.frames import select_frames
    from neurmap.calibration.parity import compare
    from neurmap.core import load_weights
    from neurmap.export.onnx_export import export_onnx, onnx_session
    from neurmap.export.ort_quant import QuantConfig, prepare, quantize_int8, ranges_from_histograms

    model, meta = load_weights(WEIGHTS)
    cal, _ = select_frames([GOPRO, REAL_BLURRY], 24, 256, 256, seed=0, frame_range=(0, 60))
    ev, _ = select_frames([GOPRO], args.crops, 360, 640, seed=args.seed, frame_range=(64, 120), synthesize=(7, 13),
                          crops_per_frame=1, pool_factor=2)
    key = hashlib.sha256(cal.blurry.tobytes() + meta["weights_hash"].encode()).hexdigest()[:16]
    cache = Path(os.environ.get("NEURMAP_CACHE", Path.home() / ".cache" / "neurmap")) / "bench"
    if not (cache / f"hist-{key}.pkl").exists():
        sys.exit("run bench/export_bench.py first (its histograms and float-node choices are reused)")
    hists, _ = pickle.loads((cache / f"hist-{key}.pkl").read_bytes())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dyn = export_onnx(model, tmp / "dyn.onnx", 256, 256, dynamic=True)
        pre = prepare(dyn, tmp / "pre.onnx")
        f32 = onnx_session(pre, threads=2)
        ref = run_all(ev.blurry, lambda x: f32.run(None, {"blurry": x})[0])
        for method, budget in RECIPES:
            exclude = json.loads((cache / f"excl-{key}-{method}-{budget}.json").read_text())
            q = quantize_int8(dyn, tmp / "q.onnx", None, QuantConfig(method=method, exclude=exclude),
                              ranges=ranges_from_histograms(hists, method))
            s = onnx_session(q.path, threads=2)
            p = compare(run_all(ev.blurry, lambda x: s.run(None, {"blurry": x})[0]), ref, ev.sharp, ev.blurry)
            rows.append({"ranges": method if method == "mse" else "percentile 99.999", "float_convs_budget": budget,
                         "psnr_vs_float": round(p.psnr_vs_float, 2), "psnr_gt": round(p.psnr_gt, 3),
                         "loss_db": round(p.loss_db, 3), "max_abs": round(p.max_abs, 4), "p99_abs": round(p.p99_abs, 4)})
            print(rows[-1], flush=True)
    report("export_validation", rows, {"eval": {"seed": args.seed, "crops": len(ev), "size": "360x640",
                                                "windows": sorted({(i["first"], i["frames"]) for i in ev.info}),
                                                "psnr_float": round(float(np.mean(p.psnr_gt_float)), 3)}})


if __name__ == "__main__":
    main()
