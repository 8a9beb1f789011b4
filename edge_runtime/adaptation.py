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

Parts
    :class:`AdaptConfig`   every knob, with the defaults the bench justifies
    :class:`FrameBuffer`   bounded ring of recent frames (uint8, CPU), every k-th one held out
    :class:`TrainableSet` / :class:`LoRAConvs`   the trainable set (lora, bias, last, all)
    :func:`probe_pairs`    the deblurring regression probe of the guard
    :class:`Adapter`       one guarded round: score, steps, merge, score, accept or roll back
    :func:`resolve_motion` the motion net: --motion, else the one inside the checkpoint, else the shipped one
    :func:`save_adapted`   accepted weights -> safetensors with provenance (atomic; never over the original)

The online worker that runs rounds beside a stream lives in :mod:`.hotswap` with the swap mechanics.
"""
from __future__ import annotations

import copy
import math
import re
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from neurmap.core.errors import NeurmapError, from_known_keys

PARAM_SETS = ("lora", "bias", "last", "all")


# ------------------------------------------------------------------------------------------------ config
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
    min_blur_px: float = 1.0          # skip the round when M reads less blur than this in the held-out frames
    seed: int = 0
    device: str = "auto"              # "auto": cuda when available, else cpu

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


# ------------------------------------------------------------------------------------------------ buffer
def _to_uint8_chw(frame) -> torch.Tensor:
    """(3,H,W) float [0,1] tensor/array, or (1,3,H,W), -> uint8 (3,H,W) CPU tensor (a copy)."""
    if isinstance(frame, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(frame))
    else:
        t = frame.detach().to("cpu")
    if t.dim() == 4:
        t = t[0]
    if t.dim() != 3 or t.shape[0] != 3:
        raise NeurmapError(f"adaptation buffer takes (3,H,W) RGB frames, got shape {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        return t.clone()
    return (t.float().clamp(0, 1) * 255 + 0.5).to(torch.uint8)


class FrameBuffer:
    """The last ``capacity`` frames (uint8, CPU: 2.7 MB per 720p frame); every ``holdout_every``-th is held out.

    Held-out frames are never trained on: the guard scores on them. Thread-safe (the stream adds, the
    adaptation worker reads snapshots)."""

    def __init__(self, capacity: int = 24, holdout_every: int = 4) -> None:
        if capacity < 2 or holdout_every < 2:
            raise NeurmapError("the adaptation buffer needs capacity >= 2 and holdout_every >= 2")
        n_hold = max(1, capacity // holdout_every)
        self.train: deque = deque(maxlen=capacity - n_hold)
        self.held: deque = deque(maxlen=n_hold)
        self.holdout_every = holdout_every
        self.seen = 0
        self.lock = threading.Lock()

    def add(self, frame) -> None:
        t = _to_uint8_chw(frame)
        with self.lock:
            (self.held if self.seen % self.holdout_every == self.holdout_every - 1 else self.train).append(t)
            self.seen += 1

    def extend(self, frames: Iterable) -> "FrameBuffer":
        for f in frames:
            self.add(f)
        return self

    def snapshot(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        with self.lock:
            return list(self.train), list(self.held)

    def __len__(self) -> int:
        return len(self.train) + len(self.held)


def random_crops(frames: list[torch.Tensor], n: int, size: int, g: torch.Generator, flip: bool = True) -> torch.Tensor:
    """``n`` random size×size crops (float [0,1], (n,3,s,s)) from uint8 frames; frames smaller than ``size``
    are reflect/replicate-padded up first."""
    out = []
    for _ in range(n):
        f = frames[int(torch.randint(len(frames), (1,), generator=g))]
        h, w = f.shape[-2:]
        x = f.float() / 255
        if h < size or w < size:
            ph, pw = max(0, size - h), max(0, size - w)
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x[None], (0, pw, 0, ph), mode=mode)[0]
            h, w = x.shape[-2:]
        t = int(torch.randint(0, h - size + 1, (1,), generator=g))
        l = int(torch.randint(0, w - size + 1, (1,), generator=g))
        c = x[:, t:t + size, l:l + size]
        if flip and bool(torch.randint(2, (1,), generator=g)):
            c = c.flip(-1)
        out.append(c)
    return torch.stack(out)


def fixed_crops(frames: list[torch.Tensor], n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Deterministic held-out crops: ``n`` spread over the frames (same frames + seed -> same crops)."""
    g = torch.Generator().manual_seed(seed + 7919)
    per = [frames[i % len(frames)] for i in range(n)]
    return torch.cat([random_crops([f], 1, size, g, flip=False) for f in per])


