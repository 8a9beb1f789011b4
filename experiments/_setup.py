"""Imported first by every experiment: puts ``bench/`` on ``sys.path`` (the experiments reuse the benchmarks'
helpers — ``common.report``, ``adapt_bench``'s stream, ``neurmap_proof``'s data and scoring) and names the folder
their result JSONs go to (``experiments/results/``, apart from the benchmarks' ``bench/results/``)."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
if str(ROOT / "bench") not in sys.path:
    sys.path.insert(0, str(ROOT / "bench"))


def shipped_start(threads: int):
    """The common start of the adaptation experiments: ``threads`` torch threads, seed 0, the shipped deblur net
    (eval) and motion net, the start time and the load before. Returns (G0, M0, t0, uptime)."""
    import time

    import torch
    from common import uptime
    from neurmap.core import load_motion, load_weights

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    t0, load_before = time.perf_counter(), uptime()
    G0, _ = load_weights("default")
    return G0.eval(), load_motion("default").eval(), t0, load_before
