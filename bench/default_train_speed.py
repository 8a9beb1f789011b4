#!/usr/bin/env python
"""Training speed of the default recipe (configs/default.yaml) on this CPU, and what each optimisation buys.

Measured in one run, one after another (never beside another training):

* data: seconds per batch of the recipe's sources, frames/photos decoded each draw vs cached;
* step: seconds per content-only iteration (batch 8 of 128²) for fp32 contiguous, fp32 channels-last,
  bf16 autocast channels-last, and bf16 + ``torch.compile``, for each compact block type;
* end to end: iterations/s of ``Trainer`` with synthesis in the loop (workers 0) and in a worker process
  (workers 1) — the data pipeline overlapped with the step.

    python bench/default_train_speed.py [--iters 12]
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import time

import torch

from common import report
from neurmap.core.step import LossWeights, NeurMAPStep
from neurmap.core.train import BatchSampler, Trainer, build_nets, load_config

CONFIG = "configs/default.yaml"


def data_seconds(cache: bool, n: int) -> float:
    cfg = load_config(CONFIG, [])
    for src in cfg.data["paired"]:
        src["cache"] = cache
    s = BatchSampler(cfg)
    for i in range(n):        # fill the caches (a long run sees every frame/photo early)
        s.batch(i)
    t = time.perf_counter()
    for i in range(n, 2 * n):
        s.batch(i)
    return (time.perf_counter() - t) / n


def step_seconds(backbone: str, precision: str, channels_last: bool, compile_: bool, batches, n: int) -> float:
    cfg = load_config(CONFIG, [f"backbone={backbone}"])
    G, M, D = build_nets(cfg)
    if channels_last:
        G = G.to(memory_format=torch.channels_last)
    if compile_:
        G.net = torch.compile(G.net)
    ac = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext
    step = NeurMAPStep(G, M, D, weights=LossWeights.from_dict(cfg.loss_weights), lr_G=cfg.lr_G, grad_clip=None,
                       autocast=ac)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    data = [(b.contiguous(memory_format=fmt), s.contiguous(memory_format=fmt)) for b, s in batches]
    cyc = itertools.cycle(data)
    for _ in range(3 if not compile_ else 6):      # warm-up (compile traces here)
        step.content_only(*next(cyc))
    t = time.perf_counter()
    for _ in range(n):
        step.content_only(*next(cyc))
    return (time.perf_counter() - t) / n


def trainer_its(workers: int, n: int, out: str) -> float:
    cfg = load_config(CONFIG, [f"workers={workers}", f"iterations={n + 5}", f"output_dir={out}",
                               "checkpoint_every=100000", "ema_decay=0.999"])
    tr = Trainer(cfg, log=lambda *_: None)
    it = tr.iterations()
    for _ in range(5):
        next(it)
    t = time.perf_counter()
    for _ in range(n):
        next(it)
    dt = time.perf_counter() - t
    list(it)
    return n / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iters", type=int, default=12)
    ap.add_argument("--skip-compile", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    load_before = os.getloadavg()
    rows = []
    uncached = data_seconds(False, 4)
    cached = data_seconds(True, 24)
    rows.append({"part": "data", "variant": "decode every draw", "s_per_iter": uncached})
    rows.append({"part": "data", "variant": "cached frames/photos", "s_per_iter": cached,
                 "speedup": uncached / cached})
    sampler = BatchSampler(load_config(CONFIG, []))
    batches = [sampler.batch(i) for i in range(6)]
    variants = [("fp32", False, False), ("fp32", True, False), ("bf16", True, False)]
    if not args.skip_compile:
        variants.append(("bf16", True, True))
    for backbone in ("compact", "compact_rep", "compact_gated"):
        base = None
        for prec, cl, comp in variants:
            try:
                sec = step_seconds(backbone, prec, cl, comp, batches, args.iters)
            except Exception as e:   # torch.compile needs a C++ compiler; report instead of dying
                rows.append({"part": f"step {backbone}", "variant": f"{prec} compile", "error": str(e)[:80]})
                continue
            base = base or sec
            rows.append({"part": f"step {backbone}", "variant": f"{prec}{' channels-last' if cl else ''}"
                         f"{' compile' if comp else ''}", "s_per_iter": sec, "speedup": base / sec})
    for w in (0, 1):
        its = trainer_its(w, args.iters * 2, f"runs/speed_w{w}")
        rows.append({"part": "trainer (default recipe)", "variant": f"workers={w}", "it_per_s": its,
                     "s_per_iter": 1.0 / its})
    report("default_train_speed", rows, {"load_before": load_before, "load_after": os.getloadavg(),
                                         "config": CONFIG, "batch": "8 x 128², content-only"})


if __name__ == "__main__":
    main()
