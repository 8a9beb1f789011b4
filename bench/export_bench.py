"""Export acceptance bench (issue 4): ORT INT8 vs PyTorch eager FP32 on the official DMPHN 1-2-4 weights.

Runs with no arguments; prints a table and writes ``bench/results/export.json``. On 2 loaded shared cores the
first run takes ~20 min (histograms, sensitivity search, 720p eager timing at ~35-60 s a frame); histograms and
the chosen float nodes are cached, so reruns take ~10 min; ``--skip-ablation --no-720p`` takes ~4 min.

Protocol
- Weights: official DMPHN 1-2-4 (``../shared/data/pretrained/dmphn_1_2_4``).
- Calibration: 24 crops of 256x256, stratified by blur strength, from GoPro-protocol blurry frames synthesised from
  frames [0, 60) of ``gopro240/GOPR0477_11_00`` (mean of 7-13 consecutive frames in linear light) plus the 10 real
  blurry GoPro frames of ``gopro_blurry_unpaired``.
- Evaluation: 6 crops of 360x640 (a quarter frame each) of GoPro-protocol pairs from frames [64, 120) only — disjoint
  from every calibration frame — against the sharp middle frame (PSNR on 8-bit-quantised images, per image mean).
- Float reference: ONNX Runtime FP32 outputs (checked equal to PyTorch eager to ~1e-5 on the first crop).
- Ablation of INT8 recipes (all static QDQ, U8 activations / S8 per-channel weights): naive MinMax on 8 frames,
  MinMax / Percentile (99.99, 99.999) / Entropy / MSE ranges on 24 frames, then the shipped recipe: 99.999th-percentile
  ranges + the ``--budget`` most sensitive convs kept in float; ``--frontier`` adds other budgets (MSE and
  percentile ranges) to show the speed/quality trade-off.
- Speed: 1 x 3 x H x W at 640x360 and 1280x720, PyTorch eager FP32 vs ORT FP32 vs ORT INT8 (naive and final
  recipe), runs interleaved, best of ``--runs``; the machine's load average is recorded with every timing
  (2 shared cores: compare the ratios within one run).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
WEIGHTS = SHARED / "pretrained" / "dmphn_1_2_4"
GOPRO = SHARED / "gopro240" / "GOPR0477_11_00"
REAL_BLURRY = SHARED / "gopro_blurry_unpaired"
OUT = REPO / "bench" / "results" / "export.json"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.1f}] {msg}", file=sys.stderr, flush=True)


def run_all(x: np.ndarray, run) -> np.ndarray:
    return np.concatenate([run(x[i:i + 1]) for i in range(len(x))])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calib-frames", type=int, default=24)
    ap.add_argument("--eval-crops", type=int, default=6)
    ap.add_argument("--budget", type=int, default=12, help="convs kept in float by the sensitivity search")
    ap.add_argument("--frontier", default="", help="comma list of further float-conv budgets to score and time "
                    "(the speed/quality trade-off), e.g. 6,12,18")
    ap.add_argument("--runs", type=int, default=2, help="timed runs per row and resolution (best is kept)")
    ap.add_argument("--no-720p", action="store_true", help="time at 640x360 only")
    ap.add_argument("--skip-ablation", action="store_true", help="only naive and final recipes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-cache", action="store_true", help="recompute histograms and the sensitivity search "
                    "(cached in ~/.cache/neurmap/bench by calibration frames + weights)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    for p in (WEIGHTS, GOPRO, REAL_BLURRY):
        if not p.exists():
            sys.exit(f"missing shared data {p}")
    torch.set_num_threads(args.threads)
    from neurmap.calibration.frames import select_frames
    from neurmap.calibration.parity import compare
    from neurmap.core import load_weights
    from neurmap.export.onnx_export import export_onnx, onnx_session
    from neurmap.export.ort_quant import (QuantConfig, collect_histograms, prepare, quantize_int8,
                                          ranges_from_histograms)
    from neurmap.export.targets import auto_exclusions

    t_start = time.perf_counter()
    model, meta = load_weights(WEIGHTS)
    log("selecting calibration and evaluation frames")
    cal, _ = select_frames([GOPRO, REAL_BLURRY], args.calib_frames, 256, 256, seed=0, frame_range=(0, 60))
    ev, _ = select_frames([GOPRO], args.eval_crops, 360, 640, seed=11, frame_range=(64, 120), synthesize=(7, 13),
                          crops_per_frame=1, pool_factor=2)
    cal_windows = {(i["first"], i["frames"]) for i in cal.info if "gopro240" in i["source"]}
    ev_frames = sorted({(i["first"], i["frames"]) for i in ev.info})
    assert max(f + n for f, n in cal_windows) <= 60 and min(f for f, _ in ev_frames) >= 64
    result: dict = {"weights": str(WEIGHTS), "weights_hash": meta["weights_hash"], "threads": args.threads,
                    "calibration": {"crops": len(cal), "size": "256x256", "sources": [str(GOPRO) + " frames [0,60) synthesised",
                                                                              str(REAL_BLURRY)]},
                    "evaluation": {"crops": len(ev), "size": "360x640", "windows": ev_frames,
                                   "source": str(GOPRO) + " frames [64,120)"},
                    "cpu": _cpu(), "variants": [], "speed": []}
    with tempfile.TemporaryDirectory(prefix="export-bench-") as tmp:
        tmp = Path(tmp)
        dyn = export_onnx(model, tmp / "dyn.onnx", 256, 256, dynamic=True)
        pre = prepare(dyn, tmp / "pre.onnx")
        f32 = onnx_session(pre, threads=args.threads)
        log("float reference (ORT fp32) on the evaluation crops")
        ref = run_all(ev.blurry, lambda x: f32.run(None, {"blurry": x})[0])
        with torch.inference_mode():
            eager0 = model(torch.from_numpy(ev.blurry[:1])).numpy()
        result["evaluation"]["ort_fp32_vs_eager_max_abs"] = float(np.abs(eager0 - ref[:1]).max())
        base = compare(ref, ref, ev.sharp, ev.blurry)
        result["evaluation"].update({"psnr_blurry": round(base.psnr_blurry, 3), "psnr_float": round(base.psnr_gt_float, 3),
                                     "ssim_float": round(base.ssim_gt_float, 4)})
        log(f"blurry {base.psnr_blurry:.2f} dB, float {base.psnr_gt_float:.2f} dB vs ground truth")

        log("activation histograms (one pass; every range method reads them)")
        t = time.perf_counter()
        import hashlib
        import pickle
        key = hashlib.sha256(cal.blurry.tobytes() + meta["weights_hash"].encode()).hexdigest()[:16]
        cache = Path(os.environ.get("NEURMAP_CACHE", Path.home() / ".cache" / "neurmap")) / "bench" / f"hist-{key}.pkl"
        if cache.exists() and not args.no_cache:
            hists, hists8 = pickle.loads(cache.read_bytes())
            result["calibration"]["histograms_cached"] = True
        else:
            hists = collect_histograms(pre, cal.blurry)
            hists8 = collect_histograms(pre, cal.blurry[np.linspace(0, len(cal) - 1, 8).astype(int)])
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_bytes(pickle.dumps((hists, hists8)))
        result["calibration"]["histogram_seconds"] = round(time.perf_counter() - t, 1)

        def variant(name, method, h, exclude=(), frames=len(cal), note="", percentile=99.999):
            t0 = time.perf_counter()
            ranges = ranges_from_histograms(h, method, percentile)
            q = quantize_int8(dyn, tmp / f"{name}.onnx", None, QuantConfig(method=method, exclude=list(exclude)),
                              ranges=ranges)
            s = onnx_session(q.path, threads=args.threads)
            out = run_all(ev.blurry, lambda x: s.run(None, {"blurry": x})[0])
            p = compare(out, ref, ev.sharp, ev.blurry)
            row = {"name": name, "method": method, "calib_frames": frames, "excluded_nodes": len(exclude),
                   "excluded_convs": [e for e in exclude if e.endswith("Conv") or e.endswith("ConvTranspose")],
                   "excluded": list(exclude),
                   "psnr_vs_float": round(p.psnr_vs_float, 2), "psnr_gt": round(p.psnr_gt, 3),
                   "loss_db": round(p.loss_db, 3), "ssim_gt": round(p.ssim_gt, 4), "max_abs": round(p.max_abs, 4),
                   "p99_abs": round(p.p99_abs, 4), "seconds": round(time.perf_counter() - t0, 1), "note": note,
                   "path": q.path}
            result["variants"].append({k: v for k, v in row.items() if k != "path"})
            log(f"{name}: {p.summary()}")
            return row

        naive = variant("naive_minmax_8", "minmax", hists8, frames=8, note="the anchors' naive recipe")
        if not args.skip_ablation:
            variant("minmax_24", "minmax", hists)
            variant("percentile_24", "percentile", hists, note="99.99th percentile, two-sided", percentile=99.99)
            variant("percentile99.999_24", "percentile", hists, note="99.999th percentile, two-sided")
            variant("entropy_24", "entropy", hists, note="ORT KL threshold search on a 512-bin histogram")
        mse = variant("mse_24", "mse", hists)
        log("sensitivity search for nodes to keep in float")
        t = time.perf_counter()

        def exclusions(method: str, budget: int) -> list[str]:
            ex_cache = cache.with_name(f"excl-{key}-{method}-{budget}.json")
            if ex_cache.exists() and not args.no_cache:
                result["sensitivity_cached"] = True
                return json.loads(ex_cache.read_text())
            ranges = ranges_from_histograms(hists, method)
            excl, _ = auto_exclusions(dyn, pre, ranges, cal.blurry, method, budget, tmp, log)
            ex_cache.write_text(json.dumps(excl))
            return excl

        # the shipped recipe (neurmap export's defaults): 99.999th-percentile ranges + sensitive convs in float
        final = variant(f"percentile99.999_float{args.budget}", "percentile", hists,
                        exclude=exclusions("percentile", args.budget),
                        note=f"sensitive nodes kept in float (conv budget {args.budget}, 3 rounds)")
        result["sensitivity_seconds"] = round(time.perf_counter() - t, 1)
        result["final"] = {k: v for k, v in final.items() if k != "path"}
        budgets = sorted({int(b) for b in args.frontier.split(",") if b})
        frontier = [variant(f"mse_24_float{b}", "mse", hists, exclude=exclusions("mse", b),
                            note=f"frontier, MSE ranges: conv budget {b}") for b in budgets]
        frontier += [variant(f"percentile99.999_float{b}", "percentile", hists, exclude=exclusions("percentile", b),
                             note=f"frontier, 99.999th-percentile ranges: conv budget {b}")
                     for b in budgets if b != args.budget]

        sizes = [(360, 640)] + ([] if args.no_720p else [(720, 1280)])
        rows = [("pytorch eager fp32", None), ("pytorch eager fp32 contiguous", "contiguous"), ("ort fp32", pre),
                ("ort int8 naive", naive["path"]), ("ort int8 mse", mse["path"]), ("ort int8 final", final["path"])]
        rows += [(f"ort int8 {v['name']}", v["path"]) for v in frontier]
        import copy
        contiguous = copy.deepcopy(model).to(memory_format=torch.contiguous_format)  # how the official code runs
        for h, w in sizes:
            x = np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32)
            runners = {}
            for name, path in rows:
                if path is None:      # our loaded models are channels-last (bench/core_bench.py: 1.5x faster)
                    runners[name] = lambda a: model(torch.from_numpy(a))
                elif path == "contiguous":
                    runners[name] = lambda a: contiguous(torch.from_numpy(a))
                else:
                    s = onnx_session(path, threads=args.threads)
                    runners[name] = (lambda s: lambda a: s.run(None, {"blurry": a}))(s)
            times: dict[str, list] = {n: [] for n in runners}
            loads = []
            with torch.inference_mode():
                for n, r in runners.items():              # warm-up
                    r(x)
                for _ in range(args.runs):
                    for n, r in runners.items():
                        t = time.perf_counter()
                        r(x)
                        times[n].append(time.perf_counter() - t)
                        loads.append(os.getloadavg()[0])
            best = {n: min(v) for n, v in times.items()}
            eager = best["pytorch eager fp32"]
            for n in runners:
                result["speed"].append({"size": f"{w}x{h}", "name": n, "best_ms": round(best[n] * 1e3, 1),
                                        "all_ms": [round(v * 1e3, 1) for v in times[n]],
                                        "speedup_vs_eager": round(eager / best[n], 2)})
            result.setdefault("load_during_timing", {})[f"{w}x{h}"] = [round(min(loads), 2), round(max(loads), 2)]
            log(f"{w}x{h}: " + ", ".join(f"{n} {best[n]*1e3:.0f} ms ({eager/best[n]:.2f}x)" for n in runners))
    result["total_seconds"] = round(time.perf_counter() - t_start, 1)
    _print(result)
    from neurmap.core.checkpoint import atomic_write
    atomic_write(args.out, lambda p: Path(p).write_text(json.dumps(result, indent=2, default=str)))
    print(f"wrote {args.out}")


def _cpu() -> dict:
    info = {"cores": os.cpu_count()}
    try:
        txt = Path("/proc/cpuinfo").read_text()
        info["model"] = next(l.split(":", 1)[1].strip() for l in txt.splitlines() if l.startswith("model name"))
        flags = next(l for l in txt.splitlines() if l.startswith("flags"))
        info["vnni"] = "avx512_vnni" in flags or "avx_vnni" in flags
    except Exception:
        pass
    import onnxruntime
    info["onnxruntime"] = onnxruntime.__version__
    info["torch"] = torch.__version__
    return info


def _print(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    e = r["evaluation"]
    c = Console()
    t = Table(title=f"INT8 recipes on {e['crops']} held-out {e['size']} GoPro-protocol crops "
                    f"(blurry {e['psnr_blurry']:.2f} dB, float {e['psnr_float']:.2f} dB vs GT)")
    for col in ("recipe", "frames", "float nodes", "PSNR vs float", "PSNR vs GT", "loss dB", "SSIM", "max |d|"):
        t.add_column(col)
    for v in r["variants"]:
        t.add_row(v["name"], str(v["calib_frames"]), str(v["excluded_nodes"]), f"{v['psnr_vs_float']:.2f}",
                  f"{v['psnr_gt']:.3f}", f"{v['loss_db']:+.3f}", f"{v['ssim_gt']:.4f}", f"{v['max_abs']:.3f}")
    c.print(t)
    t = Table(title="Speed, 1 frame, best of runs (2 shared CPU cores; load average in the JSON)")
    for col in ("size", "backend", "ms", "x eager"):
        t.add_column(col)
    for s in r["speed"]:
        t.add_row(s["size"], s["name"], f"{s['best_ms']:.0f}", f"{s['speedup_vs_eager']:.2f}")
    c.print(t)


if __name__ == "__main__":
    main()
