"""On-device adaptation: the deployed deblur net G learns the blur of the camera it watches (SPEC, last section).

No ground truth anywhere. With the motion net M frozen (and no discriminator), G takes a few gradient steps on
random crops of recently buffered frames B, minimising NeurMAP's unpaired terms::

    λ_reblur · ℓ_rb(R(Ŝ, sg[m_rel]), B) + λ_sharp · mean((|vn M(Ŝ)| − μ_sharp)²) (+ λ_tv · TV(Ŝ)),
    Ŝ = G(B),  m_rel = vn M(B) − vn M(Ŝ)

Only a small parameter set moves (default: rank-4 LoRA adapters on every convolution, merged back into the
conv weights at the end, so the exported graph and its initializer names are unchanged). A round is
*guarded* on held-out buffered frames, scored before and after: the objective itself, split into reblur
consistency and motion-net sharpness, must drop; NIQE of the held-out outputs must not rise; and a
deblurring probe (the held-out outputs re-blurred with random camera shake must be restored at least as
well as before) must not drop — the objective alone can be lowered by drifting toward the identity when
the motion net underestimates the blur, which the probe catches. Otherwise the round is rolled back to
bit-identical original tensors. A round is skipped before any step when M reads less than ``min_blur_px``
of blur in the held-out frames: then m_rel ≈ 0, R(Ŝ, 0) = Ŝ, and the objective is lowest at Ŝ = B
(``experiments/objective_check.py`` measures this), so steps could only undo deblurring.

Parts (this module orchestrates; the pieces live beside it and are re-exported here)
    :mod:`.adapt_config`   :class:`AdaptConfig` (every knob, with the defaults the bench justifies), devices, lrs
    :mod:`.adapt_buffer`   :class:`FrameBuffer` (bounded ring of recent frames, every k-th held out), crops
    :mod:`.lora`           :class:`LoRAConvs`, the low-rank adapters merged back into the conv weights
    :mod:`.trainable`      :class:`TrainableSet`, the trainable set (lora, bias, last, all)
    :mod:`.adapt_losses`   the unpaired objective and the μ_sharp heuristic
    :mod:`.guard`          the held-out score and :func:`probe_pairs`, the deblurring regression probe
    :class:`Adapter`       one guarded round: score, steps, merge, score, accept or roll back
    :func:`resolve_motion` the motion net: --motion, else the one inside the checkpoint, else the shipped one
    :func:`save_adapted`   accepted weights -> safetensors with provenance (atomic; never over the original)

The online worker that runs rounds beside a stream lives in :mod:`.hotswap` with the swap mechanics.
"""
from __future__ import annotations

import copy
import math
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from neurmap.core.errors import NeurmapError

# the pieces, re-exported: ``from neurmap.edge_runtime.adaptation import X`` keeps working for every old name
from .adapt_buffer import FrameBuffer, _to_uint8_chw, fixed_crops, random_crops  # noqa: F401
from .adapt_config import PARAM_SETS, AdaptConfig, default_lr, pick_device  # noqa: F401
from .adapt_losses import _motion, adaptation_terms, estimate_mu_sharp, resolve_mu, weighted  # noqa: F401
from .guard import Score, measure_probes, probe_if_guarded, probe_pairs, probe_psnr, refusal, score  # noqa: F401
from .lora import _LoRA, LoRAConvs, conv_modules  # noqa: F401
from .trainable import TrainableSet, apply_step, execution_order, run_steps  # noqa: F401


# ------------------------------------------------------------------------------------------------ adapter
@dataclass
class RoundResult:
    accepted: bool
    reason: str
    steps: int
    before: Score
    after: Optional[Score]
    seconds: float
    step_seconds: float
    losses: list = field(default_factory=list)
    trainable: int = 0
    params: str = ""
    lr: float = 0.0
    mu_sharp: list = field(default_factory=list)
    motion: dict = field(default_factory=dict)    # stream path: the motion source, M's own round, fused share

    def as_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("before", "after")}
        d["before"] = self.before.as_dict()
        d["after"] = self.after.as_dict() if self.after else None
        d["losses"] = [round(v, 6) for v in self.losses]
        return d


