"""Imports flow one way (../shared/DESIGN.md): core <- calibration <- export <- edge_runtime <- the face (CLI, demo).

Every module's imports are read with ``ast`` (lazy imports inside functions included, since they run too) and
each one is checked against the direction DESIGN.md draws; a new import that runs back fails here, naming the
file, the line and the rule.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: folder -> (part, dotted package it installs as); see pyproject.toml [tool.setuptools.package-dir]
PARTS = {"neurmap_core": ("core", "neurmap.core"), "calibration": ("calibration", "neurmap.calibration"),
         "export": ("export", "neurmap.export"), "edge_runtime": ("edge_runtime", "neurmap.edge_runtime"),
         "neurmap": ("face", "neurmap")}
#: part -> the parts it may import ("root" is neurmap/__init__.py: the version string, a leaf)
ALLOWED = {
    "root": set(),
    "core": {"core", "root"},
    "calibration": {"calibration", "core", "root"},
    "export": {"export", "calibration", "core", "root"},
    "edge_runtime": {"edge_runtime", "export", "calibration", "core", "root"},
    "face": {"face", "edge_runtime", "export", "calibration", "core", "root"},
}
_SUBPACKAGES = {"core": "core", "calibration": "calibration", "export": "export", "edge_runtime": "edge_runtime"}
_FOLDERS = {"neurmap_core": "core", "calibration": "calibration", "export": "export", "edge_runtime": "edge_runtime"}


def part_of(dotted: str) -> str | None:
    """The part a dotted module name belongs to, or None for third-party / standard-library modules."""
    bits = dotted.split(".")
    if bits[0] in _FOLDERS:                     # the folder name itself (works from the repo root only)
        return _FOLDERS[bits[0]]
    if bits[0] != "neurmap":
        return None
    if len(bits) == 1:
        return "root"
    return _SUBPACKAGES.get(bits[1], "face")


def module_name(path: Path) -> tuple[str, str]:
    """(part, dotted module name) of a source file under the repo."""
    rel = path.relative_to(REPO)
    part, pkg = PARTS[rel.parts[0]]
    mods = list(rel.with_suffix("").parts[1:])
    if rel.parts[0] == "neurmap" and mods == ["__init__"]:
        part = "root"
    return part, ".".join([pkg] + mods)


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute dotted name) for every import in ``source``; relative imports resolved from ``module``.

    ``from neurmap import core`` names the subpackage, so the imported names are joined on when the base is
    the bare ``neurmap`` package."""
    out: list[tuple[int, str]] = []
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package[:len(package) - node.level + 1]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base == "neurmap":
                out += [(node.lineno, f"neurmap.{a.name}") if a.name in _SUBPACKAGES or a.name in ("cli", "demo")
                        else (node.lineno, "neurmap") for a in node.names]
            else:
                out.append((node.lineno, base))
    return out


def violations(path: Path, source: str | None = None) -> list[str]:
    part, module = module_name(path)
    source = path.read_text() if source is None else source
    bad = []
    for line, name in imported_modules(source, module, path.name == "__init__.py"):
        target = part_of(name)
        if target is not None and target not in ALLOWED[part]:
            bad.append(f"{path.relative_to(REPO)}:{line}: {part} imports {name} ({target}); {part} may import "
                       f"only {', '.join(sorted(ALLOWED[part]))}")
    return bad


def _sources() -> list[Path]:
    return sorted(p for folder in PARTS for p in (REPO / folder).rglob("*.py"))


def test_every_import_flows_the_allowed_way():
    files = _sources()
    assert len(files) > 40 and any(p.parent.name == "edge_runtime" for p in files)   # the walk found the tree
    bad = [v for p in files for v in violations(p)]
    assert not bad, "imports that run back against ../shared/DESIGN.md:\n" + "\n".join(bad)


def test_checker_catches_imports_that_run_back():
    """The checker itself: each kind of backward import is caught, the allowed ones pass."""
    core = REPO / "neurmap_core" / "evaluate.py"
    assert violations(core, "def f():\n    from neurmap.export.onnx_export import export_onnx\n")
    assert violations(core, "from neurmap import edge_runtime\n")
    assert violations(core, "from neurmap.demo import run_demo\n")
    assert not violations(core, "from .metrics import psnr\nfrom neurmap.core.errors import NeurmapError\nimport torch\n")
    calib = REPO / "calibration" / "onnx_torch.py"
    assert violations(calib, "from neurmap.export.onnx_export import save_onnx_atomic\n")
    assert violations(calib, "from ..export import onnx_export\n")          # relative, out of the package
    assert not violations(calib, "from .reader import FrameReader\nfrom neurmap.core import load_weights\n")
    exp = REPO / "export" / "targets.py"
    assert not violations(exp, "from neurmap.calibration.qat import qat_finetune\nfrom neurmap import __version__\n")
    assert violations(exp, "from neurmap.edge_runtime.pipeline import Pipeline\n")
    assert violations(exp, "import neurmap.cli\n")
    sub = REPO / "edge_runtime" / "backends" / "onnxruntime.py"
    assert not violations(sub, "from ..hotswap import x\nfrom neurmap.export.trt import y\n")
    assert violations(sub, "from neurmap.cli import app\n")
