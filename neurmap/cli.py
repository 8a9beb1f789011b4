"""The ``neurmap`` command line: parses, prints and calls into the four subpackages — no logic of its own."""
from __future__ import annotations

import json
import sys
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from . import __version__

app = typer.Typer(
    help="NeurMAP Edge: train motion-deblurring nets on unpaired data (NeurMAP) and run them in real time "
         "on edge devices. Start with `neurmap demo`; every command has --help.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        print(f"neurmap {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """NeurMAP Edge command line."""


def parse_size(text: str, what: str = "--size") -> tuple[int, int]:
    """'720x1280' -> (H, W); the one parser every command uses (:func:`neurmap.core.options.parse_hw`)."""
    from neurmap.core.options import parse_hw

    return parse_hw(text, what)


@app.command()
def models(size: str = typer.Option("720x1280", "--size", help="Input size HxW the cost is counted at."),
           as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table.")) -> None:
    """List every network with parameters, fp32 MB and GMACs at --size.

    MACs are counted by hooks on a forward on PyTorch's meta device (shapes only), so this is instant
    at any size."""
    from neurmap.core.models import MODELS
    from neurmap.core.profile import network_cost

    h, w = parse_size(size)
    rows = []
    for name, spec in MODELS.items():
        c = network_cost(name, h, w)
        rows.append({"name": name, "role": spec.role, "params": c.params, "mb": round(c.mb, 2),
                     "gmacs": round(c.gmacs, 2), "size": f"{h}x{w}", "description": spec.description})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    t = Table(title=f"NeurMAP networks at {h}x{w}")
    for col in ("name", "role", "params", "fp32 MB", "GMACs", "description"):
        t.add_column(col, justify="right" if col in ("params", "fp32 MB", "GMACs") else "left")
    for r in rows:
        t.add_row(r["name"], r["role"], f"{r['params']:,}", f"{r['mb']:.1f}", f"{r['gmacs']:.1f}", r["description"])
    Console().print(t)


@app.command("eval")
def eval_command(
        weights: str = typer.Option(..., "--weights", help="Checkpoint file, official DMPHN folder or shipped name."),
        data: str = typer.Option(..., "--data", help="Paired folder (blur/ + sharp/), GoPro root "
                                 "(<split>/<seq>/{blur,sharp}/), image folder or video (unpaired: NIQE only)."),
        json_out: Optional[str] = typer.Option(None, "--json", help="Write the full result (means, per image, "
                                               "settings) to this JSON file."),
        grid: Optional[str] = typer.Option(None, "--grid", help="Write a PNG grid blurry | deblurred | sharp."),
        max_images: Optional[int] = typer.Option(None, "--max-images", min=1,
                                                 help="Evaluate at most N items, evenly spaced."),
        crop: Optional[str] = typer.Option(None, "--crop", help="Centre-crop every item to HxW first."),
        motion: Optional[str] = typer.Option(None, "--motion", help="Motion-net checkpoint for the motion-map "
                                             "error (default: the one in --weights, if any).")) -> None:
    """Score a deblur net: PSNR, SSIM, LPIPS (paired data) and NIQE of input and output, per image and mean.

    The data kind is detected and printed; full-reference metrics need sharp images. The motion-map error
    is reported where the data carries ground-truth motion and a motion net is available."""
    from neurmap.core.evaluate import evaluate, summary_rows, write_json

    res = evaluate(weights, data, max_images=max_images, crop=parse_size(crop, "--crop") if crop else None,
                   motion=motion, grid_path=grid)
    console.print(f"data: {res['data']['description']}; evaluated {res['data']['n_evaluated']}")
    for note in res["notes"]:
        console.print(f"[yellow]note:[/yellow] {note}")
    t = Table(title=f"{res['settings']['architecture']} on {res['data']['n_evaluated']} {res['data']['kind']} items")
    for col in ("metric", "better", "input", "output", "change"):
        t.add_column(col, justify="left" if col in ("metric", "better") else "right")
    for row in summary_rows(res):
        t.add_row(*row)
    Console().print(t)
    if grid:
        console.print(f"grid: {res['settings']['grid']}")
    if json_out:
        console.print(f"json: {write_json(res, json_out)}")


@app.command()
def demo(input: Optional[str] = typer.Option(None, "--input", help="Your video file or frame folder "
                                             "(default: a synthetic camera-shake clip with known sharp truth)."),
         out: str = typer.Option("neurmap-demo", "--out", help="Output folder (video, PNG grid, summary.json)."),
         frames: int = typer.Option(24, "--frames", min=1, help="Number of frames to render / read."),
         size: str = typer.Option("360x640", "--size", help="HxW of the synthetic clip."),
         weights: str = typer.Option("default", "--weights", help="Shipped model name or checkpoint."),
         backend: str = typer.Option("auto", "--backend", help="auto | ort-int8 | ort-fp32 | torch "
                                     "(auto: the fastest that works here)."),
         threads: int = typer.Option(0, "--threads", min=0, help="Inference threads (0: the engine's default)."),
         progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars.")) -> None:
    """Deblur a short clip with the shipped model and write a side-by-side video, a PNG grid and a summary.

    With no arguments: renders a handheld-shake clip from scikit-image's photos (sharp truth known, so PSNR
    before/after is reported) and runs it through ONNX Runtime INT8, FP32 or PyTorch, whichever is fastest
    here."""
    from neurmap.demo import run_demo

    s = run_demo(input=input, out_dir=out, frames=frames, size=parse_size(size), weights=weights,
                 backend=backend, threads=threads, progress=progress, console=console)
    line = f"backend {s['backend']}: {s['fps']} fps ({s['ms_per_frame']} ms/frame, {s['size'][0]}x{s['size'][1]})"
    if "psnr_blurry_db" in s:
        line += f"; PSNR {s['psnr_blurry_db']} -> {s['psnr_deblurred_db']} dB"
    console.print(line)
    for note in s["backend_notes"]:
        console.print(f"[yellow]note:[/yellow] {note}")
    console.print(f"wrote {s['out_dir']}/ ({', '.join(s['files'].values())}) in {s['timings_s']['total_s']} s")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(ctx: typer.Context,
          config: Optional[str] = typer.Argument(None, help="YAML config (see configs/neurmap_gopro.yaml)."),
          resume: Optional[str] = typer.Option(None, "--resume", help="Run directory to continue exactly."),
          progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar.")) -> None:
    """Train G with NeurMAP: content loss on paired data, the MAP losses on unpaired data.

    Extra arguments are key=value overrides, e.g. `iterations=200 loss_weights.G_reblur=10 device=cpu`.
    Multi-GPU / multi-node: `torchrun --nproc-per-node N -m neurmap train CONFIG`. Checkpoints land in
    output_dir every checkpoint_every iterations; `--resume RUN_DIR` continues bit for bit."""
    from neurmap.core.train import load_config, run_training

    from pathlib import Path

    from neurmap.core.errors import ConfigError

    if resume and not (Path(resume) / "config.json").is_file() and config is None:
        raise ConfigError(f"--resume {resume}: no run there (no config.json); give the run's output_dir, "
                          "or the config too: neurmap train CONFIG --resume RUN_DIR")
    if resume and config is None:
        config = str(Path(resume) / "config.json")   # a run remembers its config (read back as JSON)
    cfg = load_config(config, list(ctx.args))
    run_dir = run_training(cfg, resume=resume, progress=progress)
    console.print(f"run directory: {run_dir}  (weights: {run_dir / 'final.safetensors'})")


def _register_subcommands() -> None:
    """``run``, ``adapt``, ``export``, ``check``, ``bench`` and ``motion`` live beside the code they drive."""
    from neurmap.edge_runtime.adapt_cli import register as register_adapt
    from neurmap.edge_runtime.cli import register as register_runtime
    from neurmap.export.cli import register as register_export
    from neurmap.motion import register as register_motion

    register_runtime(app)
    register_adapt(app)
    register_export(app)
    register_motion(app)


_register_subcommands()


#: exit codes of ``neurmap`` (README: "Errors you can meet")
EXIT_INPUT, EXIT_NUMERICS, EXIT_FILES, EXIT_MEMORY, EXIT_ENGINE, EXIT_INTERRUPTED = 2, 3, 4, 5, 6, 130
_ENGINES = {"onnxruntime": "ONNX Runtime", "tensorrt": "TensorRT", "coremltools": "Core ML"}


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


def _engine_of(e: BaseException) -> Optional[str]:
    """The inference library an exception came from (its class or the frames it went through), if any."""
    mod = type(e).__module__ or ""
    for key, name in _ENGINES.items():
        if mod.startswith(key):
            return name
    tb = e.__traceback__
    last = None
    while tb is not None:
        f = tb.tb_frame.f_code.co_filename.replace("\\", "/")
        for key, name in _ENGINES.items():
            if f"/{key}/" in f:
                last = name
        tb = tb.tb_next
    return last


def friendly_error(e: BaseException) -> Optional[tuple[str, int]]:
    """(one-line message naming the problem and the fix, exit code) for the failures a user can act on;
    None for a bug (which keeps its traceback)."""
    import errno

    from neurmap.core.errors import NeurmapError

    if isinstance(e, NeurmapError):
        return str(e), EXIT_INPUT
    if isinstance(e, FloatingPointError):
        return str(e), EXIT_NUMERICS
    if isinstance(e, KeyboardInterrupt):
        return ("interrupted (Ctrl-C): stopped; outputs are written atomically, so nothing half-written was left "
                "at the target (a training run resumes with --resume RUN_DIR)"), EXIT_INTERRUPTED
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or (
            isinstance(e, RuntimeError) and ("out of memory" in str(e).lower() or "can't allocate memory" in str(e))):
        return (f"out of memory ({_first_line(e)}); use a smaller size (--size/--shape/--tile, crop=, batch_*=), "
                "fewer --threads, or another device"), EXIT_MEMORY
    if isinstance(e, PermissionError):
        return (f"permission denied: {e.filename or _first_line(e)}; write somewhere you may (--out/--output/"
                "--json, output_dir=...) or fix that path's permissions"), EXIT_FILES
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        what = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EFBIG: "file size limit hit"}
        return (f"{what[e.errno]} writing {e.filename or 'the output'}; nothing half-written was kept at the "
                "target: free space (or raise the limit) or write elsewhere (--out/--output, output_dir=...)"), EXIT_FILES
    engine = _engine_of(e)
    if engine is not None:
        return (f"{engine} failed: {_first_line(e)}; check the artifact (`neurmap check ARTIFACT --data DIR`) or "
                "re-export it here with `neurmap export`"), EXIT_ENGINE
    if isinstance(e, OSError):
        return (f"{e.strerror or _first_line(e)}: {e.filename or ''}; check the path exists and is readable/"
                "writable").replace(": ;", ";"), EXIT_FILES
    return None


def main() -> None:
    """Entry point: every failure a user can act on becomes one red line and a non-zero exit, never a
    traceback (set NEURMAP_TRACEBACK=1 to see it anyway)."""
    import os

    from rich.markup import escape

    try:
        app()
    except SystemExit as e:
        cause = getattr(e.__context__, "__cause__", None)   # typer turns Ctrl-C into Exit(130)
        if isinstance(cause, KeyboardInterrupt) and e.code == EXIT_INTERRUPTED:
            console.print(f"[red]error:[/red] {escape(friendly_error(cause)[0])}", soft_wrap=True)
        raise
    except BaseException as e:  # noqa: BLE001 - sorted into user-facing failures and bugs below
        found = friendly_error(e)
        if found is None or os.environ.get("NEURMAP_TRACEBACK"):
            raise
        console.print(f"[red]error:[/red] {escape(found[0])}", soft_wrap=True, highlight=False)
        sys.exit(found[1])
