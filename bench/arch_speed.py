"""INT8 speed of architecture alternatives at one budget (issue 12, item 3), all timed in one run.

Runs with no arguments: `python bench/arch_speed.py`. Prints a table and writes bench/results/arch_speed.json.

- **Nets**: registry names (``--nets``), each built as it exports (the plain net a ``*_rep`` training net folds
  into) with a fixed seed; ``name=PATH`` times trained weights instead. ONNX Runtime INT8 speed does not depend
  on the weights' values: the graph, the shapes and the convs kept in float decide it, and the compact nets keep
  none (``ModelSpec.int8_float_convs``). Shapes that are not registry nets are given as
  ``label:channels/blocks``, e.g. ``c40:40,80,160/0,1,2,1,0``.
- **Engines**: exactly what ``neurmap demo`` builds (:func:`neurmap.demo.prepare_runner`, ``ort-int8``: the
  shipped INT8 recipe), on the demo's 24-frame 640x360 clip and its calibration frames, in a temp dir.
- **Ceiling** and **timing**: as ``bench/default_speed.py`` (one large 3x3 conv quantized the same way; rounds
  alternate the engine order; median FPS over ``--repeats``). FPS ratio to the first net, GMAC at 1280x720 and
  per frame, achieved GMAC/s and its share of the ceiling's.
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

from common import report, uptime
from default_speed import CLIP_FRAMES, CLIP_SIZE, build_ceiling, ceiling_net, frames_per_second, gmacs

DEFAULT_NETS = ("compact", "compact_low", "compact_wide", "c40:40,80,160/0,1,2,1,0", "c48:48,96,192/0,1,1,1,0",
                "c32d:32,64,128/1,2,2,2,1", "c24d:24,64,128/1,2,3,2,1")


def build(entry: str, seed: int = 0):
    """(label, DeblurModel, weights-hash) of one ``--nets`` entry (module docstring)."""
    from neurmap.core import load_weights
    from neurmap.core.errors import InputError
    from neurmap.core.models import build_network
    from neurmap.core.models.compact import CompactDeblur
    from neurmap.core.models.wrapper import DeblurModel

    if "=" in entry:
        label, path = entry.split("=", 1)
        model, meta = load_weights(path)
        return label, model, meta.get("weights_hash", label)
    torch.manual_seed(seed)
    if ":" in entry:
        label, shape = entry.split(":", 1)
        try:
            ch, bl = (tuple(int(v) for v in part.split(",")) for part in shape.split("/"))
            net = CompactDeblur(channels=ch, blocks=bl)
        except (ValueError, TypeError) as e:
            raise InputError(f"--nets {entry!r}: give label:c1,c2,c3/b1,b2,b3,b4,b5 ({e})") from None
        return label, DeblurModel(net.eval(), name="compact"), f"{label}-seed{seed}"
    return entry, DeblurModel(build_network(entry).eval(), name=entry), f"{entry}-seed{seed}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nets", nargs="+", default=list(DEFAULT_NETS), help="registry names, name=PATH or "
                    "label:channels/blocks; the first is the reference of the FPS ratios")
    ap.add_argument("--repeats", type=int, default=5, help="timing rounds (median reported)")
    ap.add_argument("--frames", type=int, default=CLIP_FRAMES, help=f"frames per engine per round (<= {CLIP_FRAMES})")
    ap.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: ORT's default, as the demo)")
    args = ap.parse_args()
    if args.repeats < 1 or not 1 <= args.frames <= CLIP_FRAMES or args.threads < 0:
        ap.error(f"need --repeats >= 1, 1 <= --frames <= {CLIP_FRAMES}, --threads >= 0")
    import torch.nn.functional as F

    from neurmap.core.models.wrapper import pad_to_multiple
    from neurmap.demo import calibration_frames, prepare_runner, synthetic_clip
    from neurmap.export.onnx_export import onnx_session

    load_before, t_start = uptime(), time.perf_counter()
    blurry, _ = synthetic_clip(CLIP_FRAMES, CLIP_SIZE)
    engines: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="arch-speed-") as tmp:
        tmp = Path(tmp)
        for entry in args.nets:
            label, model, whash = build(entry)
            padded, _ = pad_to_multiple(blurry, model.pad_multiple)
            hp, wp = padded.shape[-2:]
            calib = calibration_frames(padded)
            r = prepare_runner(model, {"weights_hash": whash}, hp, wp, calib, "ort-int8", args.threads, tmp)
            engines[label] = {"infer": r.infer, "frames": padded.numpy(), "gmac": gmacs(model.net, hp, wp),
                              "gmac_720p": gmacs(model.net, 720, 1280),
                              "params_m": sum(p.numel() for p in model.net.parameters()) / 1e6, "entry": entry}
        h, w = CLIP_SIZE[0] // 2, CLIP_SIZE[1] // 2
        cnet = ceiling_net()
        small = F.interpolate(torch.from_numpy(calib), size=(h, w), mode="area").numpy()
        sess = onnx_session(build_ceiling(cnet, h, w, small, tmp)[1], threads=args.threads)
        iname = sess.get_inputs()[0].name
        cframes = np.ascontiguousarray(F.interpolate(blurry, size=(h, w), mode="area").numpy())
        engines["ceiling"] = {"infer": lambda x: sess.run(None, {iname: x}), "frames": cframes,
                              "gmac": gmacs(cnet, h, w), "gmac_720p": None, "params_m": None,
                              "entry": "3x3 conv 128->128 at 180x320"}
        engines["ceiling"]["infer"](cframes[:1])
        order = list(engines)
        fps: dict[str, list[float]] = {k: [] for k in order}
        for rnd in range(args.repeats):
            for k in (order if rnd % 2 == 0 else order[::-1]):
                fps[k].append(frames_per_second(engines[k]["infer"], engines[k]["frames"][:args.frames]))
            print(f"round {rnd + 1}/{args.repeats}: " + ", ".join(f"{k} {fps[k][-1]:.1f}" for k in order)
                  + f"  ({uptime()})", flush=True)

    med = {k: statistics.median(v) for k, v in fps.items()}
    ceil_rate, ref = med["ceiling"] * engines["ceiling"]["gmac"], order[0]
    rows = []
    for k in order:
        e = engines[k]
        per_round = [a / b for a, b in zip(fps[k], fps[ref])]
        rows.append({"net": k, "params_M": round(e["params_m"], 3) if e["params_m"] else "",
                     "gmac_720p": round(e["gmac_720p"], 1) if e["gmac_720p"] else "",
                     "gmac_per_frame": round(e["gmac"], 3), "int8_fps": round(med[k], 2),
                     "fps_ratio": round(statistics.median(per_round), 3) if k != "ceiling" else "",
                     "gmac_per_s": round(med[k] * e["gmac"], 1),
                     "share_of_ceiling": round(med[k] * e["gmac"] / ceil_rate, 3)})
    report("arch_speed", rows, {
        "nets": {k: engines[k]["entry"] for k in order}, "fps_per_round": {k: [round(v, 2) for v in fps[k]]
                                                                           for k in order},
        "fps_ratio": f"median over rounds of fps / {ref}'s fps in the same round",
        "recipe": "neurmap.demo.prepare_runner(ort-int8): neurmap export's shipped INT8 recipe",
        "resolution": f"{CLIP_SIZE[1]}x{CLIP_SIZE[0]} (padded to each net's pad multiple)",
        "frames_per_round": args.frames, "repeats": args.repeats, "ort_threads": args.threads or "ORT default",
        "uptime_before": load_before, "uptime_after": uptime(), "seconds": round(time.perf_counter() - t_start, 1)})


if __name__ == "__main__":
    from neurmap.core.errors import NeurmapError

    try:
        main()
    except NeurmapError as e:
        sys.exit(f"arch_speed: {e}")
