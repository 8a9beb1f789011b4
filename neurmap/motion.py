"""``neurmap motion SOURCE``: what the motion net reads, beside the blur the footage's own flow implies.

A user must be able to see whether M understands their camera. Per frame: the input, M's motion and — where
the source is a video or a folder of ordered frames — the flow-derived blur (:mod:`neurmap.core.flow_motion`,
exposure from ``--exposure`` or estimated), as flow-colour panels on one fixed colour scale (hue = direction,
saturation = magnitude up to ``scale_px``), and the mean blur in pixels of each. Blur has no sign, so M and
flow are compared sign-invariantly (vn).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

console = Console(stderr=True, highlight=False, soft_wrap=True)


def read_motion(source: str, weights: str = "default", motion: Optional[str] = None,
                exposure: Optional[float] = None, max_frames: int = 60, width: int = 640) -> dict:
    """Frames (downscaled to ``width``), M's motion and the flow-derived blur of ``source``, with per-frame px."""
    import torch
    import torch.nn.functional as F

    from neurmap.core.data import frame_source
    from neurmap.core.errors import InputError
    from neurmap.core.exposure import estimate_exposure
    from neurmap.core.flow_motion import FlowEstimator, blur_px, check_exposure, velocity, velocity_to_motion
    from neurmap.core.reblur import canonical_motion
    from neurmap.edge_runtime.adaptation import resolve_motion
    from neurmap.edge_runtime.stream_adapt import STREAM_DEFAULTS

    if max_frames < 1:
        raise InputError(f"--max-frames {max_frames} must be at least 1")
    if width < 32:
        raise InputError(f"--width {width} must be at least 32 pixels")
    seq = frame_source(source)
    n = min(len(seq), max_frames)
    if n == 0:
        raise InputError(f"{source} holds no frames; give a video, an image folder or an image")
    frames = []
    for i in range(n):
        f = seq[i]
        h, w = f.shape[-2:]
        if w > width:
            f = F.interpolate(f[None], size=(max(8, round(h * width / w)), width), mode="area")[0]
        frames.append(f.clamp(0, 1))
    if len({tuple(f.shape) for f in frames}) != 1:
        raise InputError(f"{source}: frames of different sizes; motion needs one size (one camera)")
    M, m_src = resolve_motion(weights, motion)
    M.eval()
    stream = n >= 3 or (n == 2 and exposure is not None)       # a single image has no neighbours
    # flow read as the stream path reads it (bench/flow_cost.py: the five-point stencil's blur is ~20 % closer)
    points = STREAM_DEFAULTS["flow_points"]
    est = None
    if stream and exposure is None:
        est = estimate_exposure(frames, points=points)        # pairs spread over every frame read
        exposure = est.exposure
    elif exposure is not None:
        exposure = check_exposure(exposure)
    flow = FlowEstimator(scale=STREAM_DEFAULTS["flow_scale"], preset=STREAM_DEFAULTS["flow_preset"])
    out = {"source": str(source), "frames": n, "size": list(frames[0].shape[-2:]), "motion_net": m_src,
           "stream": bool(stream), "exposure": round(exposure, 4) if exposure else None,
           "exposure_estimated": est is not None, "per_frame": []}
    maps = []
    with torch.no_grad():
        for t in range(n):
            m = canonical_motion(M(frames[t][None]).float())[0]
            row = {"frame": t, "M_px": round(blur_px(m), 3)}
            fm = None
            if stream:
                fm = canonical_motion(velocity_to_motion(velocity(frames, t, flow, points), exposure)[None])[0]
                row["flow_px"] = round(blur_px(fm), 3)
                row["M_vs_flow_error_px"] = round(blur_px(m - fm), 3)
            out["per_frame"].append(row)
            maps.append((m, fm))
    pf = out["per_frame"]
    out["mean_M_px"] = round(sum(r["M_px"] for r in pf) / n, 3)
    if stream:
        out["mean_flow_px"] = round(sum(r["flow_px"] for r in pf) / n, 3)
        out["mean_M_vs_flow_error_px"] = round(sum(r["M_vs_flow_error_px"] for r in pf) / n, 3)
        out["M_over_flow"] = round(out["mean_M_px"] / max(out["mean_flow_px"], 1e-6), 3)
    out["_frames"], out["_maps"] = frames, maps
    return out