class Adapter:
    """Guarded adaptation of a deblur model with a frozen motion net.

    ``model`` (a :class:`~neurmap.core.DeblurModel`) is adapted **in place** — pass a copy when it is also
    serving frames (:mod:`.hotswap` does). ``run_round`` leaves it either improved (accepted) or
    bit-identical to how it started (rolled back)."""

    def __init__(self, model: nn.Module, motion: nn.Module, cfg: AdaptConfig | None = None) -> None:
        self.cfg = cfg or AdaptConfig()
        self.device = pick_device(self.cfg.device)
        self.G = model.to(self.device).eval()
        self.M = motion.to(self.device).eval()
        for p in self.M.parameters():
            p.requires_grad_(False)
        for p in self.G.parameters():
            p.requires_grad_(False)
        self.mu: Optional[torch.Tensor] = None       # fixed at the first round (initial model)
        self.rounds = 0
        self.step_g = torch.Generator().manual_seed(self.cfg.seed)
        self.stop_flag = threading.Event()
        self.last_trainable: set[str] = set()

    # -- state helpers --
    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.G.net.state_dict().items()}

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        self.G.net.load_state_dict(state)

    def trainable_names(self) -> set[str]:
        return set(self.last_trainable)

    def run_round(self, train_frames: list[torch.Tensor], held_frames: list[torch.Tensor],
                  steps: Optional[int] = None, on_step: Optional[Callable[[int, float], None]] = None,
                  pause: Optional[Callable[[float], None]] = None,
                  on_merged: Optional[Callable[[nn.Module], None]] = None) -> RoundResult:
        """Score held-out crops, take ``steps`` steps on train crops, merge, score again, accept or roll back."""
        cfg = self.cfg
        steps = cfg.steps if steps is None else int(steps)
        if not train_frames or not held_frames:
            raise NeurmapError("adaptation needs buffered frames to train on and held-out frames to check on "
                               f"(have {len(train_frames)} and {len(held_frames)}); feed more frames")
        t_start = time.perf_counter()
        dev = self.device
        held = fixed_crops(held_frames, cfg.eval_crops, cfg.eval_crop, cfg.seed + self.rounds).to(dev)
        if self.mu is None:
            probe = random_crops(train_frames, max(cfg.batch, 4), cfg.crop, torch.Generator().manual_seed(cfg.seed))
            self.mu = resolve_mu(cfg, self.G, self.M, probe, dev)
        mu = self.mu
        use_niqe = cfg.niqe_guard and cfg.eval_crop >= 96      # NIQE works on whole 96x96 blocks
        before = score(self.G, self.M, held, mu, cfg, with_niqe=use_niqe)
        if before.blur_px < cfg.min_blur_px:
            # R(Ŝ, m_rel) with m_rel ≈ 0 is Ŝ itself: the reblur term would only pull G back toward its input
            # (experiments/objective_check.py), so no step is worth taking — sharp frames, or a motion net that
            # cannot read this camera's blur.
            reason = (f"skipped: the motion net reads {before.blur_px:.2f} px of blur in the held-out frames "
                      f"(min_blur_px {cfg.min_blur_px:g}); either the frames are sharp or the motion net cannot "
                      "see this blur — adapting would pull the model toward its input (use --motion)")
            return RoundResult(False, reason, 0, before, None, time.perf_counter() - t_start, 0.0, [], 0,
                               cfg.params, cfg.lr, [round(v, 5) for v in mu.tolist()])
        probe = probe_if_guarded(self.G, held, cfg, cfg.seed + self.rounds)
        measure_probes(self.G, probe, before)
        original = self.state()                       # rollback point (clones: bit-exact)
        ts = TrainableSet(self.G, cfg)
        self.last_trainable = set(ts.names)
        opt = torch.optim.Adam(ts.params, lr=cfg.lr, betas=(0.9, 0.999))

        def loss_fn() -> torch.Tensor:
            x = random_crops(train_frames, cfg.batch, cfg.crop, self.step_g).to(dev)
            return weighted(adaptation_terms(self.G, self.M, x, mu, with_tv=bool(cfg.w_tv)), cfg)

        try:
            losses, step_times, done, reason = run_steps(steps, loss_fn, opt, ts.params, cfg.grad_clip,
                                                         self.stop_flag, on_step, pause)
        except BaseException:
            ts.discard()
            self.restore(original)
            raise
        step_s = float(np.median(step_times)) if step_times else 0.0   # the steps alone (not callbacks, pauses)
        if reason:
            ts.discard()
            self.restore(original)
            return self._result(False, reason, done, before, None, t_start, step_s, losses, ts, mu)
        ts.finish()                                     # LoRA merged: a plain network again
        if on_merged is not None:                       # e.g. a bench measuring what the guard is about to judge
            on_merged(self.G)
        after = score(self.G, self.M, held, mu, cfg, with_niqe=use_niqe)
        measure_probes(self.G, probe, after)
        ok = math.isfinite(after.total) and after.total < before.total * (1.0 - cfg.min_gain)
        if ok:
            reason = refusal(before, after, cfg)
            ok = not reason
        if ok:
            reason = f"held-out score {before.total:.5f} -> {after.total:.5f}"
            self.rounds += 1
        else:
            reason = reason or f"held-out score not better ({before.total:.5f} -> {after.total:.5f})"
            self.restore(original)
        return self._result(ok, reason, done, before, after, t_start, step_s, losses, ts, mu)

    def _result(self, ok, reason, done, before, after, t_start, step_s, losses, ts, mu) -> RoundResult:
        return RoundResult(ok, reason, done, before, after, time.perf_counter() - t_start, step_s, losses,
                           ts.numel(), self.cfg.params, self.cfg.lr, [round(v, 5) for v in mu.tolist()])


