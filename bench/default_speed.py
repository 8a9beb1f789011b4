"""Speed acceptance of the shipped default (issue 12): the new default vs the one it replaced, against the
CPU's practical INT8 ceiling, all timed in one run.

Runs with no arguments: `python bench/default_speed.py`. Prints a table and writes
bench/results/default_speed.json.

- **Nets**: the shipped default (``load_weights("default")``) and the previous one (the weights file at
  ``--old-rev``, extracted by ``git show`` into a temp dir at run time). Each gets exactly the engines
  ``neurmap demo`` builds: the demo's camera-shake clip (24 frames, 640x360), its calibration frames
  (:func:`neurmap.demo.calibration_frames`) and :func:`neurmap.demo.prepare_runner`, i.e. ONNX Runtime INT8 by
  ``neurmap export``'s shipped recipe (percentile ranges, U8 activations / S8 per-channel weights, up to 12
  sensitivity-chosen convs kept in float), cached where the demo caches it (``--fresh``: rebuild in a temp dir).
- **Ceiling**: one large 3x3 conv, 128->128 channels at half of 640x360 (180x320: 8.5 GMAC, the order of the
  nets' 7.3 GMAC per 640x360 frame), between a 3->128 and a 128->3 1x1 conv (0.5 % of its MACs) so that its
  input and output are images and the 3x3 runs U8 in / U8 out, as the nets' convs do. Quantized by the same
  ``build_ort_int8`` with no convs kept in float (keeping this net's convs in float would time a float conv).
- **Timing**: every engine runs ``--frames`` frames per round; rounds alternate the engine order (forward,
  then reversed) so a load change on this shared CPU hits all of them alike; FPS is the median over
  ``--repeats`` rounds. GMAC from hooks on the meta device; achieved GMAC/s = GMAC x FPS; share = that over the
  ceiling's GMAC/s at the same precision. Per INT8 engine also the convs its sensitivity pass kept in float
  and their share of the MACs (the two nets share a graph, not necessarily that choice). ``uptime`` before and
  after and the thread setting are in the JSON.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common import report, uptime

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = "neurmap_core/weights/default.safetensors"
#: the default before issue 12 (3d3279f put the new one in); the bench compares against this file
OLD_REV = "3d3279f^"
CLIP_FRAMES, CLIP_SIZE = 24, (360, 640)        # neurmap demo's defaults (the INT8 cache is keyed on its frames)
#: new/old INT8 FPS ratios above 1 - NOISE count as "at least as fast" (same graph: only timing noise differs)
NOISE = 0.03


def gmacs(net: nn.Module, h: int, w: int) -> float:
    """GMAC of one (1,3,h,w) forward, counted on a meta-device copy (no arithmetic, any size)."""
    from neurmap.core.profile import count_macs

    return count_macs(copy.deepcopy(net).to("meta"), torch.empty(1, 3, h, w, device="meta")) / 1e9


def ceiling_net(channels: int = 128, seed: int = 0) -> nn.Module:
    """3 -> C (1x1) -> C (3x3, the measured conv) -> 3 (1x1), ReLUs after the first two: image in, image out."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, channels, 1), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1),
                         nn.ReLU(), nn.Conv2d(channels, 3, 1)).eval()


def build_ceiling(net: nn.Module, h: int, w: int, calib: np.ndarray, out_dir: Path) -> tuple[Path, Path]:
    """(FP32, INT8) ONNX files of ``net`` at (h, w), INT8 by the shipped recipe with no convs kept in float."""
    from neurmap.export.onnx_export import export_onnx
    from neurmap.export.targets import ExportRequest, build_ort_int8

    fp32 = export_onnx(net, out_dir / "ceiling_fp32.onnx", h, w)
    req = ExportRequest(model=net, weights_meta={}, out=out_dir / "ceiling_int8.onnx", precision="int8",
                        shapes=[(h, w)], calib=np.ascontiguousarray(calib, dtype=np.float32), exclude="none",
                        log=lambda _msg: None)
    return fp32, build_ort_int8(req).path


def old_weights(rev: str, out_dir: Path) -> Path:
    """The default weights file as of git revision ``rev``, written into ``out_dir``."""
    from neurmap.core.errors import ConfigError

    r = subprocess.run(["git", "show", f"{rev}:{WEIGHTS}"], cwd=REPO, capture_output=True, timeout=60)
    if r.returncode != 0:
        raise ConfigError(f"--old-rev {rev}: git show failed ({r.stderr.decode().strip().splitlines()[-1][:160]})")
    path = out_dir / "old_default.safetensors"
    path.write_bytes(r.stdout)
    return path


