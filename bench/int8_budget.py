"""How many convs ONNX Runtime INT8 should keep in float, per net (issue 12): quality lost against speed gained.

``neurmap export``'s sensitivity pass keeps up to ``--exclude-budget`` convs in float. Its default, 12, was
measured on DMPHN 1-2-4 (12 of 90 convs: 0.09 dB loss). The compact nets have 20-30 convs, so 12 keeps most of
their MACs in float and gives away most of INT8's speed. This bench builds, per net and per budget, exactly the
engine ``neurmap demo`` would build (its clip, its calibration frames, ``build_ort_int8`` with ``exclude="auto"``)
and reports:

- ``loss_db``: PSNR against the sharp truth, float engine minus INT8 engine (acceptance of issue 12: <= 0.2 dB),
  on two sources no net trained on: the demo clip (camera shake over scikit-image's photos, 24 frames) and
  camera-shake clips of held-out photos (``photo_split(..., "heldout")``, 2 x 8 frames), both at 640x360;
- ``agree_db``: INT8 output against the float output (PSNR);
- ``fps``: median over ``--repeats`` rounds of ``--frames`` frames, engine order alternating every round, ORT's
  default threads (as the demo), and the float share of the conv MACs.

    python bench/int8_budget.py [--weights NAME=PATH ...] [--budgets 0,1,2,3,4,6,12]

Run it alone on the machine (the load average before and after is in the JSON).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report, uptime  # noqa: E402
from default_speed import CLIP_SIZE, float_mac_share, frames_per_second, gmacs, kept_float  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def heldout_clip(size=CLIP_SIZE, n_clips: int = 2, frames: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(blurry, sharp): camera-shake clips of held-out photos at the demo's resolution, the same every run."""
    from neurmap.core.data import camera_shake_clip, photo_split

    held = photo_split(DATA / "sharp_photos", "heldout")
    clips = [camera_shake_clip(str(held[(11 * k + 3) % len(held)]), n_frames=frames, size=size, max_blur_px=15.0,
                               seed=700 + k) for k in range(n_clips)]
    return torch.cat([c[0] for c in clips]), torch.cat([c[1] for c in clips])


