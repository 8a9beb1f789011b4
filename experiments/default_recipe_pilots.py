#!/usr/bin/env python
"""Is the shipped default short of data, of iterations or of capacity? Short warm restarts of it, one change each.

Each pilot is configs/default_stage2.yaml started from the shipped weights (``init_weights: default``) for
``--iterations`` (1,200: ~3 min on 2 cores) at lr 2e-4 (cosine, 50 warm-up), with one change:

* ``control`` — none (what more iterations of the shipped recipe buy);
* ``clean`` — photos without the camera degradations (noise, JPEG, clipped highlights, rescale): does the net
  spend capacity on them that the clean sources miss?
* ``crop256`` — 2 crops of 256² instead of 8 of 128² (the same pixels): does context limit it?
* ``psharp`` — 30 % nearly sharp photo items instead of 10 %: does it stop altering nearly sharp frames?

Scored on bench/default_quality.py's held-out sources (photos split by name, gopro240 frames 80-119) beside the
shipped weights; a pilot that exists in ``--out`` is scored without training again.

    python experiments/default_recipe_pilots.py [--iterations 1200] [--only control,clean]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import _setup  # noqa: F401  (bench/ on sys.path)
import numpy as np
import torch
import yaml
from common import report, uptime
from default_quality import heldout_sources, psnrs

from neurmap.core import load_weights
from neurmap.core.train import TrainConfig, run_training

ROOT = Path(__file__).resolve().parents[1]


def pilot_config(name: str, iterations: int, out: Path) -> TrainConfig:
    c = yaml.safe_load((ROOT / "configs" / "default_stage2.yaml").read_text())
    c.update(init_weights="default", init_motion="default", iterations=iterations, lr_G=2e-4, lr_warmup=50,
             checkpoint_every=max(iterations // 2, 1), log_every=100, output_dir=str(out / name))
    photos = c["data"]["paired"][0]
    photos["path"] = str((ROOT / photos["path"]).resolve())
    c["data"]["paired"][1]["path"] = str((ROOT / c["data"]["paired"][1]["path"]).resolve())
    if name == "clean":
        photos["degrade"] = False
    elif name == "crop256":
        c.update(crop=256, batch_paired=2)
    elif name == "psharp":
        photos["p_sharp"] = 0.3
    elif name != "control":
        raise SystemExit(f"unknown pilot {name!r}")
    return TrainConfig.from_dict(c)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=1200)
    ap.add_argument("--only", default="control,clean,crop256,psharp")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "pilots")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0, load_before = time.perf_counter(), uptime()
    models = {"shipped": load_weights("default")[0].eval()}
    for name in args.only.split(","):
        final = args.out / name / "final.safetensors"
        if not final.exists():
            run_training(pilot_config(name, args.iterations, args.out), progress=False)
        models[name] = load_weights(str(final))[0].eval()
    rows = []
    for src, (b, s) in heldout_sources().items():
        base = psnrs(None, b, s)
        row = {"source": src, "n": int(b.shape[0]), "blurry": float(base.mean())}
        for name, model in models.items():
            d = psnrs(model, b, s) - base
            row[f"{name}_gain"], row[f"{name}_worst"] = float(d.mean()), float(np.min(d))
        rows.append(row)
    report("default_recipe_pilots", rows, {"iterations": args.iterations, "uptime_before": load_before,
                                           "uptime_after": uptime(), "seconds": round(time.perf_counter() - t0, 1),
                                           "psnr": "gain over the blurry input, dB (mean; worst image)"},
           results=_setup.RESULTS)


if __name__ == "__main__":
    main()
