#!/usr/bin/env python
"""Seconds per batch of the default recipe's paired data: CPU-worker synthesis vs the device path.

* ``cpu``: ``BatchSampler.batch`` with ``synthesis_device: cpu`` — what one worker process spends on a batch;
* ``device``: the same batches with ``synthesis_device: cuda`` split into the worker's part (cut windows, draw
  parameters, pack) and the main process's part (:func:`device_synthesis.render` on ``--device``), the latter
  also without JPEG (the CPU codec's share of it).

Caches are filled first (a long run has every photo and frame decoded early). On a CPU ``--device cpu`` times
the device path's torch code on the CPU: a statement about the workers' share, not about GPU speed.

    python bench/synthesis_speed.py [--device cpu|cuda] [--batch 8] [--n 16] [--config configs/default.yaml]
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from common import report, uptime
from neurmap.core.data import device_synthesis
from neurmap.core.train import BatchSampler, load_config


def seconds(fn, its, sync) -> tuple[float, float]:
    """(wall, this process's CPU) seconds per call: on a shared CPU the CPU time is the work, the wall time the
    work plus waiting for a core."""
    t, c = time.perf_counter(), time.process_time()
    for it in its:
        fn(it)
    sync()
    return (time.perf_counter() - t) / len(its), (time.process_time() - c) / len(its)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    over = [f"batch_paired={args.batch}"]
    cpu = BatchSampler(load_config(args.config, over + ["synthesis_device=cpu"]))
    gpu = BatchSampler(load_config(args.config, over + ["synthesis_device=cuda"]), device=dev)
    warm, its = range(args.n), range(args.n, 2 * args.n)
    before = uptime()
    for it in warm:               # fill the photo / frame caches of both samplers, and the device's kernels
        cpu.batch(it)
        gpu.to_device(gpu.batch(it), dev)
    t_cpu = seconds(cpu.batch, its, sync)
    packed = {it: gpu.batch(it) for it in its}
    t_worker = seconds(gpu.batch, its, sync)
    t_render = seconds(lambda it: gpu.to_device(packed[it], dev), its, sync)
    for b in packed.values():     # the same batches without JPEG
        for g in b[0]["groups"]:
            if "jpeg" in g:
                g["jpeg"] = torch.zeros_like(g["jpeg"])
    t_nojpeg = seconds(lambda it: device_synthesis.render(packed[it][0], dev), its, sync)
    row = lambda path, part, t: {"path": path, "part": part, "wall_s_per_batch": t[0], "cpu_s_per_batch": t[1],
                                 "cpu_vs_cpu_worker": t[1] / t_cpu[1]}
    dpath = f"device ({dev.type})"
    rows = [row("cpu workers", "whole pair (worker)", t_cpu),
            row(dpath, "windows + parameters (worker)", t_worker),
            row(dpath, "render (main process)", t_render),
            row(dpath, "render without JPEG", t_nojpeg)]
    report(f"synthesis_speed_{dev.type}", rows, {"config": args.config, "batch": f"{args.batch} x 128²",
                                               "uptime_before": before, "uptime_after": uptime(),
                                               "threads": args.threads, "omp": os.environ.get("OMP_NUM_THREADS")})


if __name__ == "__main__":
    main()