def psnr_vs(infer, frames: np.ndarray, truth: torch.Tensor, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(per-frame PSNR against ``truth``, the outputs) of an engine, outputs cropped back to h x w."""
    from neurmap.core.metrics import psnr_per_image

    out = np.concatenate([infer(f[None]) for f in frames])[..., :h, :w]
    return psnr_per_image(torch.from_numpy(out).clamp(0, 1), truth).double().numpy(), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", action="append", default=[], help="NAME=PATH (a checkpoint or shipped name); "
                    "repeatable (default: the shipped default)")
    ap.add_argument("--budgets", default="0,1,2,3,4,6,12", help="comma-separated --exclude-budget values")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--frames", type=int, default=12, help="frames per engine per timing round")
    ap.add_argument("--name", default="int8_budget", help="results file name (bench/results/NAME.json)")
    args = ap.parse_args()
    budgets = [int(b) for b in args.budgets.split(",") if b.strip()]
    from neurmap.core import load_weights
    from neurmap.core.models.wrapper import pad_to_multiple
    from neurmap.demo import calibration_frames, synthetic_clip
    from neurmap.export.onnx_export import export_onnx, onnx_session
    from neurmap.export.targets import ExportRequest, build_ort_int8

    specs = [w.split("=", 1) if "=" in w else (w, w) for w in (args.weights or ["default"])]
    load_before, t_start = uptime(), time.perf_counter()
    demo_b, demo_s = synthetic_clip(24, CLIP_SIZE)
    held_b, held_s = heldout_clip()
    h, w = CLIP_SIZE
    engines, rows = {}, []
    with tempfile.TemporaryDirectory(prefix="int8-budget-") as tmp:
        tmp = Path(tmp)
        for name, path in specs:
            model, meta = load_weights(path)
            sources = {}
            for src, (b, s) in {"demo clip": (demo_b, demo_s), "held-out shake": (held_b, held_s)}.items():
                padded, _ = pad_to_multiple(b, model.pad_multiple)
                sources[src] = (np.ascontiguousarray(padded.numpy()), s)
            hp, wp = sources["demo clip"][0].shape[-2:]
            calib = calibration_frames(torch.from_numpy(sources["demo clip"][0]))   # the demo's calibration frames
            gmac = gmacs(model.net, hp, wp)
            fp32 = onnx_session(export_onnx(model, tmp / f"{name}_fp32.onnx", height=hp, width=wp), threads=0)
            variants = {"fp32": fp32}
            for b in budgets:
                t0 = time.perf_counter()
                req = ExportRequest(model=model, weights_meta=meta, out=tmp / f"{name}_int8_x{b}.onnx",
                                    precision="int8", shapes=[(hp, wp)], calib=np.ascontiguousarray(calib),
                                    exclude="auto" if b > 0 else "none", exclude_budget=b, log=lambda _m: None)
                art = build_ort_int8(req)
                variants[f"int8 x{b}"] = onnx_session(art.path, threads=0)
                engines[f"{name} int8 x{b}"] = {"float_mac_share": round(float_mac_share(art.path), 4),
                                                "convs_kept_float": sum(n.endswith("Conv") for n in kept_float(art.path)),
                                                "build_s": round(time.perf_counter() - t0, 1)}
                print(f"{name}: built INT8 x{b} in {engines[f'{name} int8 x{b}']['build_s']} s", flush=True)
            quality = {}
            for v, sess in variants.items():
                iname = sess.get_inputs()[0].name
                infer = (lambda x, s=sess, n=iname: s.run(None, {n: x})[0])
                scored = {src: psnr_vs(infer, fr, truth, h, w) for src, (fr, truth) in sources.items()}
                quality[v] = {src: p for src, (p, _) in scored.items()}
                quality[v]["_out"] = scored["demo clip"][1][:4]        # agreement: the first 4 demo frames
                engines.setdefault(f"{name} {v}", {}).update({"infer": infer, "frames": sources["demo clip"][0],
                                                              "gmac": gmac, "net": name, "variant": v})
            ref = np.clip(quality["fp32"]["_out"], 0, 1)
            for v in variants:
                from neurmap.core.metrics import psnr
                agree = psnr(torch.from_numpy(np.clip(quality[v]["_out"], 0, 1)), torch.from_numpy(ref))
                row = {"net": name, "variant": v, "agree_db": round(float(agree), 2) if v != "fp32" else ""}
                for src in sources:
                    row[f"{src} dB"] = round(float(quality[v][src].mean()), 3)
                    row[f"{src} loss_db"] = round(float(quality["fp32"][src].mean() - quality[v][src].mean()), 3)
                rows.append(row)

        order = list(engines)
        fps: dict[str, list[float]] = {k: [] for k in order}
        for rnd in range(args.repeats):
            for k in (order if rnd % 2 == 0 else order[::-1]):
                fps[k].append(frames_per_second(engines[k]["infer"], engines[k]["frames"][:args.frames]))
            print(f"round {rnd + 1}/{args.repeats}  ({uptime()})", flush=True)
    for r in rows:
        k = f"{r['net']} {r['variant']}"
        e = engines[k]
        r.update({"fps": round(statistics.median(fps[k]), 2), "gmac": round(e["gmac"], 2),
                  "convs_kept_float": e.get("convs_kept_float", "all"), "float_mac_share": e.get("float_mac_share", 1.0)})
    report(args.name, rows, {
        "weights": dict(specs), "budgets": budgets, "repeats": args.repeats, "frames_per_round": args.frames,
        "fps_per_round": {k: [round(v, 2) for v in fps[k]] for k in order},
        "resolution": f"{CLIP_SIZE[1]}x{CLIP_SIZE[0]} (padded to each net's pad multiple)",
        "sources": "demo clip: neurmap.demo.synthetic_clip(24); held-out shake: 2 camera_shake_clip x 8 frames of "
                   "photo_split heldout photos, max 15 px",
        "recipe": "build_ort_int8: percentile ranges, U8/S8 per-channel, calibrated on the demo's 4 calibration "
                  "frames; budget b: exclude='auto' with exclude_budget=b (0: exclude='none')",
        "uptime_before": load_before, "uptime_after": uptime(), "seconds": round(time.perf_counter() - t_start, 1)})


if __name__ == "__main__":
    main()
