"""Adaptation on streams: neighbouring frames give the blur motion, so G learns this camera's blur.

A single image only has the motion net's reading M(B), and the shipped M barely reads real blur; with the
*relative* motion SPEC uses, m_rel = vn M(B) − vn M(Ŝ), the identity Ŝ = B makes m_rel = 0 and R(B, 0) = B,
so the identity is always a minimum of the reblur term and a weak M lets G drift back toward its input
(``edge_runtime/adaptation.py`` guards that path). In a video the blur of frame t is known without M:
m_t = e · flow(t−1 → t+1) / 2 / 20 (:mod:`neurmap.core.flow_motion`), e the exposure fraction (from the user,
else :func:`neurmap.core.exposure.estimate_exposure`). Under this *absolute* motion R(B, m_t) is blurrier than
B, so ℓ_rb(R(B, m), B) > 0 and the objective is lowest near the sharp frame, not at the identity
(:func:`objective_at` measures it at B, G(B) and the truth S). So this path minimises

    ℓ_rb(R(G(B), sg[m_flow]), B)

on random crops of the buffered frames, with the same trainable sets, rollback and probe guard as the
single-image path; the guard's score is the same objective on held-out frames. Flow runs in a worker thread
(:class:`FlowWorker`; OpenCV releases the GIL), never on the inference thread, and its cost is recorded.
"""
from __future__ import annotations

import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from neurmap.core.errors import NeurmapError
from neurmap.core.flow_motion import FlowEstimator, velocity_to_motion

from .adaptation import (AdaptConfig, RoundResult, Score, TrainableSet, _to_uint8_chw, pick_device, probe_pairs,
                         probe_psnr)
from .trainable import run_steps

#: the stream path's defaults (the issue's check: 20 plain Adam steps, all weights at 5e-5, 96² crops)
STREAM_DEFAULTS = {"params": "all", "lr": 5e-5, "w_sharp": 0.0, "niqe_guard": True, "min_blur_px": 0.5}


@dataclass
class MotionFrame:
    """A buffered frame (uint8 (3,H,W)) with its flow-derived blur motion ((2,H,W), units of 20 px)."""

    frame: torch.Tensor
    motion: torch.Tensor


class FlowWorker:
    """Flow-derived motion off the caller's thread: ``submit(prev, frame, next)`` returns a Future of the
    frame's velocity; ``seconds`` accumulates the flow time (``per_frame()`` its mean)."""

    def __init__(self, scale: float = 1.0, method: str = "dis", preset: str = "medium") -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="neurmap-flow")
        self._local = threading.local()
        self.scale, self.method, self.preset = scale, method, preset
        self.seconds = 0.0
        self.count = 0
        self._lock = threading.Lock()

    def _flow(self) -> FlowEstimator:
        if not hasattr(self._local, "est"):
            self._local.est = FlowEstimator(self.method, self.scale, self.preset)
        return self._local.est

    def _velocity(self, prev, nxt, span: int) -> np.ndarray:
        t0 = time.perf_counter()
        v = self._flow()(prev, nxt) / float(span)
        with self._lock:
            self.seconds += time.perf_counter() - t0
            self.count += 1
        return v

    def submit(self, prev, nxt, span: int = 2) -> Future:
        return self._pool.submit(self._velocity, prev, nxt, span)

    def per_frame(self) -> float:
        return self.seconds / max(self.count, 1)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def motion_frames(frames: Sequence, centres: Sequence[int], exposure: float,
                  worker: Optional[FlowWorker] = None) -> list[MotionFrame]:
    """:class:`MotionFrame` for each index of ``centres`` in the consecutive ``frames`` (flow in the worker)."""
    own = worker is None
    worker = worker or FlowWorker()
    try:
        n = len(frames)
        futs = []
        for t in centres:
            a, b = max(t - 1, 0), min(t + 1, n - 1)
            if a == b:
                raise NeurmapError("flow-derived motion needs consecutive frames; this source has one frame")
            futs.append(worker.submit(frames[a], frames[b], b - a))
        return [MotionFrame(_to_uint8_chw(frames[t]), velocity_to_motion(f.result(), exposure))
                for t, f in zip(centres, futs)]
    finally:
        if own:
            worker.close()


