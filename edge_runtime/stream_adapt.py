"""Adaptation on streams: neighbouring frames give the blur motion, so G learns this camera's blur.

A single image only has the motion net's reading M(B); with the *relative* motion SPEC uses,
m_rel = vn M(B) − vn M(Ŝ), the identity Ŝ = B makes m_rel = 0 and R(B, 0) = B, so the identity is always a
minimum of the reblur term and a weak M lets G drift back toward its input (``edge_runtime/adaptation.py``
guards that path). In a video the blur of frame t is known without M: m_t = e · v_t / 2 / 20, v_t the
velocity from its neighbours' flow (:func:`neurmap.core.flow_motion.velocity`, the 3- or 5-point stencil:
``flow_points``), e the exposure fraction (from the user, else
:func:`neurmap.core.exposure.estimate_exposure`). This path uses *absolute* motion m — a map that does not
depend on the estimate X being scored — so R(X, m) with m ≠ 0 is blurrier than X, ℓ_rb(R(B, m), B) > 0, and
the objective is lowest near the sharp frame, not at the identity (:func:`objective_at` measures it at B,
G(B) and the truth S, under each motion). It minimises

    ℓ_rb(R(G(B), sg[m]), B),   m from ``motion_source``:
      flow   the flow-derived blur m_flow (the video's evidence; under-reads shake faster than the frame rate),
      m      M's absolute reading vn M(B) (no relative subtraction, so the identity is not a minimum),
      fused  per pixel M's reading where its length agrees with the flow's within ``fuse_band``, else flow
             (:func:`fuse_motion` says why),

with R averaging linear light (``neurmap.core.reblur.reblur_in``: as a sensor does; in sRGB the known blur itself
did not gain) and away from each crop's border (R samples zeros outside it), plus ``w_anchor`` times the sharp anchor
(``neurmap.core.losses.sharp_anchor_loss``: the crops shrunk 4×, their blur with them, must pass through G
unchanged — the prior the reblur term lacks: without it rounds sharpen beyond the blur), on random crops of the
buffered frames, with the same trainable sets and rollback as the single-image path; the guard's score is the
same objective on held-out frames, beside a sharp probe (G must not alter already-sharp images more than before;
the single-image path's blurred probe and NIQE rejected the rounds that gained: see ``STREAM_DEFAULTS``).
With m / fused, M is adapted to this camera first (it is small): ``m_steps`` Adam steps of the sign-invariant L1
to m_flow, kept only if the held-out frames agree better, and rolled back with G when the round is. Flow runs
in a worker thread (:class:`FlowWorker`; OpenCV releases the GIL), never on the inference thread, and its cost
is recorded; :class:`StreamBuffer` feeds ``neurmap run --adapt`` from the capture thread.
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from neurmap.core.errors import NeurmapError
from neurmap.core.flow_motion import FlowEstimator, check_exposure, velocity, velocity_to_motion
from neurmap.core.losses import anchor_shrink, reblur_objective, sharp_anchor_loss, sign_invariant_l1

from .adaptation import AdaptConfig, FrameBuffer, RoundResult, Score, TrainableSet, _to_uint8_chw, pick_device
from .guard import measure_probes, probe_if_guarded, refusal
from .trainable import run_steps

#: the stream path's guard: the held-out reblur score must fall (``min_gain``) and G must not alter already-sharp
#: images more than before (:func:`~.guard.sharp_psnr`, tolerance ``sharp_tol_db``). ``bench/stream_guard.py``
#: replays each rule on 24 camera-shake clips of *training-split* photos with every round kept (mean gain over all
#: clips, a rejected round counting 0): the single-image path's blurred probe + NIQE accepted 2 rounds (+0.005 dB:
#: its targets are the current, still blurry outputs, so the probe fell in the rounds that gained, by up to 0.4 dB);
#: the score alone 18 (+0.254 dB, 4 losing rounds); score + sharp probe 9 (+0.229 dB, 1 losing round, -0.19 dB);
#: no guard 24 (+0.177 dB, 9 losing, worst -0.58). The rounds that lost most had G alter sharp images (sharp
#: probe -2 to -3 dB): what over-read flow teaches.
#:
#: the stream path's defaults (the issue's check: 20 plain Adam steps, all weights at 5e-5; crops: below). Velocity
#: from the five-point stencil with DIS "fast" at half scale: on camera-shake clips its blur is 10-30 % closer to
#: the known one than the central difference's (with each one's estimated exposure; ``bench/adapt_stream.py``), as
#: close at half scale as at full; at 640×360, with the stencil combined at half scale and upsampled once, its 4
#: flows take 7.3 ms, 12 % of the default's INT8 inference (``bench/flow_cost.py``: error 0.27 of the known blur,
#: the central difference's 0.41; "medium" 0.27 at 53 %, "ultrafast" 0.28 at 9 %)
#: The sharp anchor (``w_anchor``, ``sharp_anchor_loss``), chosen on 16 training-split clips (stream_guard's set,
#: every guard off, 20 steps): mean gain after the window +0.25 dB without it (worst -1.28, 4 losing rounds),
#: +0.36 with w_anchor 10 (worst -0.26); at lr 2e-4 +0.41 (worst -0.58) and with w_anchor 3 +0.42 (worst -1.51).
#: With the anchor the sharp guard keeps 15 of the 16 rounds (+0.34 dB); adding the blurred probe keeps 3 (+0.05).
#: Then the reblur term's weight against the anchor's 10 (Adam is scale-free, so it sets the anchor's share):
#: w_reblur 10 / 30 / 100 / 300 / 1000 gain +0.36 / +0.44 / +0.48 / +0.45 / +0.37 dB with every round kept and
#: +0.34 / +0.39 / +0.43 / +0.40 / +0.37 behind this guard (score + sharp probe: 15 / 14 / 11 / 9 / 8 kept), whose
#: worst kept round is -0.26 / -0.20 / -0.08 / +0.01 / +0.02 dB: 300 is the least weight at which no kept round
#: lost. Held out, with 4 crops of 96² (bench/results/adapt_stream.json before the crops below), it kept 2 of 8 flow
#: rounds, +0.04 dB, none below the unadapted model (w_reblur 10: 8 kept, +0.17, worst -0.30).
#: ``reblur_guard`` (the reblur part itself must drop, not only the total the anchor can carry) stays off: on those
#: clips it keeps 6 rounds at 5e-5 (+0.27 dB, worst -0.19) and 5 at 2e-4 (+0.45, worst +0.08), but held out
#: (``bench/results/adapt_stream_reblur_guard.json``, lr 2e-4) it kept 3 of 8, -0.055 dB, worst -0.42, and refused
#: the clip that gains +1.35 dB: the reblur part rises in rounds that gain as often as in rounds that lose.
#: Nor does the blurred probe with a tolerance replace the anchor: without it, probe within 0.3 dB, the training clips
#: keep 7 rounds (+0.31 dB, none losing), but held out the sharp guard refuses 7 of 8 (+0.019 dB;
#: ``bench/results/adapt_stream_probe_tol.json``): without the anchor flow rounds alter sharp content.
#: Then the pixels a step: 20 steps of 4 × 96² see a tenth of a 10-frame window; the whole window each step lifts
#: the supervised bound from +0.39 to +0.45 / +0.68 dB at 5e-5 / 2e-4 (``experiments/stream_supervised_bound.py
#: --crop 0``), so a round now takes 8 crops of 192² (``batch``, ``crop``). On the 8 training clips
#: (``experiments/results/stream_anchor_window*.json``, guards off) that alone gains +0.65 dB (median +0.16: one
#: clip +4 dB), but the sharp guard keeps 4 of 8 and held out 1 of 8 (+0.04 dB, ``adapt_stream_window.json``): with
#: more pixels G also alters sharp crops more. A stronger anchor against it, ``w_anchor`` 30, with the sharp probe
#: allowed to fall ``sharp_tol_db`` 1 dB (already-sharp crops at 35-42 dB), keeps 7 of 8 training rounds, +0.69 dB,
#: worst +0.06 (w_anchor 10 with 2 dB: 7, worst +0.02; lr 2e-4 / w_reblur 100 / w_anchor 30: 6, +0.69; w_anchor 100:
#: 7, worst -0.06). Held out (``bench/results/adapt_stream.json``) it keeps 6 of 8 flow rounds, +0.22 dB, none below
#: the unadapted model (96² crops: 2 of 8, +0.04; w_anchor 10 at 2 dB: +0.16 but two at -0.02 / -0.05). The cost:
#: 8× the pixels a step, the same per crop (``cost`` in that JSON).
STREAM_DEFAULTS = {"params": "all", "lr": 5e-5, "w_sharp": 0.0, "min_blur_px": 0.5, "w_anchor": 30.0, "w_reblur": 300.0,
                   "crop": 192, "batch": 8,
                   "sharp_guard": True, "sharp_tol_db": 1.0, "probe_guard": False, "niqe_guard": False,  # the guard
                   "flow_points": 5, "flow_preset": "fast", "flow_scale": 0.5}


@dataclass
class MotionFrame:
    """A buffered frame (uint8 (3,H,W)) with its flow-derived blur motion ((2,H,W), units of 20 px)."""

    frame: torch.Tensor
    motion: torch.Tensor


class FlowWorker:
    """Flow-derived motion off the caller's thread: ``submit(frames, t)`` returns a Future of frame t's
    velocity from its neighbours, ``call(fn, ...)`` runs any job there; ``seconds`` accumulates the flow
    time of every frame (``per_frame()`` its mean: 1 flow per frame with 3 points, 4 with 5)."""

    def __init__(self, scale: float = 1.0, method: str = "dis", preset: str = "medium") -> None:
        FlowEstimator(method, scale, preset)          # a bad setting fails here, in one line, not in the worker
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="neurmap-flow")
        self._local = threading.local()
        self.scale, self.method, self.preset = scale, method, preset
        self.seconds = 0.0
        self.count = 0
        self._lock = threading.Lock()

    def flow(self) -> FlowEstimator:
        """This thread's estimator (OpenCV's DIS object keeps state between calls)."""
        if not hasattr(self._local, "est"):
            self._local.est = FlowEstimator(self.method, self.scale, self.preset)
        return self._local.est

    def velocity(self, frames: Sequence, t: int, points: int = 3) -> np.ndarray:
        """:func:`neurmap.core.flow_motion.velocity` of frame ``t`` of consecutive ``frames``, timed (call it
        in the worker)."""
        t0 = time.perf_counter()
        v = velocity(frames, t, self.flow(), points)
        with self._lock:
            self.seconds += time.perf_counter() - t0
            self.count += 1
        return v

    def submit(self, frames: Sequence, t: int, points: int = 3) -> Future:
        return self._pool.submit(self.velocity, frames, t, points)

    def call(self, fn: Callable, *args) -> Future:
        return self._pool.submit(fn, *args)

    def per_frame(self) -> float:
        return self.seconds / max(self.count, 1)

    def close(self, wait: bool = True) -> None:
        """Stop the worker; ``wait=False`` drops jobs not started yet (the stream has ended)."""
        self._pool.shutdown(wait=wait, cancel_futures=not wait)


def flow_worker(cfg: AdaptConfig) -> FlowWorker:
    """The FlowWorker for a round's settings (``flow_preset``, ``flow_scale``)."""
    return FlowWorker(cfg.flow_scale, preset=cfg.flow_preset)


