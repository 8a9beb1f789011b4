"""``neurmap run``: wires the command line to :mod:`neurmap.edge_runtime` (sources, backends, pipeline, sinks)."""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

console = Console(stderr=True, highlight=False, soft_wrap=True)


def _check_writable(path: Path, is_dir: bool) -> None:
    """Refuse an output that cannot be written before the stream starts (not after the first frame)."""
    from neurmap.core.errors import NeurmapError

    folder = path if is_dir else path.parent
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise NeurmapError(f"--output {path}: cannot write there ({probe} is not a writable folder); "
                           "choose a folder you may write to")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NeurmapError(f"--output {path}: cannot create {folder} ({e.strerror}); choose a folder you may "
                           "write to") from None


def _write_json(path: Path, summary: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, path)


def run(
    source: str = typer.Argument(..., help="Video file, image folder, camera index (0), v4l2:///dev/videoN, csi://N, "
                                           "csi://N[?width=W&height=H&fps=F], rtsp://..., or a GStreamer pipeline (contains '!')."),
    engine: str = typer.Option(..., "--engine", "-e", help="Artifact to run: .onnx (ONNX Runtime), .engine/.plan "
                               "(TensorRT), .mlpackage (Core ML, macOS), .safetensors / official DMPHN folder / "
                               "shipped name (PyTorch)."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Video file (.mp4, .avi, .mkv ...) or image "
                                         "folder (DIR/). Omit to only measure."),
    realtime: Optional[bool] = typer.Option(None, "--realtime/--offline", help="realtime: drop stale frames to keep "
                                            "latency bounded (default for cameras/streams; paces files at their fps). "
                                            "offline: every frame in order (default for files)."),
    compare: bool = typer.Option(False, "--compare", help="Write input | output side by side."),
    show: bool = typer.Option(False, "--show", help="Show frames in a window (q/Esc stops)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the JSON summary here."),
    fps: Optional[float] = typer.Option(None, "--fps", help="Frame rate of the output video (default: the "
                                        "input's; 30 for image folders)."),
    input_rate: Optional[float] = typer.Option(None, "--input-rate", help="Read the source at most this many "
                                               "frames/s (a file played as if live)."),
    loop: bool = typer.Option(False, "--loop", help="Restart a file or folder source at its end."),
    max_frames: Optional[int] = typer.Option(None, "--max-frames", help="Stop after this many captured frames."),
    tile: Optional[str] = typer.Option(None, "--tile", help="Tile frames larger than HxW (bounds memory on big "
                                       "frames; fixed-shape engines always tile to their shape)."),
    overlap: int = typer.Option(32, "--overlap", help="Tile overlap in pixels (blended)."),
    providers: Optional[str] = typer.Option(None, "--providers", help="ONNX Runtime execution providers, comma "
                                            "separated (default: TensorRT, CUDA, CPU as available)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Engine CPU threads (ONNX Runtime / PyTorch)."),
    device: str = typer.Option("cpu", "--device", help="PyTorch backend device (cpu, cuda)."),
    reconnect_timeout: float = typer.Option(30.0, "--reconnect-timeout", help="Give up on a dropped live source "
                                            "after this many seconds without frames."),
    read_timeout: float = typer.Option(5.0, "--read-timeout", help="A live source that delivers no frame for this "
                                       "many seconds (a stalled stream) is treated as dropped and reconnected."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No live status line (messages still print)."),
    adapt: bool = typer.Option(False, "--adapt", help="Adapt the deblur net to this camera while streaming (guarded, "
                               "hot-swapped between frames; see `neurmap adapt --help`)."),
    adapt_opts: Optional[str] = typer.Option(None, "--adapt-opts", help="key=value,... for --adapt: motion=M, "
                                             "weights=W, out=W2, steps=N, params=lora, every=F, duty=D, rounds=R, onnx=P; "
                                             "mode=auto|stream|single (auto: a video, >= 3 ordered frames or a camera "
                                             "adapt on neighbouring frames' flow, one image on the motion net), "
                                             "motion_source=flow|m|fused and exposure=E for the stream path."),
) -> None:
    """Deblur a video, image folder, camera or stream with an exported engine, in real time or offline.

    Prints a live status line (FPS, latency, dropped frames) and a JSON summary at the end. Ctrl-C or SIGTERM
    stops cleanly: frames in flight finish and the output file is finalised (press twice to skip frames still
    in the engine)."""
    from neurmap.core.errors import NeurmapError

    from .pipeline import build_pipeline

    for name, value in (("--fps", fps), ("--input-rate", input_rate), ("--read-timeout", read_timeout)):
        if value is not None and value <= 0:
            raise typer.BadParameter(f"{name} must be positive, got {value}")
    if max_frames is not None and max_frames < 1:
        raise typer.BadParameter(f"--max-frames must be at least 1, got {max_frames}")
    if overlap < 0:
        raise typer.BadParameter(f"--overlap must be >= 0, got {overlap}")
    if threads is not None and threads < 1:
        raise typer.BadParameter(f"--threads must be >= 1, got {threads}")
    from neurmap.core.options import parse_hw

    tile_hw = parse_hw(tile, "--tile", "512x512") if tile else None
    options: dict = {"device": device}
    if threads:
        options["threads"] = threads
        try:
            import torch
            torch.set_num_threads(threads)
        except ImportError:
            pass
    if providers:
        options["providers"] = [p.strip() if p.strip().endswith("ExecutionProvider") else f"{p.strip()}ExecutionProvider"
                                for p in providers.split(",") if p.strip()]

    if output:
        _check_writable(Path(output[:-1] if output.endswith("/") else output), output.endswith(("/", os.sep)))
    live = None

    def event(msg: str) -> None:
        console.print(f"[yellow]note:[/yellow] {msg}")

    try:
        pipe = build_pipeline(source, engine, output, realtime=realtime, compare=compare, show=show, fps=fps,
                              input_rate=input_rate, loop=loop, max_frames=max_frames, overlap=overlap, tile=tile_hw,
                              reconnect_timeout=reconnect_timeout, read_timeout=read_timeout,
                              backend_options=options, on_event=event)
    except KeyboardInterrupt:
        console.print("interrupted before the stream started; nothing written")
        raise typer.Exit(130) from None
    adapter = None
    if adapt:
        from .adapt_cli import attach_from_cli
        try:
            adapter = attach_from_cli(pipe, engine, adapt_opts, on_event=event)
        except BaseException:
            pipe.close()   # the camera/stream and the engine are released, not held until exit
            raise

    signals: list[int] = []

    def on_signal(signum, _frame) -> None:
        signals.append(signum)
        name = signal.Signals(signum).name
        force = len(signals) > 1
        pipe.stop(name, force=force)
        console.print(f"[yellow]{name}:[/yellow] stopping — " + (
            "skipping frames still in the engine, finalising the output" if force else
            "finishing frames in flight and finalising the output (again to skip those still in the engine)"))

    old = {}
    for s in (signal.SIGINT, signal.SIGTERM):
        try:
            old[s] = signal.signal(s, on_signal)
        except ValueError:  # not the main thread (run embedded in another program): its signals stay its own
            pass
    console.print(f"running {pipe.source.describe()} -> {pipe.sink.describe()} on {pipe.backend.describe()}, "
                  f"{'realtime' if pipe.cfg.realtime else 'offline'}"
                  + (f", paced at {pipe.cfg.rate:g} fps" if pipe.cfg.rate else ""))

    last_plain = [time.monotonic()]

    def tick(metrics) -> None:
        if quiet:
            return
        if live is not None:
            live.update(metrics.status_line())
        elif time.monotonic() - last_plain[0] >= 10:
            last_plain[0] = time.monotonic()
            console.print(metrics.status_line())

    error: Optional[NeurmapError] = None
    try:
        if console.is_terminal and not quiet:
            from rich.live import Live
            with Live("starting...", console=console, refresh_per_second=4, transient=True) as live:
                summary = pipe.run(on_tick=tick)
        else:
            summary = pipe.run(on_tick=tick)
    except NeurmapError as e:
        error, summary = e, pipe.summary()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if adapter is not None:
        summary["adaptation"] = adapter.close()
    summary["exit"] = "error" if error else ("signal" if signals else "completed")
    if json_path:
        _write_json(json_path, summary)
    e2e = summary["latency_capture_to_sink"]
    lat = f"{e2e['p50_ms']:.0f}/{e2e['p95_ms']:.0f}/{e2e['p99_ms']:.0f} ms" if e2e.get("count") else "-"
    console.print(f"{summary['frames_written']} frames written in {summary['wall_s']:.1f} s: "
                  f"{summary['fps']:.2f} fps (engine alone {summary['model_fps']:.2f}); capture-to-sink latency "
                  f"p50/p95/p99 {lat}; dropped {summary['frames_dropped']}, rejected {summary['frames_rejected']}")
    print(json.dumps(summary, indent=2))
    sys.stdout.flush()
    if error is not None:
        raise error
    if signals:
        raise typer.Exit(128 + signals[0])


def register(app: typer.Typer) -> None:
    """Add ``run`` to the ``neurmap`` command line."""
    app.command("run")(run)