def write_viz(result: dict, path: Path, fps: float = 10.0) -> Path:
    """input | M | flow-derived blur (fixed colour scale) as a video, written atomically."""
    import numpy as np
    import torch

    from neurmap.core.flow_motion import flow_to_color
    from neurmap.core.models.motion import MOTION_SCALE
    from neurmap.edge_runtime.sinks import VideoSink

    maps = result["_maps"]
    top = max(float(torch.quantile(m.norm(dim=0).flatten(), 0.99)) for pair in maps for m in pair if m is not None)
    top = max(top, 0.5 / MOTION_SCALE)
    result["scale_px"] = round(top * MOTION_SCALE, 2)
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    sink = VideoSink(tmp, fps)
    try:
        for f, (m, fm) in zip(result["_frames"], maps):
            panels = [f, flow_to_color(m, top)] + ([flow_to_color(fm, top)] if fm is not None else [])
            rgb = torch.cat(panels, dim=-1).permute(1, 2, 0).numpy()
            sink.write(np.ascontiguousarray((rgb[..., ::-1] * 255 + 0.5).clip(0, 255).astype(np.uint8)), "")
    finally:
        sink.close()
    os.replace(tmp, path)
    return path


def motion(
    source: str = typer.Argument(..., help="Video, folder of ordered frames, or one image."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write input | M | flow-derived blur as a video "
                                       "(flow colours: hue = direction, saturation = magnitude)."),
    as_json: bool = typer.Option(False, "--json", help="Print the per-frame numbers as JSON."),
    weights: str = typer.Option("default", "--weights", "-w", help="Checkpoint carrying the motion net (or a "
                                "shipped name)."),
    motion_net: Optional[str] = typer.Option(None, "--motion", help="Motion-net checkpoint (default: the one in "
                                             "--weights)."),
    exposure: Optional[float] = typer.Option(None, "--exposure", help="Exposure fraction: shutter time × frame "
                                             "rate, in (0, 1] (default: estimated from the footage)."),
    max_frames: int = typer.Option(60, "--max-frames", help="Read at most this many consecutive frames."),
    width: int = typer.Option(640, "--width", help="Downscale wider frames to this width first."),
) -> None:
    """Show what the motion net reads: M's blur per frame, and for videos the blur the footage's own flow
    implies (neighbouring frames × exposure) — if they disagree, M does not understand this camera."""
    res = read_motion(source, weights, motion_net, exposure, max_frames, width)
    if out is not None:
        write_viz(res, out)
    public = {k: v for k, v in res.items() if not k.startswith("_")}
    if out is not None:
        public["video"] = str(out)
    line = f"{res['frames']} frames of {source}: motion net reads {res['mean_M_px']:.2f} px of blur per frame"
    if res["stream"]:
        src = "estimated" if res["exposure_estimated"] else "given"
        line += (f"; flow-derived blur {res['mean_flow_px']:.2f} px (exposure {res['exposure']:.2f}, {src}); "
                 f"M / flow = {res['M_over_flow']:.2f}, M's error {res['mean_M_vs_flow_error_px']:.2f} px")
    else:
        line += " (a single image: no neighbours, so no flow-derived blur)"
    console.print(line)
    if out is not None:
        console.print(f"wrote {out} (input | motion net | flow-derived blur, full colour = {res['scale_px']} px)")
    if as_json:
        print(json.dumps(public, indent=2))


def register(app: typer.Typer) -> None:
    """Add ``motion`` to the ``neurmap`` command line."""
    app.command("motion")(motion)
