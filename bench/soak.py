"""Soak: a long stream through `neurmap run` with memory and latency watched over time.

A small clip (160x90, MJPG) is looped for ``--frames`` frames through the real command (source thread,
pre/post-processing, ONNX Runtime, video sink, metrics), paced as a live camera at ``--rate`` fps in realtime
mode. The child's RSS is sampled every second from /proc; its status line (printed every 10 s) gives the
rolling p50/p99 capture-to-sink latency. Pass: RSS growth after warm-up < 50 MB and the latency of the
last window no worse than 3x the first (nothing accumulates in the queues).

The default engine is a 3x3 depthwise-conv ONNX graph (the pipeline is what leaks or queues, not the
model; a deblur net at this size would only slow the soak). ``--engine`` runs any artifact instead.

    nice -n 10 python bench/soak.py                  # 10,000 frames at 100 fps: about 2 minutes
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def make_clip(path: Path, n: int = 120, w: int = 160, h: int = 90) -> Path:
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (w, h))
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    for i in range(n):
        vw.write(np.roll(base, i, axis=1))
    vw.release()
    return path


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


STATUS = re.compile(r"(\d+) frames \| ([\d.]+) fps .*?p50/p99 (\d+)/(\d+) ms \| dropped (\d+)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=100.0, help="capture pace, frames/s (realtime mode)")
    ap.add_argument("--engine", default=None, help="artifact to run (default: a tiny depthwise-conv ONNX)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "soak.json")
    args = ap.parse_args()

    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="neurmap-soak-") as tmp:
        tmp = Path(tmp)
        clip = make_clip(tmp / "clip.avi")
        if args.engine:
            engine = args.engine
        else:
            from test_runtime import tiny_onnx
            engine = str(tiny_onnx(tmp / "conv3x3.onnx"))
        summary_path = tmp / "summary.json"
        cmd = [sys.executable, "-m", "neurmap", "run", str(clip), "-e", engine, "-o", str(tmp / "out.avi"),
               "--loop", "--max-frames", str(args.frames), "--realtime", "--input-rate", str(args.rate),
               "--threads", str(args.threads), "--json", str(summary_path)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=str(REPO), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        windows: list[dict] = []
        started: list[float] = []      # when the stream began (the "running ..." line)

        def read_status() -> None:
            for line in proc.stderr:
                m = STATUS.search(line)
                if m:
                    windows.append({"t_s": round(time.monotonic() - t0, 1), "frames": int(m.group(1)),
                                    "fps": float(m.group(2)), "p50_ms": int(m.group(3)), "p99_ms": int(m.group(4)),
                                    "dropped": int(m.group(5))})
                elif line.strip():
                    if line.startswith("running") and not started:
                        started.append(time.monotonic() - t0)
                    sys.stderr.write(line)

        reader = threading.Thread(target=read_status, daemon=True)
        reader.start()
        rss: list[tuple[float, float]] = []
        while proc.poll() is None:
            v = rss_mb(proc.pid)
            if v is not None:
                rss.append((round(time.monotonic() - t0, 1), round(v, 1)))
            time.sleep(1.0)
        reader.join(5)
        if proc.returncode != 0 or not summary_path.exists():
            print(f"neurmap run failed (exit {proc.returncode})", file=sys.stderr)
            return 1
        summary = json.loads(summary_path.read_text())
    load_end = os.getloadavg()

    # warm-up (imports, session, the first frames and buffers): growth is measured from 5 s into the stream
    t_base = (started[0] if started else 0.0) + 5.0
    base = next((v for t, v in rss if t >= t_base), rss[-1][1] if rss else 0.0)
    peak, last = max(v for _, v in rss), rss[-1][1]
    growth = max(peak, last) - base
    e2e = summary["latency_capture_to_sink"]
    first, final = (windows[0], windows[-1]) if windows else ({}, {})
    latency_ok = bool(windows) and final["p99_ms"] <= max(3 * first["p99_ms"], first["p99_ms"] + 20)
    result = {
        "frames_requested": args.frames, "frames_captured": summary.get("frames_captured"),
        "frames_written": summary["frames_written"], "frames_dropped": summary["frames_dropped"],
        "rate_fps": args.rate, "fps": summary["fps"], "wall_s": summary["wall_s"],
        "engine": summary["engine"], "source": summary["source"],
        "latency_capture_to_sink_ms": {k: e2e.get(k) for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms")},
        "rss_mb": {"after_warmup": base, "after_warmup_at_s": round(t_base, 1), "peak": peak, "end": last, "growth": round(growth, 1),
                   "samples": rss},
        "latency_windows": windows,
        "pass": {"rss_growth_lt_50mb": growth < 50, "latency_bounded": latency_ok},
        "loadavg": {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in load_end]},
        "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(cmd[1:]),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp_json = args.json.with_name(f".{args.json.name}.tmp")
    tmp_json.write_text(json.dumps(result, indent=2))
    os.replace(tmp_json, args.json)

    print(f"{'t (s)':>7} {'frames':>7} {'fps':>6} {'p50 ms':>7} {'p99 ms':>7} {'dropped':>8} {'RSS MB':>7}")
    for w in windows:
        r = min(rss, key=lambda s: abs(s[0] - w["t_s"]))[1] if rss else float("nan")
        print(f"{w['t_s']:7.1f} {w['frames']:7d} {w['fps']:6.1f} {w['p50_ms']:7d} {w['p99_ms']:7d} "
              f"{w['dropped']:8d} {r:7.1f}")
    print(f"{summary['frames_written']} of {args.frames} frames written in {summary['wall_s']:.0f} s "
          f"({summary['fps']:.1f} fps, dropped {summary['frames_dropped']}); latency p50/p95/p99/max "
          f"{e2e.get('p50_ms')}/{e2e.get('p95_ms')}/{e2e.get('p99_ms')}/{e2e.get('max_ms')} ms; RSS "
          f"{base:.0f} MB after warm-up, peak {peak:.0f}, end {last:.0f}: growth {growth:.1f} MB "
          f"({'< 50 MB' if growth < 50 else 'OVER 50 MB'}); load average {load_start[0]:.2f} -> {load_end[0]:.2f}")
    print(f"wrote {args.json}")
    return 0 if growth < 50 and latency_ok else 2


if __name__ == "__main__":
    sys.exit(main())
