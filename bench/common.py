"""Shared by the bench scripts: timing by median of repeats, machine facts, a table and a JSON file."""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

RESULTS = Path(__file__).resolve().parent / "results"


def time_it(fn: Callable[[], object], repeat: int = 3, warmup: int = 1, budget_s: float | None = None) -> float:
    """Median wall seconds of ``fn`` over ``repeat`` runs after ``warmup`` runs (fewer if over budget)."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if budget_s is not None and time.perf_counter() - start > budget_s:
            break
    return statistics.median(times)


def uptime() -> str:
    """``uptime``'s line (load averages): benches record it before and after, since this CPU is shared."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except Exception:
        return f"load average {os.getloadavg()}"


def key_values(items: list[str], flag: str = "--set") -> dict[str, str]:
    """``KEY=VALUE`` command-line items as a dict (AdaptConfig.from_dict types the values); exits in one line
    on an item without ``=``."""
    out = dict(item.split("=", 1) for item in items if "=" in item)
    if len(out) != len(items):
        raise SystemExit(f"{flag} takes KEY=VALUE (e.g. lr=2e-4), got {items}")
    return out


def machine() -> dict:
    import torch
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "load_avg_1m": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d %H:%M")}


def report(name: str, rows: list[dict], extra: dict | None = None, results: Path | None = None) -> Path:
    """Print ``rows`` as a table and write them with machine facts to ``results``/NAME.json (default
    bench/results; the experiments pass experiments/results)."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=name)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    for c in cols:
        t.add_column(c)
    for r in rows:
        t.add_row(*[f"{r[c]:.4g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols])
    Console().print(t)
    results = RESULTS if results is None else Path(results)
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), "rows": rows, **(extra or {})}, indent=2))
    print(f"wrote {path}")
    return path
