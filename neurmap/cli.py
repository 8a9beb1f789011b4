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


def main() -> None:
    """Entry point: user-facing errors become one red line and exit code 2, never a traceback."""
    from neurmap.core.errors import NeurmapError

    try:
        app()
    except NeurmapError as e:
        console.print(f"[red]error:[/red] {e}")
        sys.exit(2)
    except FloatingPointError as e:
        console.print(f"[red]error:[/red] {e}")
        sys.exit(3)
