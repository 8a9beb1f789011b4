"""The knobs of one on-device adaptation round (:class:`AdaptConfig`), the device it runs on, the bench's learning rates.

Kept apart from the round itself so the CLI, the stream path and the bench read one definition of every default.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import torch

from neurmap.core.errors import ConfigError, NeurmapError, from_known_keys

PARAM_SETS = ("lora", "bias", "last", "all")
#: where the stream path's blur motion comes from (see :mod:`.stream_adapt`); the single-image path always uses M
MOTION_SOURCES = ("flow", "m", "fused")


@dataclass
class AdaptConfig:
    """One adaptation round. Defaults: see ``bench/adapt_bench.py`` / ``bench/results/adapt.json``."""

    steps: int = 20
    params: str = "lora"              # "lora", "bias", "last", "all", or a "+"-joined mix ("lora+bias")
    lr: float = 5e-4                  # Adam; per parameter set, see default_lr()
    lora_rank: int = 4
    lora_alpha: float = 4.0           # delta = (alpha / rank) · B·A
    lora_targets: str = ""            # regex on module names ("" = every Conv2d / ConvTranspose2d)
    last_layers: int = 6              # "last": the last N convolutions in execution order
    crop: int = 96                    # training crop side (pixels); multiple of the net's pad multiple
    batch: int = 4
    w_reblur: float = 10.0            # λ_G_reblur (SPEC's real-blur value; synthetic training uses 100)
    w_sharp: float = 50.0             # λ_G_f_sharp (SPEC trains with 0.5 beside a content loss; see the bench)
    w_tv: float = 0.0                 # λ_G_Itv
    mu_sharp: object = "auto"         # float, [dy, dx], or "auto" (see estimate_mu_sharp)
    grad_clip: Optional[float] = 1.0  # gradient-norm clip on the trainable set (None: off)
    eval_crops: int = 8               # held-out crops scored by the guard
    eval_crop: int = 192              # their side (a multiple of 96 keeps NIQE blocks whole)
    min_gain: float = 0.002           # accept only if the held-out score drops by this fraction
    niqe_guard: bool = True           # also require NIQE(held-out outputs) not to rise by > niqe_tol (crops >= 96)
    niqe_tol: float = 0.0
    probe_guard: bool = True          # also require the deblurring regression probe not to drop (see probe_pairs)
    probe_tol_db: float = 0.0
    sharp_guard: bool = False         # also require G not to alter already-sharp images more (see guard.sharp_psnr;
    sharp_tol_db: float = 0.0         # the stream path's guard, on by default there)
    reblur_guard: bool = False        # also require the score's reblur part to drop by min_gain, not only the total
                                      # (the stream path, where the sharp anchor alone can lower the total)
    min_blur_px: float = 1.0          # skip the round when M reads less blur than this in the held-out frames
    seed: int = 0
    device: str = "auto"              # "auto": cuda when available, else cpu
    # stream path only (video / ordered frames, :mod:`.stream_adapt`)
    motion_source: str = "flow"       # "flow" (neighbours' flow), "m" (vn M(B), absolute) or "fused" (M where it
                                      # agrees with flow within fuse_band, else flow)
    fuse_band: float = 2.0            # "fused": M's magnitude within [flow / band, flow · band] counts as agreeing
    m_steps: int = 5                  # Adam steps of M toward the flow-derived blur before G (m / fused only)
    m_lr: float = 1e-4
    flow_points: int = 3              # velocity stencil: 3 (one flow per frame) or 5 (four; reads fast shake better)
    flow_preset: str = "medium"       # DIS preset (ultrafast, fast, medium) and the scale flow is computed at
    flow_scale: float = 1.0
    reblur_space: str = "linear"      # "linear": R averages linear light, as a sensor does; "srgb": on the encoded values
    loss_border: int = 16             # px of each crop's border the reblur loss leaves out (R samples zeros outside)
    w_anchor: float = 0.0             # weight of the sharp anchor: G must leave the crops, shrunk by anchor_scale
    anchor_scale: int = 4             # (their blur with them), as they are (core.losses.sharp_anchor_loss)

    def __post_init__(self) -> None:
        if self.motion_source not in MOTION_SOURCES:
            raise ConfigError(f"--motion-source {self.motion_source!r}: choose {', '.join(MOTION_SOURCES)}")
        if not float(self.fuse_band) > 1.0:
            raise ConfigError(f"fuse_band {self.fuse_band:g} must be > 1 (M within [flow/band, flow·band] agrees)")
        if self.reblur_space not in ("linear", "srgb"):
            raise ConfigError(f"reblur_space {self.reblur_space!r}: choose linear or srgb")
        if int(self.anchor_scale) < 2 or float(self.w_anchor) < 0:
            raise ConfigError(f"anchor_scale {self.anchor_scale} must be >= 2 and w_anchor {self.w_anchor:g} >= 0")
        if int(self.loss_border) < 0:
            raise ConfigError(f"loss_border {self.loss_border} must be >= 0")
        if self.flow_points not in (3, 5):
            raise ConfigError(f"flow_points {self.flow_points}: the velocity stencil takes 3 or 5 frames")
        if int(self.m_steps) < 0:
            raise ConfigError(f"m_steps {self.m_steps} must be >= 0")

    @classmethod
    def from_dict(cls, d: dict) -> "AdaptConfig":
        return from_known_keys(cls, d, "adaptation option(s)")

    def as_dict(self) -> dict:
        return asdict(self)

    def parts(self) -> list[str]:
        parts = [p.strip() for p in str(self.params).split("+") if p.strip()]
        bad = [p for p in parts if p not in PARAM_SETS]
        if not parts or bad:
            raise NeurmapError(f"--params {self.params!r}: choose from {', '.join(PARAM_SETS)} (or join with '+')")
        return parts


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise NeurmapError("adaptation device cuda asked, but this PyTorch has no CUDA device; use cpu")
    return torch.device(name)


def default_lr(params: str) -> float:
    """Learning rates picked in the bench for 20-step rounds (Adam)."""
    parts = set(str(params).split("+"))
    if "all" in parts:
        return 1e-5
    if "last" in parts:
        return 1e-4
    if "bias" in parts and "lora" not in parts:
        return 1e-4
    return 5e-4
