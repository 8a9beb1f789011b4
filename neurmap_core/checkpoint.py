"""Weights in and out, safely: our safetensors checkpoints, official DMPHN folders, shipped models.

Our checkpoint is one ``.safetensors`` file: tensors ``deblur.*`` (and ``motion.*`` when it carries the
motion net) plus a small JSON metadata record in the safetensors header (architecture, input range, pad
multiple, provenance), so the file alone says how to use it. Pickle files are read only through
``torch.load(weights_only=True)``: a pickle that holds code is refused, never executed.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError
from .models import MODELS, build_network
from .models.wrapper import DeblurModel, MotionModel, to_channels_last

FORMAT = "neurmap-weights/1"
SHIPPED_DIR = Path(__file__).resolve().parent / "weights"
OFFICIAL_DMPHN_RANGE = "-0.5,0.5"


def shipped_models() -> dict[str, Path]:
    """Names of the weights that ship inside the package (loaded by name, no download)."""
    return {p.stem: p for p in sorted(SHIPPED_DIR.glob("*.safetensors"))}


def atomic_write(path: Path, write: Any) -> Path:
    """Call ``write(tmp_path)`` then rename over ``path``: a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def weights_hash(state: dict[str, torch.Tensor]) -> str:
    """Short content hash of a state dict (names, shapes, values) — travels into exported artifacts."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().to("cpu").contiguous()
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def save_weights(path: str | Path, model: DeblurModel, motion: nn.Module | None = None,
                 provenance: dict | None = None) -> Path:
    """Write G (and optionally the motion net) with its metadata to one safetensors file, atomically."""
    from safetensors.torch import save_file

    tensors = {f"deblur.{k}": v.detach().cpu().contiguous() for k, v in model.net.state_dict().items()}
    meta = {"format": FORMAT, "architecture": model.name, "input_range": model.input_range,
            "pad_multiple": model.pad_multiple, "provenance": provenance or {}}
    if motion is not None:
        net = motion.net if isinstance(motion, MotionModel) else motion
        # the official motion net registers its bottleneck convs twice; store each tensor once
        tensors.update({f"motion.{k}": v.detach().cpu().contiguous()
                        for k, v in net.state_dict(keep_vars=False).items() if ".model." not in k})
        meta["motion_architecture"] = "motion"
    meta["weights_hash"] = weights_hash(model.net.state_dict())
    return atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata={"neurmap": json.dumps(meta)}))


def read_metadata(path: str | Path) -> dict:
    """The JSON metadata of one of our checkpoints, without loading its tensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("neurmap")
    except Exception as e:  # safetensors raises several types for a corrupt header
        raise CheckpointError(f"{path}: not a readable safetensors file ({e}); re-export or re-download it") from None
    if raw is None:
        raise CheckpointError(f"{path}: safetensors file without NeurMAP metadata; save it with neurmap.core.save_weights")
    return json.loads(raw)