# ------------------------------------------------------------------------------------------------ I/O
def resolve_motion(weights: str | Path | None, motion: str | Path | None = None):
    """(MotionModel, where it came from): ``motion`` if given, else the one in ``weights`` (our checkpoints
    may carry it), else the shipped default; a one-line error naming --motion otherwise."""
    from neurmap.core.checkpoint import load_motion, resolve_weights, shipped_models
    from neurmap.core.errors import CheckpointError

    if motion:
        return load_motion(motion), str(motion)
    if weights is not None:
        try:
            p = resolve_weights(weights)
        except CheckpointError:
            p = None
        if p is not None and p.is_file() and p.suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(str(p), framework="pt") as f:
                if any(k.startswith("motion.") for k in f.keys()):
                    return load_motion(p), f"{p} (carried)"
    if "default" in shipped_models():
        try:
            return load_motion("default"), "default (shipped)"
        except CheckpointError:
            pass
    raise NeurmapError(f"no motion net: {weights} carries none and no shipped default motion net is installed; "
                       "pass one with --motion M (a NeurMAP checkpoint that carries a motion net)")


def default_out(weights: str | Path, source: str | Path | None = None) -> Path:
    """Where accepted weights go when --out is not given: beside a checkpoint file, else in the working dir."""
    p = Path(str(weights))
    stem = p.stem if p.suffix else p.name
    tag = f"_adapted-{Path(str(source)).stem}" if source else "_adapted"
    base = p.parent if p.is_file() else Path.cwd()
    return base / f"{stem}{tag}.safetensors"


def save_adapted(path: str | Path, model: nn.Module, motion: nn.Module | None, provenance: dict,
                 original: str | Path | None = None) -> Path:
    """Accepted weights -> ``path`` atomically (via save_weights) with provenance; refuses the original file."""
    from neurmap.core.checkpoint import save_weights

    path = Path(path)
    if original is not None:
        o = Path(str(original))
        if o.exists() and path.resolve() == o.resolve():
            raise NeurmapError(f"--out {path} is the original weights file; adapted weights never overwrite it — "
                               "choose another path")
        if o.is_dir() and o.resolve() in path.resolve().parents:
            raise NeurmapError(f"--out {path} is inside the original weights folder {o}; choose another path")
    return save_weights(path, model, motion=motion, provenance=provenance)


def clone_model(model: nn.Module) -> nn.Module:
    """A deep copy of a DeblurModel for training beside the one that serves frames."""
    return copy.deepcopy(model)