def kept_float(int8_path) -> list[str]:
    """Nodes the INT8 artifact keeps in float (its ``quant.excluded`` metadata)."""
    import json

    from neurmap.export.onnx_export import read_artifact_metadata

    return json.loads(read_artifact_metadata(int8_path).get("quant.excluded", "[]"))


def float_mac_share(int8_path) -> float:
    """Share of the graph's conv MACs in convs the INT8 artifact keeps in float (weights not behind a
    DequantizeLinear): the same net can differ in speed by which convs its sensitivity pass kept."""
    import onnx

    m = onnx.shape_inference.infer_shapes(onnx.load(str(int8_path)))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input)}
    inits = {i.name: list(i.dims) for i in m.graph.initializer}
    dq = {n.output[0]: n.input[0] for n in m.graph.node if n.op_type == "DequantizeLinear"}
    total = kept = 0
    for n in m.graph.node:
        if n.op_type not in ("Conv", "ConvTranspose"):
            continue
        w = inits.get(n.input[1]) or inits[dq[n.input[1]]]
        # Conv: out numel x (Cin/g) kh kw; ConvTranspose (weight Cin, Cout/g, kh, kw): in numel x (Cout/g) kh kw
        numel = float(np.prod(shapes[n.output[0]] if n.op_type == "Conv" else shapes[n.input[0]]))
        macs = numel * w[1] * w[2] * w[3]
        total += macs
        kept += macs if n.input[1] in inits else 0
    return kept / total if total else 0.0