def motion_frames(frames: Sequence, centres: Sequence[int], exposure: float,
                  worker: Optional[FlowWorker] = None, points: int = 3) -> list[MotionFrame]:
    """:class:`MotionFrame` for each index of ``centres`` in the consecutive ``frames`` (flow in the worker;
    ``points``: the velocity stencil)."""
    own = worker is None
    worker = worker or FlowWorker()
    try:
        futs = [worker.submit(frames, t, points) for t in centres]
        return [MotionFrame(_to_uint8_chw(frames[t]), velocity_to_motion(f.result(), exposure))
                for t, f in zip(centres, futs)]
    finally:
        if own:
            worker.close()


def crops_with_motion(items: Sequence[MotionFrame], n: int, size: int, g: torch.Generator,
                      fixed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` size×size crops of frames and the same crops of their motion ((n,3,s,s), (n,2,s,s) float)."""
    xs, ms = [], []
    for k in range(n):
        it = items[k % len(items)] if fixed else items[int(torch.randint(len(items), (1,), generator=g))]
        h, w = it.frame.shape[-2:]
        s = min(size, h, w)
        t = int(torch.randint(0, h - s + 1, (1,), generator=g))
        l = int(torch.randint(0, w - s + 1, (1,), generator=g))
        xs.append(it.frame[:, t:t + s, l:l + s].float() / 255)
        ms.append(it.motion[:, t:t + s, l:l + s].float())
    return torch.stack(xs), torch.stack(ms)


def fuse_motion(m_net: torch.Tensor, m_flow: torch.Tensor, band: float = 2.0) -> tuple[torch.Tensor, float]:
    """Per pixel: M's reading where its length lies within [|m_flow| / band, |m_flow| · band], else the flow's;
    and the share of pixels that took M's.

    Why this rule: the flow is the video's evidence — it cannot put blur on a frame whose neighbours do not
    move, but its central difference under-reads shake faster than the frame rate and smooths over motion
    edges; M reads the streak inside the frame itself, but an M that does not know this camera misreads it.
    Taking M only where the two agree within a factor lets M correct the flow's length and direction by at
    most that factor and never lets it invent blur where the video shows none (or erase blur it shows). A
    hard choice rather than a confidence-weighted mix: a blur has no sign, so choosing needs no sign
    alignment (mixing m with −m would cancel), and the share that took M is a number the bench reports."""
    a, b = m_net.norm(dim=1, keepdim=True), m_flow.norm(dim=1, keepdim=True)
    agree = (a <= b * band) & (a * band >= b) & (b > 0)
    return torch.where(agree, m_net, m_flow), float(agree.float().mean())


def stream_loss(G: nn.Module, blurry: torch.Tensor, motion: torch.Tensor, space: str = "linear",
                border: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """(ℓ_rb(R(G(B), m), B), G(B)) under an absolute motion ``m`` (a constant)."""
    s_hat = G(blurry).float()
    return reblur_objective(s_hat, motion, blurry, space, border), s_hat


def anchor_scale_for(cfg: AdaptConfig) -> int:
    """The anchor's shrink factor for this round's crops: ``cfg.anchor_scale``, lowered so that the shrunk crops
    keep 8 px (the nets' minimum side); 0 = no anchor (``w_anchor`` 0, or crops under 16 px)."""
    scale = anchor_shrink(min(int(cfg.crop), int(cfg.eval_crop)), cfg.anchor_scale)
    return scale if cfg.w_anchor and scale >= 2 else 0


@torch.no_grad()
def objective_at(blurry: torch.Tensor, motion: torch.Tensor, candidates: dict[str, torch.Tensor],
                 M: Optional[nn.Module] = None, space: str = "linear", border: int = 16) -> dict[str, dict[str, float]]:
    """The reblur objective (as :func:`stream_loss` takes it) at each candidate sharp estimate X (e.g. B, G(B),
    S): under the absolute ``motion`` ℓ_rb(R(X, m), B), and — with a motion net — under M's absolute reading
    ℓ_rb(R(X, vn M(B)), B) (the ``m`` source) and SPEC's relative motion ℓ_rb(R(X, vn M(B) − vn M(X)), B) (in
    sRGB, as SPEC has it), which is 0 at X = B by construction."""
    from neurmap.core.reblur import canonical_motion

    out: dict[str, dict[str, float]] = {}
    m_b = canonical_motion(M(blurry).float()) if M is not None else None
    for name, x in candidates.items():
        x = x.float()
        row = {"absolute_flow": float(reblur_objective(x, motion.float(), blurry, space, border))}
        if M is not None:
            row["absolute_M"] = float(reblur_objective(x, m_b, blurry, space, border))
            m_rel = m_b - canonical_motion(M(x).float())
            row["relative_M"] = float(reblur_objective(x, m_rel, blurry, "srgb", border))
        out[name] = row
    return out


def stream_config(overrides: Optional[dict] = None) -> AdaptConfig:
    """AdaptConfig with the stream path's defaults, then ``overrides`` (same keys as the single-image path).

    Under M's motion (sources m, fused) the blurred probe is on by default too: M under-reads the blur, and
    under too little motion G drifts toward its input, which lowers the reblur score and *raises* the sharp probe
    (two such rounds on held-out clips: score -74 / -90 %, sharp probe +4.4 / +8.5 dB, -0.32 / -1.17 dB) — the
    failure the blurred probe was built for. The flow does not under-read (1.06x the true blur), so it keeps only
    the sharp probe, which the blurred one would overrule in the rounds that gain."""
    o = dict(overrides or {})
    defaults = dict(STREAM_DEFAULTS)
    if o.get("motion_source", AdaptConfig.motion_source) != "flow":
        defaults["probe_guard"] = True
    return AdaptConfig.from_dict({**defaults, **o})


def _net_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.net.state_dict().items()}


class StreamAdapter:
    """Guarded rounds of G (and, for motion sources m / fused, first of M) on :class:`MotionFrame` items.

    ``model`` and ``motion`` are adapted in place (pass copies when they also serve frames). ``run_round``
    leaves both improved on the held-out objective or bit-identical."""

    def __init__(self, model: nn.Module, cfg: AdaptConfig | None = None, motion: nn.Module | None = None) -> None:
        self.cfg = cfg or stream_config()
        self.device = pick_device(self.cfg.device)
        self.G = model.to(self.device).eval()
        for p in self.G.parameters():
            p.requires_grad_(False)
        self.M: Optional[nn.Module] = None
        if self.cfg.motion_source != "flow":
            if motion is None:
                raise NeurmapError(f"--motion-source {self.cfg.motion_source} reads the blur with a motion net; "
                                   "pass one with --motion M (or weights that carry one)")
            self.M = motion.to(self.device).eval()
            for p in self.M.parameters():
                p.requires_grad_(False)
        self.rounds = 0
        self.anchor_scale = anchor_scale_for(self.cfg)
        self.step_g = torch.Generator().manual_seed(self.cfg.seed)
        self.stop_flag = threading.Event()

    def state(self) -> dict[str, torch.Tensor]:
        """G's state dict (what the engine is swapped to)."""
        return _net_state(self.G)

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        self.G.net.load_state_dict(state)

    @torch.no_grad()
    def motion_for(self, x: torch.Tensor, m_flow: torch.Tensor, chunk: int = 2) -> tuple[torch.Tensor, float]:
        """The round's motion for crops ``x`` (a constant), and the share of pixels that took M's reading."""
        src = self.cfg.motion_source
        if src == "flow":
            return m_flow, 0.0
        from neurmap.core.reblur import canonical_motion

        m_net = torch.cat([canonical_motion(self.M(x[i:i + chunk]).float()) for i in range(0, x.shape[0], chunk)])
        if src == "m":
            return m_net, 1.0
        return fuse_motion(m_net, m_flow, self.cfg.fuse_band)

    @torch.no_grad()
    def _held_l1(self, hx: torch.Tensor, hm: torch.Tensor, chunk: int = 2) -> float:
        tot = sum(float(sign_invariant_l1(self.M(hx[i:i + chunk]), hm[i:i + chunk])) * hx[i:i + chunk].shape[0]
                  for i in range(0, hx.shape[0], chunk))
        return tot / hx.shape[0]

    def _adapt_motion(self, train: Sequence[MotionFrame], hx: torch.Tensor, hm: torch.Tensor,
                      pause: Optional[Callable[[float], None]]) -> dict:
        """``m_steps`` Adam steps of M toward the flow-derived blur of the training frames (sign-invariant L1),
        kept only if the held-out frames agree with their flow better: M learns this camera before G trusts
        it. Otherwise M is restored bit-identically."""
        cfg, dev = self.cfg, self.device
        before = self._held_l1(hx, hm)
        original = _net_state(self.M)
        params = list(self.M.net.parameters())
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=cfg.m_lr)

        def loss_fn() -> torch.Tensor:
            x, m = crops_with_motion(train, cfg.batch, cfg.crop, self.step_g)
            return sign_invariant_l1(self.M(x.to(dev)), m.to(dev))

        try:
            _, times, done, reason = run_steps(cfg.m_steps, loss_fn, opt, params, cfg.grad_clip, self.stop_flag,
                                               None, pause)
        except BaseException:
            self.M.net.load_state_dict(original)
            raise
        finally:
            for p in params:
                p.requires_grad_(False)
        after = self._held_l1(hx, hm) if not reason else None
        ok = after is not None and math.isfinite(after) and after < before
        if not ok:
            self.M.net.load_state_dict(original)
        return {"m_steps": done, "m_accepted": ok, "m_step_s": round(float(np.median(times)), 4) if times else 0.0,
                "m_heldout_err_px": [round(20 * before, 4), round(20 * after, 4) if after is not None else None],
                **({"m_reason": reason} if reason else {})}

    @torch.no_grad()
    def score(self, held: tuple[torch.Tensor, torch.Tensor], chunk: int = 2) -> Score:
        """The objective on the held-out crops, and NIQE of their outputs side by side (crops >= 96)."""
        x, m = held
        tot, anchor, outs = 0.0, 0.0, []
        for i in range(0, x.shape[0], chunk):
            loss, s_hat = stream_loss(self.G, x[i:i + chunk], m[i:i + chunk], self.cfg.reblur_space,
                                      self.cfg.loss_border)
            tot += float(loss) * x[i:i + chunk].shape[0]
            if self.anchor_scale:
                anchor += float(sharp_anchor_loss(self.G, x[i:i + chunk], self.anchor_scale)) * x[i:i + chunk].shape[0]
            outs.append(s_hat.clamp(0, 1).cpu())
        tot, anchor = tot / x.shape[0], anchor / x.shape[0]
        nq = None
        if self.cfg.niqe_guard and min(x.shape[-2:]) >= 96:
            from neurmap.core.metrics import niqe
            nq = float(niqe(torch.cat(list(torch.cat(outs)), dim=-1)))
        return Score(self.cfg.w_reblur * tot + self.cfg.w_anchor * anchor, tot, anchor, nq,
                     blur_px=float(m.norm(dim=1).mean() * 20.0))

    def run_round(self, train: Sequence[MotionFrame], held: Sequence[MotionFrame], steps: Optional[int] = None,
                  on_step: Optional[Callable[[int, float], None]] = None,
                  pause: Optional[Callable[[float], None]] = None) -> RoundResult:
        cfg, dev = self.cfg, self.device
        steps = cfg.steps if steps is None else int(steps)
        if not train or not held:
            raise NeurmapError(f"stream adaptation needs frames to train on and held-out frames to check on "
                               f"(have {len(train)} and {len(held)}); feed more frames")
        t_start = time.perf_counter()
        g_eval = torch.Generator().manual_seed(cfg.seed + 7919 + self.rounds)
        hx, hmf = crops_with_motion(held, cfg.eval_crops, cfg.eval_crop, g_eval, fixed=True)
        hx, hmf = hx.to(dev), hmf.to(dev)
        original = self.state()
        m_original = _net_state(self.M) if self.M is not None else None
        info: dict = {"source": cfg.motion_source, "anchor_scale": self.anchor_scale}
        ts: Optional[TrainableSet] = None

        def rollback() -> None:
            if ts is not None:
                ts.discard()
            self.restore(original)
            if m_original is not None:
                self.M.net.load_state_dict(m_original)

        def result(ok: bool, reason: str, done: int, before: Score, after: Optional[Score], step_s: float = 0.0,
                   losses: Optional[list] = None) -> RoundResult:
            return RoundResult(ok, reason, done, before, after, time.perf_counter() - t_start, step_s, losses or [],
                               ts.numel() if ts is not None else 0, cfg.params, cfg.lr, [], info)

        try:
            if self.M is not None and cfg.m_steps > 0:
                info.update(self._adapt_motion(train, hx, hmf, pause))
            hm, info["m_share"] = self.motion_for(hx, hmf)
            info["m_share"] = round(info["m_share"], 4)
            before = self.score((hx, hm))
            if before.blur_px < cfg.min_blur_px:
                rollback()
                return result(False, f"skipped: the {cfg.motion_source} blur of the held-out frames is "
                              f"{before.blur_px:.2f} px (min_blur_px {cfg.min_blur_px:g}): the frames are sharp "
                              "enough already", 0, before, None)
            probe = probe_if_guarded(self.G, hx, cfg, cfg.seed + self.rounds)
            measure_probes(self.G, probe, before)
            ts = TrainableSet(self.G, cfg)
            opt = torch.optim.Adam(ts.params, lr=cfg.lr)

            def loss_fn() -> torch.Tensor:
                x, mf = crops_with_motion(train, cfg.batch, cfg.crop, self.step_g)
                x = x.to(dev)
                m, _ = self.motion_for(x, mf.to(dev))
                loss = cfg.w_reblur * stream_loss(self.G, x, m, cfg.reblur_space, cfg.loss_border)[0]
                if self.anchor_scale:
                    loss = loss + cfg.w_anchor * sharp_anchor_loss(self.G, x, self.anchor_scale)
                return loss

            losses, times, done, reason = run_steps(steps, loss_fn, opt, ts.params, cfg.grad_clip, self.stop_flag,
                                                    on_step, pause)
        except BaseException:
            rollback()
            raise
        step_s = float(np.median(times)) if times else 0.0
        if reason:
            rollback()
            return result(False, reason, done, before, None, step_s, losses)
        ts.finish()
        after = self.score((hx, hm))
        measure_probes(self.G, probe, after)
        what = f"held-out {cfg.motion_source}-reblur{' + sharp-anchor' if self.anchor_scale else ''} score"
        ok = math.isfinite(after.total) and after.total < before.total * (1.0 - cfg.min_gain)
        reason = refusal(before, after, cfg) if ok else f"{what} not better ({before.total:.5f} -> {after.total:.5f})"
        ok = ok and not reason
        if not ok:
            rollback()                      # merged already: discard only refreezes, the state dicts restore
            return result(False, reason, done, before, after, step_s, losses)
        self.rounds += 1
        return result(True, f"{what} {before.total:.5f} -> {after.total:.5f}", done, before, after, step_s, losses)


#: the stream buffer flows one centre frame in this many: the five-point velocity (4 DIS "fast" flows at half
#: scale) costs 7.3 ms of CPU at 640×360, 12 % of the default's INT8 inference (61 ms on one thread;
#: bench/flow_cost.py), so one in 4 is 3 % of the frame time while the ring fills and nothing once it holds a
#: round's frames (24 centres take 3.2 s of 30 fps video)
STREAM_FLOW_EVERY = 4


class StreamBuffer:
    """Frames of a running stream with their neighbours' flow: the stream path of ``neurmap run --adapt``.

    ``add(index, frame)`` is called on the capture thread with every captured frame (as the source gives it:
    BGR/gray, 8/16-bit) and its capture index, so neighbours are the camera's, whatever the engine drops in
    realtime mode; it only keeps references. One centre frame in ``every`` whose ``points // 2`` neighbours on
    each side were captured consecutively goes to the :class:`FlowWorker`, which normalises the frames,
    computes the velocity (``points``: its stencil) and places a :class:`MotionFrame` (motion stored as
    float16) in a :class:`FrameBuffer`
    ring (every ``holdout_every``-th held out). At most ``max_pending`` centres wait for the worker, and
    once ``capacity`` frames have been flowed since the adaptation last took a snapshot no more are (they
    would only push unused ones out of the ring): later ones are skipped and counted, so the flow never
    queues frames without bound nor costs more than one ring per round. Without a given ``exposure``, the
    first ``exposure_frames`` consecutive frames estimate it (in the worker) first."""

    def __init__(self, worker: Optional[FlowWorker] = None, capacity: int = 24, holdout_every: int = 4,
                 every: int = STREAM_FLOW_EVERY, exposure: Optional[float] = None, exposure_frames: int = 12,
                 max_pending: int = 2, points: int = 3, on_event: Callable[[str], None] = lambda m: None) -> None:
        self.worker = worker or FlowWorker()
        self.points = int(points)
        self.ring = FrameBuffer(capacity=capacity, holdout_every=holdout_every)
        self.capacity = int(capacity)
        self._consumed = 0                     # ring.seen at the adaptation's last snapshot
        self.every, self.max_pending = max(1, int(every)), max(1, int(max_pending))
        self.exposure = check_exposure(exposure) if exposure is not None else None
        self.exposure_source = "given" if exposure is not None else None
        self.exposure_frames = max(3, int(exposure_frames))
        self.on_event = on_event
        self.on_item: Callable[[], None] = lambda: None
        self._recent: deque = deque(maxlen=self.points)
        self._run: list = []
        self._estimating = False
        self._pending = 0
        self._lock = threading.Lock()
        self.closed = False
        self.captured = self.flowed = self.skipped_busy = self.skipped_full = self.failed = 0
        self.last_error: Optional[str] = None

    # -- capture thread --
    def add(self, index: int, frame) -> None:
        if self.closed:
            return
        try:
            self._add(index, frame)
        except Exception as e:  # noqa: BLE001 - on the capture thread: never take the stream down
            self._failed("capture", e)

    def _add(self, index: int, frame) -> None:
        self.captured += 1
        r = self._recent
        if r and r[-1][0] != index - 1:
            r.clear()                          # a gap (dropped or looped frames): no neighbours across it
            self._run.clear()
        r.append((index, frame))
        if self.exposure is None:
            if not self._estimating:
                self._run.append(frame)
                if len(self._run) >= self.exposure_frames:
                    self._estimating, run, self._run = True, self._run, []
                    self.worker.call(self._estimate, run)
            return
        c = self.points // 2
        if len(r) == self.points and r[c][0] % self.every == 0:
            with self._lock:
                full = self.ring.seen + self._pending - self._consumed >= self.capacity
                busy = not full and self._pending >= self.max_pending
                self._pending += 0 if busy or full else 1
            if full:
                self.skipped_full += 1
            elif busy:
                self.skipped_busy += 1
            else:
                self.worker.call(self._flow_job, [f for _, f in r])

    # -- flow worker --
    @staticmethod
    def _frame(raw) -> torch.Tensor:
        from .pipeline import to_rgb_float
        return _to_uint8_chw(raw if isinstance(raw, torch.Tensor) else to_rgb_float(raw)[0])

    def _failed(self, what: str, e: Exception) -> None:
        self.failed += 1
        self.last_error = f"{what}: {type(e).__name__}: {e}".splitlines()[0][:200]
        if self.failed == 1:
            self.on_event(f"stream adaptation skipped a frame ({self.last_error})")

    def _estimate(self, run: list) -> None:
        from neurmap.core.exposure import estimate_exposure

        try:
            est = estimate_exposure([self._frame(f) for f in run], flow=self.worker.flow(), points=self.points)
            self.exposure, self.exposure_source = est.exposure, f"estimated from {len(run)} frames"
            self.on_event(f"stream adaptation: exposure fraction {est.exposure:.2f} estimated from the first "
                          f"{len(run)} frames")
        except Exception as e:  # noqa: BLE001 - adaptation must never take the stream down; retried on the next run
            self._failed("exposure", e)
        finally:
            self._estimating = False

    def _flow_job(self, raw: list) -> None:
        try:
            frames, c = [self._frame(f) for f in raw], len(raw) // 2
            v = self.worker.velocity(frames, c, self.points)
            self.ring.place(MotionFrame(frames[c], velocity_to_motion(v, self.exposure).half()))
            self.flowed += 1
        except Exception as e:  # noqa: BLE001 - a bad frame is skipped, the stream goes on
            self._failed("flow", e)
        finally:
            with self._lock:
                self._pending -= 1
        self.on_item()

    # -- adaptation thread --
    @property
    def seen(self) -> int:
        return self.ring.seen

    def snapshot(self) -> tuple[list[MotionFrame], list[MotionFrame]]:
        with self._lock:
            self._consumed = self.ring.seen
        return self.ring.snapshot()

    def stats(self) -> dict:
        return {"frames_captured": self.captured, "frames_flowed": self.flowed, "skipped_busy": self.skipped_busy,
                "skipped_full": self.skipped_full, "failed": self.failed, "last_error": self.last_error,
                "exposure": round(self.exposure, 4) if self.exposure is not None else None,
                "exposure_source": self.exposure_source, "flow_ms_per_frame": round(1000 * self.worker.per_frame(), 2),
                "flow_s": round(self.worker.seconds, 3)}

    def close(self) -> None:
        self.closed = True
        self.worker.close(wait=False)
