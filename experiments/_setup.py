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
