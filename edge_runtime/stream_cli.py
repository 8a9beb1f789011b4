"""``neurmap adapt`` on a video or ordered frames: the stream path (:mod:`.stream_adapt`) behind the command."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional


def is_stream(source: str) -> bool:
    """A video file, or a folder of >= 3 frames (read in name order, as a camera writes them)."""
    from neurmap.core.data import frame_source

    try:
        return len(frame_source(source)) >= 3
    except Exception:  # noqa: BLE001 - the single-image path reports unreadable sources in its own words
        return False


def is_stream_source(src) -> bool:
    """An opened :class:`~.sources.Source` whose frames have neighbours: a video, a camera or network stream,
    or a folder of >= 3 images (one image, or two, keep the single-image path)."""
    return src.kind != "images" or (src.frame_count or 0) >= 3


def read_consecutive(source: str, max_frames: int) -> list:
    """Up to ``max_frames`` + 1 consecutive frames (uint8) from the middle of ``source``: neighbours matter."""
    from neurmap.core.data import frame_source
    from neurmap.core.errors import NeurmapError

    from .adaptation import _to_uint8_chw

    seq = frame_source(source)
    n = len(seq)
    if n < 3:
        raise NeurmapError(f"{source}: {n} frame(s); the stream path needs >= 3 consecutive frames (use --mode single)")
    k = min(n, max_frames + 1)
    start = (n - k) // 2
    return [_to_uint8_chw(seq[i]) for i in range(start, start + k)]


def adapt_stream(source: str, weights: str, model, meta: dict, target: Path, exposure: Optional[float],
                 max_frames: int, overrides: dict, json_out: Optional[Path], console, motion=None,
                 motion_src: Optional[str] = None) -> dict:
    """Estimate (or take) the exposure, flow-derived blur in the worker, one guarded round (M first for the
    m / fused motion sources), save G (and the adapted M) if accepted."""
    from neurmap.core.checkpoint import atomic_write, weights_hash
    from neurmap.core.exposure import estimate_exposure
    from neurmap.core.flow_motion import check_exposure

    from .adaptation import save_adapted
    from .stream_adapt import StreamAdapter, flow_worker, motion_frames, stream_config

    cfg = stream_config(overrides)
    cfg.parts()
    frames = read_consecutive(source, max_frames)
    if exposure is not None:
        exposure, how = check_exposure(exposure), "given"
    else:
        exposure, how = estimate_exposure(frames, points=cfg.flow_points).exposure, "estimated from the footage"
    worker = flow_worker(cfg)
    t0 = time.perf_counter()
    centres = list(range(len(frames) - 1)) if len(frames) > max_frames else list(range(len(frames)))
    items = motion_frames(frames, centres, exposure, worker, cfg.flow_points)
    flow_s = time.perf_counter() - t0
    worker.close()
    held = [it for i, it in enumerate(items) if i % 4 == 3]
    train = [it for i, it in enumerate(items) if i % 4 != 3]
    base_hash = weights_hash(model.net.state_dict())
    adapter = StreamAdapter(model, cfg, motion)
    blur = {"flow": "neighbouring frames' flow", "m": f"the motion net's absolute reading ({motion_src}, adapted "
            "to the flow first)", "fused": f"the motion net ({motion_src}) where it agrees with the flow, else the "
            "flow"}[cfg.motion_source]
    console.print(f"adapting {meta.get('architecture')} ({weights}) to {source} (stream: blur from {blur}, "
                  f"exposure {exposure:.2f} {how}): {len(train)} training + {len(held)} held-out "
                  f"frames, {cfg.steps} steps of {cfg.params} at lr {cfg.lr:g}; flow {1000 * worker.per_frame():.1f} "
                  f"ms/frame in the flow worker")
    res = adapter.run_round(train, held)
    b, a = res.before, res.after
    console.print(f"held-out score (lower is better): {b.total:.5f} -> {a.total:.5f} (reblur {b.reblur:.5f} -> "
                  f"{a.reblur:.5f}, sharp anchor {b.sharp:.5f} -> {a.sharp:.5f})" if a else
                  f"held-out score before: {b.total:.5f}; round stopped: {res.reason}")
    result = {"accepted": res.accepted, "reason": res.reason, "out": None, "round": res.as_dict(), "mode": "stream",
              "motion_source": cfg.motion_source,
              "exposure": round(exposure, 4), "exposure_source": how, "flow_ms_per_frame":
              round(1000 * worker.per_frame(), 2), "flow_seconds": round(flow_s, 2), "weights": str(weights),
              "source": str(source)}
    if res.accepted:
        prov = {"adapted_from": str(weights), "base_weights_hash": base_hash, "source": str(source), "mode": "stream",
                "exposure": result["exposure"], "exposure_source": how, "steps": res.steps, "params": cfg.params,
                "lr": cfg.lr, "motion_source": cfg.motion_source, "motion_round": res.motion,
                "score_before": b.as_dict(), "score_after": a.as_dict(),
                "date": time.strftime("%Y-%m-%d %H:%M:%S"), "config": cfg.as_dict(),
                "original_provenance": meta.get("provenance", {})}
        result["out"] = str(save_adapted(target, adapter.G, adapter.M, prov, original=weights))
        console.print(f"[green]accepted[/green]: wrote {result['out']} (original {weights} untouched)")
    else:
        console.print(f"[yellow]rolled back[/yellow]: {res.reason}; nothing written, {weights} untouched")
    if json_out:
        atomic_write(json_out, lambda t: Path(t).write_text(json.dumps(result, indent=2)))
    print(json.dumps({k: result[k] for k in ("accepted", "reason", "out", "mode", "motion_source", "exposure")}))
    return result
