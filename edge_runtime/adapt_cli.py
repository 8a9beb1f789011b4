"""``neurmap adapt`` (offline: adapt to a clip, save new weights) and the glue behind ``neurmap run --adapt``."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

console = Console(stderr=True, highlight=False, soft_wrap=True)

#: ``--adapt-opts`` keys of ``neurmap run --adapt`` beyond AdaptConfig's own fields
RUN_KEYS = {"weights": str, "motion": str, "out": str, "onnx": str, "every": int, "min_new": int,
            "capacity": int, "duty": float, "rounds": int, "mode": str, "exposure": float}
MODES = ("auto", "stream", "single")


def read_frames(source: str, max_frames: int) -> list:
    """Up to ``max_frames`` frames of ``source`` (folder, video or image), evenly spaced, as uint8 tensors."""
    import numpy as np

    from neurmap.core.data import frame_source
    from neurmap.core.errors import NeurmapError

    from .adaptation import _to_uint8_chw

    seq = frame_source(source)
    n = len(seq)
    if n == 0:
        raise NeurmapError(f"{source} holds no frames to adapt to")
    idx = sorted(set(np.linspace(0, n - 1, min(n, max_frames)).round().astype(int).tolist()))
    return [_to_uint8_chw(seq[i]) for i in idx]


def adapt(
    source: str = typer.Argument(..., help="Clip, image folder or image from the camera to adapt to (no ground "
                                           "truth needed)."),
    weights: str = typer.Option(..., "--weights", "-w", help="Deblur weights to start from: checkpoint, official "
                                "DMPHN folder or shipped name. Never modified."),
    motion: Optional[str] = typer.Option(None, "--motion", help="Motion-net checkpoint (default: the one inside "
                                         "--weights, else the shipped default)."),
    steps: int = typer.Option(20, "--steps", help="Gradient steps."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where accepted weights go (default: "
                                       "<weights>_adapted-<source>.safetensors)."),
    params: str = typer.Option("lora", "--params", help="Parameter set: lora, bias, last, all (or joined: "
                               "lora+bias). The stream path's default is all (at lr 5e-5)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Adam learning rate (default per parameter set)."),
    crop: int = typer.Option(96, "--crop", help="Training crop side in pixels."),
    batch: int = typer.Option(4, "--batch", help="Crops per step."),
    max_frames: int = typer.Option(24, "--max-frames", help="Frames read from SOURCE (evenly spaced); every "
                                   "4th is held out for the guard."),
    mu_sharp: str = typer.Option("auto", "--mu-sharp", help="Target residual motion of sharp output: 'auto' or "
                                 "a number (20-px units)."),
    niqe_guard: Optional[bool] = typer.Option(None, "--niqe-guard/--no-niqe-guard", help="Also require NIQE of "
                                              "the held-out output not to rise (default: on for single images, off "
                                              "for streams)."),
    probe_guard: Optional[bool] = typer.Option(None, "--probe-guard/--no-probe-guard", help="Also require that the "
                                               "held-out outputs, re-blurred with random camera shake, are restored at "
                                               "least as well as before (catches drift toward the identity; default: "
                                               "on for single images, off for streams)."),
    sharp_guard: Optional[bool] = typer.Option(None, "--sharp-guard/--no-sharp-guard", help="Also require that G "
                                               "alters already-sharp images no more than before (catches "
                                               "over-sharpening; default: on for streams, off for single images)."),
    min_gain: float = typer.Option(0.002, "--min-gain", help="Accept only if the held-out score drops by this "
                                   "fraction."),
    min_blur_px: float = typer.Option(1.0, "--min-blur-px", help="Skip adaptation when the motion net reads less "
                                      "blur than this (mean px) in the held-out frames: sharp footage, or a motion "
                                      "net that cannot see this camera's blur (the reblur loss would then only "
                                      "pull the model toward its input). 0 always adapts."),
    eval_crop: int = typer.Option(192, "--eval-crop", help="Side of the held-out crops the guard scores."),
    eval_crops: int = typer.Option(8, "--eval-crops", help="Number of held-out crops the guard scores."),
    device: str = typer.Option("auto", "--device", help="auto (cuda if available), cpu, cuda."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for the adaptation steps "
                                          "(default: PyTorch's; on a small shared CPU, 1 avoids oversubscription)."),
    seed: int = typer.Option(0, "--seed"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the result as JSON here."),
    exposure: Optional[float] = typer.Option(None, "--exposure", help="Exposure fraction of a video source "
                                             "(shutter time × frame rate, in (0, 1]); default: estimated."),
    mode: str = typer.Option("auto", "--mode", help="auto: a video or ordered frames use neighbouring frames' "
                             "flow as the blur (stream path), one image the motion net (single path); or force "
                             "'stream' / 'single'."),
    motion_source: Optional[str] = typer.Option(None, "--motion-source", help="Stream path: where the blur comes "
                                                "from — flow (neighbouring frames' flow × exposure, the default), "
                                                "m (the motion net's absolute reading, M adapted to the flow "
                                                "first) or fused (M where it agrees with the flow within a factor "
                                                "2, else flow)."),
) -> None:
    """Adapt a deblur net to the blur of one camera: a few guarded steps of NeurMAP's unpaired losses.

    The motion net stays frozen; only a small parameter set moves (LoRA merged back into the convs by
    default, so exported graphs keep their shape). Held-out frames are scored before and after: the new
    weights are saved only if they score better, otherwise nothing is written. The original weights are
    never modified."""
    from neurmap.core import load_weights
    from neurmap.core.checkpoint import weights_hash
    from neurmap.core.errors import NeurmapError

    from .adaptation import AdaptConfig, Adapter, FrameBuffer, default_lr, default_out, resolve_motion, save_adapted

    if threads:
        import torch
        torch.set_num_threads(threads)
    for name, value, least in (("--steps", steps, 1), ("--batch", batch, 1), ("--crop", crop, 8),
                               ("--max-frames", max_frames, 2), ("--eval-crops", eval_crops, 1),
                               ("--eval-crop", eval_crop, 8)):
        if value < least:
            raise NeurmapError(f"{name} {value} must be at least {least}")
    try:
        mu: object = "auto" if mu_sharp == "auto" else float(mu_sharp)
    except ValueError:
        raise typer.BadParameter(f"--mu-sharp {mu_sharp!r}: 'auto' or a number") from None
    cfg = AdaptConfig(steps=steps, params=params, lr=lr if lr is not None else default_lr(params), crop=crop,
                      batch=batch, mu_sharp=mu, niqe_guard=niqe_guard is not False,
                      probe_guard=probe_guard is not False, sharp_guard=bool(sharp_guard), min_gain=min_gain,
                      min_blur_px=min_blur_px, device=device, seed=seed, eval_crop=eval_crop, eval_crops=eval_crops)
    cfg.parts()
    target = Path(out) if out else default_out(weights, source)
    w = Path(weights)
    if w.exists() and target.resolve() == w.resolve():
        raise NeurmapError(f"--out {target} is the original weights file; adapted weights never overwrite it")

    from .stream_cli import adapt_stream, is_stream

    # --mode stream on one image: the stream path's reader says why it cannot
    has_neighbours = mode == "stream" or (mode == "auto" and is_stream(source))
    if stream_mode(mode, has_neighbours, source, motion_source is not None, "--mode single"):
        overrides = {"steps": steps, "crop": crop, "batch": batch, "seed": seed, "device": device,
                     "min_gain": min_gain, "min_blur_px": min_blur_px, "eval_crop": eval_crop, "eval_crops": eval_crops,
                     **{k: v for k, v in (("niqe_guard", niqe_guard), ("probe_guard", probe_guard),
                                          ("sharp_guard", sharp_guard)) if v is not None},
                     **({"params": params} if params != "lora" else {}), **({"lr": lr} if lr is not None else {}),
                     **({"motion_source": motion_source} if motion_source else {})}
        from .stream_adapt import stream_config
        cfg_s = stream_config(overrides)        # a bad --motion-source is refused before anything loads
        model, meta = load_weights(weights)
        M, m_src = resolve_motion(weights, motion) if cfg_s.motion_source != "flow" else (None, None)
        adapt_stream(source, weights, model, meta, target, exposure=exposure, max_frames=max_frames,
                     overrides=overrides, json_out=json_out, console=console, motion=M, motion_src=m_src)
        return
    model, meta = load_weights(weights)
    M, motion_src = resolve_motion(weights, motion)
    frames = read_frames(source, max_frames)
    buf = FrameBuffer(capacity=max(len(frames), 2), holdout_every=4).extend(frames)
    train, held = buf.snapshot()
    if not held:
        raise NeurmapError(f"{source}: {len(frames)} frame(s) are too few to hold any out; adaptation needs >= 4")
    base_hash = weights_hash(model.net.state_dict())
    adapter = Adapter(model, M, cfg)
    console.print(f"adapting {meta.get('architecture')} ({weights}) to {source}: {len(train)} training + "
                  f"{len(held)} held-out frames, {steps} steps of {params} at lr {cfg.lr:g} on "
                  f"{adapter.device}; motion net: {motion_src}")
    t0 = time.perf_counter()

    def on_step(i: int, loss: float) -> None:
        if i == 1 or i % 5 == 0 or i == steps:
            console.print(f"  step {i}/{steps}: loss {loss:.5f}  ({time.perf_counter() - t0:.1f} s)")

    res = adapter.run_round(train, held, on_step=on_step)
    b, a = res.before, res.after
    console.print(f"held-out score (lower is better): {b.total:.5f} -> {a.total:.5f}" if a else
                  f"held-out score before: {b.total:.5f}; round stopped: {res.reason}")
    if a:
        console.print(f"  reblur consistency {b.reblur:.5f} -> {a.reblur:.5f}; motion-net sharpness "
                      f"{b.sharp:.5f} -> {a.sharp:.5f}" + (f"; NIQE {b.niqe:.3f} -> {a.niqe:.3f}" if a.niqe else ""))
    result = {"accepted": res.accepted, "reason": res.reason, "out": None, "round": res.as_dict(),
              "weights": str(weights), "source": str(source), "motion": motion_src}
    if res.accepted:
        prov = {"adapted_from": str(weights), "base_weights_hash": base_hash, "source": str(source),
                "frames": {"train": len(train), "held_out": len(held)}, "steps": res.steps, "params": params,
                "lr": cfg.lr, "trainable": res.trainable, "motion": motion_src, "mu_sharp": res.mu_sharp,
                "score_before": b.as_dict(), "score_after": a.as_dict(), "seconds": round(res.seconds, 1),
                "date": time.strftime("%Y-%m-%d %H:%M:%S"), "config": cfg.as_dict(),
                "original_provenance": meta.get("provenance", {})}
        path = save_adapted(target, adapter.G, M, prov, original=weights)
        result["out"] = str(path)
        console.print(f"[green]accepted[/green]: wrote {path} (original {weights} untouched)")
    else:
        console.print(f"[yellow]rolled back[/yellow]: {res.reason}; nothing written, {weights} untouched")
    if json_out:
        from neurmap.core.checkpoint import atomic_write
        atomic_write(json_out, lambda t: Path(t).write_text(json.dumps(result, indent=2)))
    print(json.dumps({k: result[k] for k in ("accepted", "reason", "out")}))


def parse_run_opts(text: Optional[str]) -> tuple[dict, dict]:
    """``k=v,k=v`` of ``--adapt-opts`` -> (AdaptConfig fields, run keys)."""
    import typing

    from neurmap.core.errors import NeurmapError

    from .adaptation import AdaptConfig

    from neurmap.core.options import coerce

    types = typing.get_type_hints(AdaptConfig)
    cfg, run = {}, {}
    for item in filter(None, (s.strip() for s in (text or "").split(","))):
        if "=" not in item:
            raise NeurmapError(f"--adapt-opts item {item!r} is not key=value (e.g. steps=10,params=lora)")
        k, v = (s.strip() for s in item.split("=", 1))
        if k in RUN_KEYS:
            run[k] = coerce(v, RUN_KEYS[k], k, "--adapt-opts")
        elif k in types:
            cfg[k] = v if k == "mu_sharp" and v == "auto" else coerce(v, float if k == "mu_sharp" else types[k],
                                                                       k, "--adapt-opts")
        else:
            raise NeurmapError(f"unknown --adapt-opts key {k!r}; known: {', '.join(sorted(set(types) | set(RUN_KEYS)))}")
    for k in ("steps", "every", "min_new", "capacity", "rounds", "batch", "crop"):
        value = cfg.get(k, run.get(k))
        if value is not None and value < 1:
            raise NeurmapError(f"--adapt-opts {k}={value} must be at least 1")
    return cfg, run


def attach_from_cli(pipe, engine: str, opts_text: Optional[str] = None, on_event=lambda m: None):
    """Start the online adapter on a built pipeline (``neurmap run --adapt``); returns it (``close()`` at the end)."""
    from neurmap.core import load_weights
    from neurmap.core.errors import NeurmapError

    from .adaptation import AdaptConfig, default_lr, default_out, resolve_motion
    from .hotswap import OnlineAdapter, model_from_onnx, swapper_for
    from .stream_adapt import STREAM_FLOW_EVERY, StreamBuffer, flow_worker, stream_config
    from .stream_cli import is_stream_source

    cfg_kw, run = parse_run_opts(opts_text)
    stream = stream_mode(run.get("mode", "auto"), is_stream_source(pipe.source), pipe.source.describe(),
                         "motion_source" in cfg_kw, "--adapt-opts mode=single")
    if stream:
        cfg = stream_config(cfg_kw)
    else:
        cfg_kw.setdefault("lr", default_lr(cfg_kw.get("params", "lora")))
        cfg = AdaptConfig.from_dict(cfg_kw)
    cfg.parts()
    backend = pipe.backend
    weights = run.get("weights")
    if weights:
        model, _ = load_weights(weights)
    elif backend.name == "torch":
        model, weights = backend.model, engine
    elif backend.name == "onnxruntime":
        model = model_from_onnx(engine)
    else:
        raise NeurmapError(f"--adapt on a {backend.name} engine needs the PyTorch weights it was built from: "
                           "--adapt-opts weights=W")
    if stream and cfg.motion_source == "flow" and not run.get("motion"):
        try:                 # flow needs no motion net; one is still saved with G when the weights carry it
            motion, motion_src = resolve_motion(weights or engine, None)
        except NeurmapError:
            motion, motion_src = None, None
    else:
        motion, motion_src = resolve_motion(weights or engine, run.get("motion"))
    swapper = swapper_for(backend, engine, model, run.get("onnx"))
    out = run.get("out") or str(default_out(weights or engine, "online"))
    if weights and Path(weights).exists() and Path(out).resolve() == Path(weights).resolve():
        raise NeurmapError("--adapt-opts out= is the original weights file; adapted weights never overwrite it")
    prov = {"adapted_from": str(weights or engine), "base_weights": str(weights or engine),
            "source": pipe.source.describe(), "engine": str(engine), "motion": motion_src}
    # the stream path flows one centre frame in 4 (STREAM_FLOW_EVERY: flow's share of the INT8 frame time)
    every, capacity = run.get("every", STREAM_FLOW_EVERY if stream else 2), run.get("capacity", 24)
    buf = None
    if stream:
        buf = StreamBuffer(flow_worker(cfg), capacity=capacity, every=every, exposure=run.get("exposure"),
                           points=cfg.flow_points, on_event=on_event)
        pipe.frame_taps.append(buf.add)
    on_event(f"adapting online ({cfg.params}, {cfg.steps} steps per round, lr {cfg.lr:g}"
             + (f"; stream path: blur from {cfg.motion_source}, flow of each frame's neighbours in a worker thread"
                if stream else "; single-image path: the motion net's relative motion")
             + f"); accepted weights go to {out} and are swapped into the {backend.name} engine between frames")
    return OnlineAdapter(swapper, model, motion, cfg, out=out, every=every, min_new=run.get("min_new", 8),
                         capacity=capacity, duty=run.get("duty", 1.0), max_rounds=run.get("rounds"),
                         provenance=prov, on_event=on_event, stream=buf)


def stream_mode(mode: str, has_neighbours: bool, what: str, motion_source_given: bool, single_hint: str) -> bool:
    """Whether adaptation takes the stream path: ``mode`` auto / stream / single against the source; one-line
    errors for a stream asked of a single image and for a motion source given to the single-image path."""
    from neurmap.core.errors import ConfigError, InputError

    if mode not in MODES:
        raise ConfigError(f"adaptation mode {mode!r}: choose {', '.join(MODES)}")
    if mode == "stream" and not has_neighbours:
        raise InputError(f"{what} is a single image: the stream path needs a video, ordered frames (>= 3) or a "
                         f"camera, whose neighbouring frames give the blur; use {single_hint}")
    stream = mode == "stream" or (mode == "auto" and has_neighbours)
    if motion_source_given and not stream:
        raise ConfigError(f"a motion source applies to the stream path only; {what} takes the single-image path "
                          "(the motion net's relative motion, SPEC) — drop the motion source")
    return stream


def register(app: typer.Typer) -> None:
    """Add ``adapt`` to the ``neurmap`` command line."""
    app.command("adapt")(adapt)