def safe_torch_load(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a pickle checkpoint as plain tensors only; anything executable is refused, never run."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused — not a plain state dict: a corrupt file, or a pickle that "
                              f"would run code to load ({str(e).splitlines()[0][:80]}); "
                              "convert it to safetensors where it came from") from None
    except (RuntimeError, EOFError, OSError) as e:
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]     # an empty file's EOFError is ""
        raise CheckpointError(f"{path}: unreadable, empty or truncated checkpoint ({why}); re-download it or "
                              "save it again with neurmap.core.save_weights") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_state_strict(net: nn.Module, state: dict[str, torch.Tensor], arch: str, source: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line message naming expected vs found keys."""
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:3]) + (" …" if len(keys) > 3 else "")
        parts = []
        if missing:
            parts.append(f"{len(missing)} expected keys missing ({few(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys found ({few(unexpected)})")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} shape mismatches (e.g. {k}: expected {tuple(own[k].shape)}, found {tuple(state[k].shape)})")
        hint = detect_architecture(state)
        raise CheckpointError(f"{source} does not fit architecture {arch!r}: " + "; ".join(parts)
                              + (f" — it looks like {hint!r}" if hint and hint != arch else ""))
    net.load_state_dict(state, strict=True)


def detect_architecture(state: dict[str, torch.Tensor]) -> str | None:
    """The registered network whose parameter names and shapes equal those of ``state``."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for name in MODELS:
        with torch.device("meta"):
            net = build_network(name)
        if {k: tuple(v.shape) for k, v in net.state_dict().items()} == shapes:
            return name
    return None


def _load_official_dmphn(folder: Path) -> tuple[DeblurModel, dict]:
    levels = len(list(folder.glob("encoder_lv*.pkl")))
    arch = {3: "dmphn_1_2_4", 4: "dmphn_1_2_4_8"}.get(levels)
    if arch is None:
        raise CheckpointError(f"{folder}: found {levels} encoder_lv*.pkl files; official DMPHN folders hold 3 (1-2-4) or 4 (1-2-4-8)")
    state = {}
    for k in range(1, levels + 1):
        for part in ("encoder", "decoder"):
            f = folder / f"{part}_lv{k}.pkl"
            if not f.exists():
                raise CheckpointError(f"{folder}: missing {f.name}; an official DMPHN folder has encoder_lvK.pkl and decoder_lvK.pkl for K=1..{levels}")
            state.update({f"{part}_lv{k}.{n}": t for n, t in safe_torch_load(f).items()})
    net = build_network(arch)
    load_state_strict(net, state, arch, str(folder))
    meta = {"format": "official-dmphn", "architecture": arch, "input_range": OFFICIAL_DMPHN_RANGE,
            "pad_multiple": net.pad_multiple, "weights_hash": weights_hash(state),
            "provenance": {"source": str(folder), "origin": "official DMPHN per-level weights"}}
    return to_channels_last(DeblurModel(net, OFFICIAL_DMPHN_RANGE, arch).eval()), meta


def resolve_weights(path_or_name: str | Path) -> Path:
    """A path that exists, or a shipped model's file; otherwise a one-line error listing the choices."""
    p = Path(path_or_name)
    if p.exists():
        return p
    shipped = shipped_models()
    if str(path_or_name) in shipped:
        return shipped[str(path_or_name)]
    names = ", ".join(shipped) or "none installed"
    raise CheckpointError(f"weights {str(path_or_name)!r} not found: give a checkpoint file, an official DMPHN "
                          f"folder, or a shipped model name ({names})")


def load_weights(path_or_name: str | Path, arch: str | None = None) -> tuple[DeblurModel, dict]:
    """Load a deblur net from our checkpoint, an official DMPHN folder, a state-dict pickle or a shipped name.

    Returns ``(model, metadata)``; the model takes and returns [0, 1] images whatever range its weights use.
    """
    p = resolve_weights(path_or_name)
    if p.is_dir():
        return _load_official_dmphn(p)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        meta = read_metadata(p)
        arch = meta["architecture"]
        try:
            tensors = load_file(str(p))
        except Exception as e:
            raise CheckpointError(f"{p}: corrupt or truncated safetensors file ({e})") from None
        state = {k[len("deblur."):]: v for k, v in tensors.items() if k.startswith("deblur.")}
        net = build_network(arch)
        load_state_strict(net, state, arch, str(p))
        meta.setdefault("provenance", {}).setdefault("source", str(p))
        return to_channels_last(DeblurModel(net, meta["input_range"], arch).eval()), meta
    state = safe_torch_load(p)
    found = arch or detect_architecture(state)
    if found is None:
        raise CheckpointError(f"{p}: its keys match no known deblur net (first keys: {', '.join(list(state)[:3])}); "
                              f"pass the architecture explicitly (one of {', '.join(k for k, s in MODELS.items() if s.role == 'deblur')})")
    net = build_network(found)
    load_state_strict(net, state, found, str(p))
    rng = OFFICIAL_DMPHN_RANGE if found.startswith("dmphn") else "0,1"
    meta = {"format": "state-dict", "architecture": found, "input_range": rng, "pad_multiple": net.pad_multiple,
            "weights_hash": weights_hash(state), "provenance": {"source": str(p)}}
    return to_channels_last(DeblurModel(net, rng, found).eval()), meta


def load_motion(path_or_name: str | Path) -> MotionModel:
    """The motion net stored in one of our checkpoints (or a bare motion-net state dict)."""
    p = resolve_weights(path_or_name)
    net = build_network("motion")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(p))
        state = {k[len("motion."):]: v for k, v in tensors.items() if k.startswith("motion.")}
        if not state:
            raise CheckpointError(f"{p} carries no motion net; pass one with --motion")
        # restore the bottlenecks' second names (the same tensors, registered twice officially)
        for k in list(state):
            if ".conv1." in k or ".conv2." in k:
                idx = "0" if ".conv1." in k else "2"
                state[k.replace(".conv1.", f".model.{idx}.").replace(".conv2.", f".model.{idx}.")] = state[k]
    else:
        state = safe_torch_load(p)
    state.setdefault("prior_scale", torch.zeros(()))     # saved before the blur prior (or official): prior off
    load_state_strict(net, state, "motion", str(p))
    return to_channels_last(MotionModel(net).eval())