# ------------------------------------------------------------------------------------------------ LoRA
def conv_modules(net: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


class _LoRA(nn.Module):
    """delta W = (alpha/r) · (B @ A) reshaped to the conv weight; B starts at zero (no change at step 0)."""

    def __init__(self, weight: torch.Tensor, rank: int, alpha: float, g: torch.Generator) -> None:
        super().__init__()
        rows, cols = weight.shape[0], int(np.prod(weight.shape[1:]))
        r = max(1, min(rank, rows, cols))
        a = torch.randn(r, cols, generator=g) / math.sqrt(cols)
        self.A = nn.Parameter(a.to(weight.device, weight.dtype))
        self.B = nn.Parameter(torch.zeros(rows, r, device=weight.device, dtype=weight.dtype))
        self.scale = float(alpha) / r
        self.shape = tuple(weight.shape)

    def delta(self) -> torch.Tensor:
        return (self.B @ self.A).view(self.shape) * self.scale


def _effective_weight(conv: nn.Module, lora: _LoRA) -> torch.Tensor:
    # the one expression both the adapter form and merge() use: identical bits either way
    return conv.weight + lora.delta()


def _lora_forward(conv: nn.Module, lora: _LoRA) -> Callable:
    if isinstance(conv, nn.Conv2d):
        def fwd(x: torch.Tensor) -> torch.Tensor:
            return conv._conv_forward(x, _effective_weight(conv, lora), conv.bias)
    else:
        def fwd(x: torch.Tensor, output_size=None) -> torch.Tensor:
            op = conv._output_padding(x, output_size, list(conv.stride), list(conv.padding),
                                      list(conv.kernel_size), 2, list(conv.dilation))
            return F.conv_transpose2d(x, _effective_weight(conv, lora), conv.bias, conv.stride, conv.padding,
                                      op, conv.groups, conv.dilation)
    return fwd


class LoRAConvs:
    """Low-rank adapters on convolutions of ``net`` (its state_dict keys never change).

    While attached, each targeted conv computes with ``W + ΔW``; :meth:`merge` writes ``W + ΔW`` into the
    conv weights and detaches, so the network is plain again (same graph, same names, bit-identical
    outputs to the adapter form); :meth:`remove` detaches without merging.
    """

    def __init__(self, net: nn.Module, rank: int = 4, alpha: float = 4.0, targets: str = "",
                 seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        pat = re.compile(targets) if targets else None
        self.adapters: dict[str, tuple[nn.Module, _LoRA]] = {}
        for name, m in conv_modules(net):
            if pat is not None and not pat.search(name):
                continue
            lora = _LoRA(m.weight.detach(), rank, alpha, g)
            m.forward = _lora_forward(m, lora)      # instance attribute shadows the class forward
            self.adapters[name] = (m, lora)
        if not self.adapters:
            raise NeurmapError(f"LoRA targets {targets!r} match no convolution of this network")

    def parameters(self) -> list[nn.Parameter]:
        return [p for _, l in self.adapters.values() for p in (l.A, l.B)]

    def weight_names(self) -> set[str]:
        return {f"{n}.weight" for n in self.adapters}

    def numel(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def merge(self) -> None:
        for m, lora in self.adapters.values():
            w = _effective_weight(m, lora)
            m.weight.copy_(w)
        self.remove()

    def remove(self) -> None:
        for m, _ in self.adapters.values():
            if "forward" in m.__dict__:
                del m.forward
        self.adapters = {}


def execution_order(net: nn.Module, sample: torch.Tensor) -> list[str]:
    """Names of the convolutions in the order a forward runs them (first call of each)."""
    order: list[str] = []
    hooks = []
    for name, m in conv_modules(net):
        hooks.append(m.register_forward_hook(lambda mod, i, o, n=name: order.append(n) if n not in order else None))
    try:
        with torch.no_grad():
            net(sample)
    finally:
        for h in hooks:
            h.remove()
    return order


class TrainableSet:
    """The parameters an adaptation round may change, set up on ``model`` (a DeblurModel)."""

    def __init__(self, model: nn.Module, cfg: AdaptConfig) -> None:
        net = model.net if hasattr(model, "net") else model
        self.net = net
        self.lora: Optional[LoRAConvs] = None
        self.params: list[nn.Parameter] = []
        self.names: set[str] = set()            # state_dict keys that may change
        named = dict(net.named_parameters())
        for part in cfg.parts():
            if part == "all":
                self.names |= set(named)
            elif part == "bias":
                self.names |= {n for n in named if n.endswith(".bias")}
            elif part == "last":
                m = int(getattr(model, "pad_multiple", 8))
                sample = torch.zeros(1, 3, 4 * m, 4 * m, device=next(net.parameters()).device)
                order = execution_order(net, sample)
                for conv in order[-max(1, cfg.last_layers):]:
                    self.names |= {n for n in named if n.startswith(conv + ".")}
            elif part == "lora":
                self.lora = LoRAConvs(net, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets, cfg.seed)
        for p in net.parameters():
            p.requires_grad_(False)
        for n in sorted(self.names):
            named[n].requires_grad_(True)
            self.params.append(named[n])
        if self.lora is not None:
            self.params += self.lora.parameters()
            self.names |= self.lora.weight_names()

    def numel(self) -> int:
        return sum(p.numel() for p in self.params)

    def finish(self) -> None:
        """Merge adapters into the weights and make every parameter frozen again."""
        self._end(merge=True)

    def discard(self) -> None:
        """Drop the adapters (weights as before them) and freeze every parameter again."""
        self._end(merge=False)

    def _end(self, merge: bool) -> None:
        if self.lora is not None:
            self.lora.merge() if merge else self.lora.remove()
            self.lora = None
        for p in self.net.parameters():
            p.requires_grad_(False)


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


# ------------------------------------------------------------------------------------------------ losses
def _motion(M: nn.Module, x: torch.Tensor) -> torch.Tensor:
    from neurmap.core.reblur import canonical_motion
    return canonical_motion(M(x).float())


def adaptation_terms(G: nn.Module, M: nn.Module, blurry: torch.Tensor, mu_sharp: torch.Tensor,
                     with_tv: bool = False) -> dict[str, torch.Tensor]:
    """SPEC's unpaired G terms on ``blurry`` crops (M frozen, m_rel constant). Differentiable in G."""
    from neurmap.core import losses as L
    from neurmap.core.reblur import reblur

    s_hat = G(blurry).float()
    if not torch.isfinite(s_hat.detach()).all():  # a diverged G: report an infinite loss, never crash M's checks
        inf = s_hat.new_tensor(float("inf"))
        return {"reblur": inf, "sharp": inf, "tv": inf, "_s_hat": s_hat, "_blur_px": inf}
    with torch.no_grad():
        m_b = _motion(M, blurry)
    m_f = _motion(M, s_hat)                      # grads reach Ŝ through the frozen M
    m_rel = (m_b - m_f).detach()
    out = {"reblur": L.reblur_loss(reblur(s_hat, m_rel), blurry),
           "sharp": L.sharpness_prior_loss(m_f, mu_sharp),
           "_blur_px": 20.0 * m_b.abs().mean()}     # the blur M reads in the input, in pixels
    if with_tv:
        out["tv"] = L.total_variation(s_hat)
    out["_s_hat"] = s_hat
    return out


def weighted(terms: dict, cfg: AdaptConfig) -> torch.Tensor:
    total = cfg.w_reblur * terms["reblur"] + cfg.w_sharp * terms["sharp"]
    if cfg.w_tv and "tv" in terms:
        total = total + cfg.w_tv * terms["tv"]
    return total


@torch.no_grad()
def estimate_mu_sharp(G: nn.Module, M: nn.Module, crops: torch.Tensor, quantile: float = 0.1,
                      chunk: int = 4) -> torch.Tensor:
    """μ_sharp for "auto": per channel, the ``quantile`` of |vn M(G₀(B))| over the crops' pixels.

    That is the residual motion M reports where the *initial* model already restored best: M's floor on
    this camera's images (its noise, texture, compression), which real sharp images of the camera would
    show too. Pushing the rest of the output toward that floor asks for sharper output without asking M for
    a zero it never gives on real frames (SPEC trains μ_sharp from sharp images, which a deployed camera
    does not have)."""
    ms = []
    for i in range(0, crops.shape[0], chunk):
        ms.append(_motion(M, G(crops[i:i + chunk]).float()).abs())
    m = torch.cat(ms).transpose(0, 1).flatten(1)          # (2, N·H·W)
    k = max(1, int(quantile * m.shape[1]))
    return m.kthvalue(k, dim=1).values


def resolve_mu(cfg: AdaptConfig, G, M, crops: torch.Tensor, device) -> torch.Tensor:
    mu = cfg.mu_sharp
    if isinstance(mu, str):
        if mu != "auto":
            try:
                mu = [float(v) for v in mu.split(",")]
            except ValueError:
                raise NeurmapError(f"mu_sharp {cfg.mu_sharp!r}: give 'auto', a number or 'dy,dx'") from None
        else:
            return estimate_mu_sharp(G, M, crops.to(device)).to(device)
    t = torch.as_tensor(mu, dtype=torch.float32, device=device).flatten()
    return t.expand(2).clone() if t.numel() == 1 else t


# ------------------------------------------------------------------------------------------------ guard
@dataclass
class Score:
    total: float
    reblur: float
    sharp: float
    niqe: Optional[float] = None
    probe_psnr: Optional[float] = None
    blur_px: Optional[float] = None     # mean |motion| M reads in the (blurry) held-out crops

    def as_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@torch.no_grad()
def score(G: nn.Module, M: nn.Module, crops: torch.Tensor, mu: torch.Tensor, cfg: AdaptConfig,
          chunk: int = 2, with_niqe: bool = False) -> Score:
    """Held-out score (lower is better): the adaptation objective on fixed crops, by component; NIQE of the
    outputs laid side by side (crops of 96·k keep NIQE's blocks whole) when asked."""
    rb = sh = tv = blur = 0.0
    outs = []
    n = crops.shape[0]
    for i in range(0, n, chunk):
        x = crops[i:i + chunk]
        t = adaptation_terms(G, M, x, mu, with_tv=bool(cfg.w_tv))
        k = x.shape[0] / n
        rb += k * float(t["reblur"])
        sh += k * float(t["sharp"])
        tv += k * float(t.get("tv", 0.0))
        blur += k * float(t["_blur_px"])
        if with_niqe:
            outs.append(t["_s_hat"].clamp(0, 1).cpu())
    total = cfg.w_reblur * rb + cfg.w_sharp * sh + cfg.w_tv * tv
    nq = None
    if with_niqe:
        from neurmap.core.metrics import niqe
        mosaic = torch.cat(list(torch.cat(outs)), dim=-1)     # (3, h, n·w)
        nq = float(niqe(mosaic))
    return Score(total, rb, sh, nq, blur_px=blur)


@torch.no_grad()
def probe_pairs(G: nn.Module, held: torch.Tensor, seed: int = 0, max_px: float = 20.0,
                chunk: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """A no-ground-truth regression test of deblurring on this camera's content.

    Targets: the *current* model's outputs on the held-out crops (the best sharp estimate there is);
    inputs: those targets blurred with seeded random camera-shake fields (``random_motion_field``, up to
    ``max_px``). An update that makes G lean toward the identity — the degenerate solution a weak motion
    net lets the reblur term reach — or that stops deblurring in general, loses PSNR here. It checks that
    nothing was forgotten; it does not decide what improved (the unsupervised score and NIQE do)."""
    from neurmap.core.data import kernel_blur, random_motion_field

    target = torch.cat([G(held[i:i + chunk]).float().clamp(0, 1) for i in range(0, held.shape[0], chunk)])
    g = torch.Generator().manual_seed(seed + 104729)
    h, w = target.shape[-2:]
    m = torch.stack([random_motion_field(h, w, generator=g, max_px=max_px) for _ in range(target.shape[0])])
    blurry = kernel_blur(target, m.to(target.device), border="replicate").clamp(0, 1)
    return blurry, target


@torch.no_grad()
def probe_psnr(G: nn.Module, pairs: tuple[torch.Tensor, torch.Tensor], chunk: int = 2) -> float:
    from neurmap.core.metrics import psnr_per_image

    blurry, target = pairs
    vals = [psnr_per_image(G(blurry[i:i + chunk]).float(), target[i:i + chunk]) for i in range(0, len(blurry), chunk)]
    return float(torch.cat(vals).mean())


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
        probe = probe_pairs(self.G, held, cfg.seed + self.rounds) if cfg.probe_guard else None
        if probe is not None:
            before.probe_psnr = probe_psnr(self.G, probe)
        original = self.state()                       # rollback point (clones: bit-exact)
        ts = TrainableSet(self.G, cfg)
        self.last_trainable = set(ts.names)
        opt = torch.optim.Adam(ts.params, lr=cfg.lr, betas=(0.9, 0.999))
        losses: list[float] = []
        step_times: list[float] = []
        reason = ""
        done = 0
        try:
            for i in range(steps):
                if self.stop_flag.is_set():
                    reason = "stopped"
                    break
                t0 = time.perf_counter()
                x = random_crops(train_frames, cfg.batch, cfg.crop, self.step_g).to(dev)
                terms = adaptation_terms(self.G, self.M, x, mu, with_tv=bool(cfg.w_tv))
                loss = weighted(terms, cfg)
                if not torch.isfinite(loss):
                    reason = f"non-finite loss at step {i + 1}"
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    nn.utils.clip_grad_norm_(ts.params, cfg.grad_clip)
                opt.step()
                step_times.append(time.perf_counter() - t0)
                done += 1
                losses.append(float(loss.detach()))
                if on_step is not None:
                    on_step(i + 1, losses[-1])
                if pause is not None:
                    pause(time.perf_counter() - t0)
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
        if probe is not None and math.isfinite(after.total):
            after.probe_psnr = probe_psnr(self.G, probe)
        ok = math.isfinite(after.total) and after.total < before.total * (1.0 - cfg.min_gain)
        if ok and probe is not None and after.probe_psnr < before.probe_psnr - cfg.probe_tol_db:
            ok = False
            reason = f"deblurring probe dropped {before.probe_psnr:.2f} -> {after.probe_psnr:.2f} dB"
        if ok and use_niqe and before.niqe is not None and after.niqe is not None:
            ok = after.niqe <= before.niqe + cfg.niqe_tol
            if not ok:
                reason = f"NIQE rose {before.niqe:.3f} -> {after.niqe:.3f}"
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