def frames_per_second(infer, frames: np.ndarray) -> float:
    t = time.perf_counter()
    for x in frames:
        infer(x[None])
    return len(frames) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="timing rounds (median reported)")
    ap.add_argument("--frames", type=int, default=CLIP_FRAMES, help=f"frames per engine per round (<= {CLIP_FRAMES})")
    ap.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: ORT's default, as the demo)")
    ap.add_argument("--old-rev", default=OLD_REV, help="git revision whose default weights are 'old'")
    ap.add_argument("--ceiling-channels", type=int, default=128, help="channels of the ceiling 3x3 conv")
    ap.add_argument("--fresh", action="store_true", help="build the nets' engines in a temp dir, not the demo cache")
    args = ap.parse_args()
    if args.repeats < 1 or not 1 <= args.frames <= CLIP_FRAMES or args.threads < 0 or args.ceiling_channels < 1:
        ap.error(f"need --repeats >= 1, 1 <= --frames <= {CLIP_FRAMES}, --threads >= 0, --ceiling-channels >= 1")
    import onnxruntime as ort
    import torch.nn.functional as F

    from neurmap.core import load_weights
    from neurmap.core.models.wrapper import pad_to_multiple
    from neurmap.demo import cache_dir, calibration_frames, prepare_runner, synthetic_clip
    from neurmap.export.onnx_export import onnx_session

    load_before, t_start = uptime(), time.perf_counter()
    engines: dict[str, dict] = {}                 # name -> {infer, frames, gmac, net, precision, ...}
    with tempfile.TemporaryDirectory(prefix="default-speed-") as tmp:
        tmp = Path(tmp)
        cache = tmp / "engines" if args.fresh else cache_dir()
        nets = {"new default": load_weights("default"), "old default": load_weights(old_weights(args.old_rev, tmp))}
        blurry, _ = synthetic_clip(CLIP_FRAMES, CLIP_SIZE)
        for name, (model, meta) in nets.items():
            padded, _ = pad_to_multiple(blurry, model.pad_multiple)
            hp, wp = padded.shape[-2:]
            calib = calibration_frames(padded)
            gmac = gmacs(model.net, hp, wp)
            for prec, backend in (("int8", "ort-int8"), ("fp32", "ort-fp32")):
                t0 = time.perf_counter()
                r = prepare_runner(model, meta, hp, wp, calib, backend, args.threads, cache)
                engines[f"{name} {prec}"] = {"infer": r.infer, "frames": padded.numpy(), "net": name, "precision": prec,
                                             "gmac": gmac, "weights_hash": meta.get("weights_hash"),
                                             "prepare_s": round(time.perf_counter() - t0, 1), "notes": r.notes,
                                             "artifact": str(r.artifact)}
                if prec == "int8":
                    engines[f"{name} int8"]["kept_float"] = kept_float(r.artifact)
                    engines[f"{name} int8"]["float_mac_share"] = round(float_mac_share(r.artifact), 4)
        # the ceiling: calibrated on the demo's calibration frames at the conv's resolution
        h, w = CLIP_SIZE[0] // 2, CLIP_SIZE[1] // 2
        cnet = ceiling_net(args.ceiling_channels)
        small = F.interpolate(torch.from_numpy(calib), size=(h, w), mode="area").numpy()
        t0 = time.perf_counter()
        paths = dict(zip(("fp32", "int8"), build_ceiling(cnet, h, w, small, tmp)))
        cgmac = gmacs(cnet, h, w)
        cframes = np.ascontiguousarray(F.interpolate(blurry, size=(h, w), mode="area").numpy())
        for prec, path in paths.items():
            sess = onnx_session(path, threads=args.threads)
            iname = sess.get_inputs()[0].name
            engines[f"ceiling {prec}"] = {"infer": lambda x, s=sess, n=iname: s.run(None, {n: x}), "frames": cframes,
                                          "net": f"ceiling: 3x3 conv {args.ceiling_channels}->{args.ceiling_channels} "
                                                 f"at {h}x{w}", "precision": prec, "gmac": cgmac,
                                          "prepare_s": round(time.perf_counter() - t0, 1)}
            engines[f"ceiling {prec}"]["infer"](cframes[:1])          # warm-up (the nets' runners ran one)
        engines["ceiling int8"]["float_mac_share"] = round(float_mac_share(paths["int8"]), 4)

        # timing: alternate the order every round
        order = list(engines)
        fps: dict[str, list[float]] = {k: [] for k in order}
        for rnd in range(args.repeats):
            for k in (order if rnd % 2 == 0 else order[::-1]):
                e = engines[k]
                fps[k].append(frames_per_second(e["infer"], e["frames"][:args.frames]))
            print(f"round {rnd + 1}/{args.repeats}: " + ", ".join(f"{k} {fps[k][-1]:.1f}" for k in order)
                  + f"  ({uptime()})", flush=True)

    rows = []
    med = {k: statistics.median(v) for k, v in fps.items()}
    for k in order:
        e = engines[k]
        ceil = med[f"ceiling {e['precision']}"] * engines[f"ceiling {e['precision']}"]["gmac"]
        rate = med[k] * e["gmac"]
        rows.append({"engine": k, "gmac_per_frame": round(e["gmac"], 3), "fps": round(med[k], 2),
                     "fps_min": round(min(fps[k]), 2), "fps_max": round(max(fps[k]), 2),
                     "gmac_per_s": round(rate, 1), "share_of_ceiling": round(rate / ceil, 3),
                     "convs_kept_float": sum(n.endswith("Conv") for n in e.get("kept_float", []))
                     if e["precision"] == "int8" else "", "float_mac_share": e.get("float_mac_share", "")})
    per_round = {p: [round(a / b, 3) for a, b in zip(fps[f"new default {p}"], fps[f"old default {p}"])]
                 for p in ("int8", "fp32")}
    ratio = {p: round(med[f"new default {p}"] / med[f"old default {p}"], 3) for p in ("int8", "fp32")}
    extra = {
        "ratio_new_over_old": ratio, "ratio_new_over_old_per_round": per_round,
        "new_at_least_as_fast_int8": ratio["int8"] >= 1 - NOISE, "noise_band": NOISE,
        "fps_per_round": {k: [round(v, 2) for v in fps[k]] for k in order},
        "engines": {k: {x: v for x, v in e.items() if x not in ("infer", "frames")} for k, e in engines.items()},
        "old_rev": args.old_rev, "frames_per_round": args.frames, "repeats": args.repeats,
        "ort_threads": args.threads or "ORT default", "onnxruntime": ort.__version__,
        "resolution": f"{CLIP_SIZE[1]}x{CLIP_SIZE[0]} (padded to each net's pad multiple)",
        "ceiling": (f"3->{args.ceiling_channels} 1x1, {args.ceiling_channels}->{args.ceiling_channels} 3x3, "
                    f"{args.ceiling_channels}->3 1x1 at {h}x{w}; INT8 by build_ort_int8 with exclude='none'"),
        "engine_cache": "temp dir (--fresh)" if args.fresh else str(cache_dir()),
        "uptime_before": load_before, "uptime_after": uptime(), "seconds": round(time.perf_counter() - t_start, 1),
    }
    report("default_speed", rows, extra)
    print(f"new/old FPS: INT8 {ratio['int8']}  FP32 {ratio['fp32']}  (per round INT8 {per_round['int8']})")


if __name__ == "__main__":
    from neurmap.core.errors import NeurmapError

    try:
        main()
    except NeurmapError as e:            # bad --old-rev and the like: one line, not a traceback
        sys.exit(f"default_speed: {e}")
