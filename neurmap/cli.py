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


def parse_size(text: str) -> tuple[int, int]:
    """'720x1280' or '1280x720p'-free 'HxW' -> (H, W), with a clear error."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        if h <= 0 or w <= 0:
            raise ValueError
    except ValueError:
        raise typer.BadParameter(f"size {text!r} is not HxW with positive integers, e.g. 720x1280") from None
    return h, w


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

    res = evaluate(weights, data, max_images=max_images, crop=parse_size(crop) if crop else None,
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


from neurmap.edge_runtime.cli import register as _reg_runtime; _reg_runtime(app)
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

    if resume and config is None:
        from pathlib import Path as _Path
        config = str(_Path(resume) / "config.json")  # a run remembers its config (JSON is YAML)
    cfg = load_config(config, list(ctx.args))
    run_dir = run_training(cfg, resume=resume, progress=progress)
    console.print(f"run directory: {run_dir}  (weights: {run_dir / 'final.safetensors'})")
from neurmap.edge_runtime.adapt_cli import register as _reg_adapt; _reg_adapt(app)
from neurmap.export.cli import register as _reg_export; _reg_export(app)


def main() -> None:
    """Entry point: user-facing errors become one red line and exit code 2, never a traceback."""
    from neurmap.core.errors import NeurmapError

    try:
        app()
    except NeurmapError as e:
        console.print(f"[red]error:[/red] {e}", soft_wrap=True)
        sys.exit(2)
    except FloatingPointError as e:
        console.print(f"[red]error:[/red] {e}", soft_wrap=True)
        sys.exit(3)