def crops_with_motion(items: Sequence[MotionFrame], n: int, size: int, g: torch.Generator,
                      fixed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` size×size crops of frames and the same crops of their motion ((n,3,s,s), (n,2,s,s))."""
    xs, ms = [], []
    for k in range(n):
        it = items[k % len(items)] if fixed else items[int(torch.randint(len(items), (1,), generator=g))]
        h, w = it.frame.shape[-2:]
        s = min(size, h, w)
        t = int(torch.randint(0, h - s + 1, (1,), generator=g))
        l = int(torch.randint(0, w - s + 1, (1,), generator=g))
        xs.append(it.frame[:, t:t + s, l:l + s].float() / 255)
        ms.append(it.motion[:, t:t + s, l:l + s])
    return torch.stack(xs), torch.stack(ms)


def stream_loss(G: nn.Module, blurry: torch.Tensor, motion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ℓ_rb(R(G(B), m), B), G(B)) under the absolute flow-derived motion ``m`` (a constant)."""
    from neurmap.core import losses as L
    from neurmap.core.reblur import reblur

    s_hat = G(blurry).float()
    return L.reblur_loss(reblur(s_hat, motion.detach().to(s_hat.dtype)), blurry), s_hat


@torch.no_grad()
def objective_at(blurry: torch.Tensor, motion: torch.Tensor, candidates: dict[str, torch.Tensor],
                 M: Optional[nn.Module] = None) -> dict[str, dict[str, float]]:
    """The reblur objective at each candidate sharp estimate X (e.g. B, G(B), S): under the absolute motion
    ℓ_rb(R(X, m), B), and — with a motion net — under SPEC's relative motion ℓ_rb(R(X, vn M(B) − vn M(X)), B),
    which is 0 at X = B by construction."""
    from neurmap.core import losses as L
    from neurmap.core.reblur import canonical_motion, reblur

    out: dict[str, dict[str, float]] = {}
    m_b = canonical_motion(M(blurry).float()) if M is not None else None
    for name, x in candidates.items():
        row = {"absolute_flow": float(L.reblur_loss(reblur(x.float(), motion.float()), blurry))}
        if M is not None:
            m_rel = m_b - canonical_motion(M(x.float()).float())
            row["relative_M"] = float(L.reblur_loss(reblur(x.float(), m_rel), blurry))
        out[name] = row
    return out


def stream_config(overrides: Optional[dict] = None) -> AdaptConfig:
    """AdaptConfig with the stream path's defaults, then ``overrides`` (same keys as the single-image path)."""
    return AdaptConfig.from_dict({**STREAM_DEFAULTS, **(overrides or {})})


class StreamAdapter:
    """Guarded rounds of G on :class:`MotionFrame` items; ``model`` is adapted in place (pass a copy when it
    also serves frames). ``run_round`` leaves it improved on the held-out objective or bit-identical."""

    def __init__(self, model: nn.Module, cfg: AdaptConfig | None = None) -> None:
        self.cfg = cfg or stream_config()
        self.device = pick_device(self.cfg.device)
        self.G = model.to(self.device).eval()
        for p in self.G.parameters():
            p.requires_grad_(False)
        self.rounds = 0
        self.step_g = torch.Generator().manual_seed(self.cfg.seed)
        self.stop_flag = threading.Event()

    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.G.net.state_dict().items()}

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        self.G.net.load_state_dict(state)

    @torch.no_grad()
    def score(self, held: tuple[torch.Tensor, torch.Tensor], chunk: int = 2) -> Score:
        """The objective on the held-out crops, and NIQE of their outputs side by side (crops >= 96)."""
        x, m = held
        tot, outs = 0.0, []
        for i in range(0, x.shape[0], chunk):
            loss, s_hat = stream_loss(self.G, x[i:i + chunk], m[i:i + chunk])
            tot += float(loss) * x[i:i + chunk].shape[0]
            outs.append(s_hat.clamp(0, 1).cpu())
        tot /= x.shape[0]
        nq = None
        if self.cfg.niqe_guard and min(x.shape[-2:]) >= 96:
            from neurmap.core.metrics import niqe
            nq = float(niqe(torch.cat(list(torch.cat(outs)), dim=-1)))
        return Score(self.cfg.w_reblur * tot, tot, 0.0, nq, blur_px=float(m.norm(dim=1).mean() * 20.0))

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
        hx, hm = crops_with_motion(held, cfg.eval_crops, cfg.eval_crop, g_eval, fixed=True)
        hx, hm = hx.to(dev), hm.to(dev)
        before = self.score((hx, hm))
        empty = torch.zeros(2)
        if before.blur_px < cfg.min_blur_px:
            reason = (f"skipped: the flow-derived blur of the held-out frames is {before.blur_px:.2f} px "
                      f"(min_blur_px {cfg.min_blur_px:g}): the frames are sharp enough already")
            return RoundResult(False, reason, 0, before, None, time.perf_counter() - t_start, 0.0, [], 0,
                               cfg.params, cfg.lr, empty.tolist())
        probe = probe_pairs(self.G, hx, cfg.seed + self.rounds) if cfg.probe_guard else None
        if probe is not None:
            before.probe_psnr = probe_psnr(self.G, probe)
        original = self.state()
        ts = TrainableSet(self.G, cfg)
        opt = torch.optim.Adam(ts.params, lr=cfg.lr)

        def loss_fn() -> torch.Tensor:
            x, m = crops_with_motion(train, cfg.batch, cfg.crop, self.step_g)
            return cfg.w_reblur * stream_loss(self.G, x.to(dev), m.to(dev))[0]

        try:
            losses, times, done, reason = run_steps(steps, loss_fn, opt, ts.params, cfg.grad_clip, self.stop_flag,
                                                    on_step, pause)
        except BaseException:
            ts.discard()
            self.restore(original)
            raise
        step_s = float(np.median(times)) if times else 0.0
        after = None
        if not reason:
            ts.finish()
            after = self.score((hx, hm))
            if probe is not None and math.isfinite(after.total):
                after.probe_psnr = probe_psnr(self.G, probe)
            ok = math.isfinite(after.total) and after.total < before.total * (1.0 - cfg.min_gain)
            if ok and probe is not None and after.probe_psnr < before.probe_psnr - cfg.probe_tol_db:
                ok, reason = False, f"deblurring probe dropped {before.probe_psnr:.2f} -> {after.probe_psnr:.2f} dB"
            if ok and before.niqe is not None and after.niqe is not None and after.niqe > before.niqe + cfg.niqe_tol:
                ok, reason = False, f"NIQE rose {before.niqe:.3f} -> {after.niqe:.3f}"
            if ok:
                self.rounds += 1
                return RoundResult(True, f"held-out flow-reblur score {before.total:.5f} -> {after.total:.5f}",
                                   done, before, after, time.perf_counter() - t_start, step_s, losses, ts.numel(),
                                   cfg.params, cfg.lr, empty.tolist())
            reason = reason or f"held-out flow-reblur score not better ({before.total:.5f} -> {after.total:.5f})"
        else:
            ts.discard()
        self.restore(original)
        return RoundResult(False, reason, done, before, after, time.perf_counter() - t_start, step_s, losses,
                           ts.numel(), cfg.params, cfg.lr, empty.tolist())
