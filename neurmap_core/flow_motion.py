"""Blur motion from video: dense optical flow between a frame's neighbours × the exposure fraction.

In a clip, frame t integrates the scene over the exposure, so its blur follows the scene's velocity v_t
(pixels per frame interval) times the exposure fraction e (the share of the interval the shutter is open).
The velocity comes from the central difference of dense flow, v_t ≈ flow(t−1 → t+1) / 2 (one-sided at the
ends of a clip). The blur streak is e·v_t long; :func:`neurmap.core.reblur` spreads its taps over
p ± 20·m, so the motion in the project's convention ((dy, dx) in units of ``MOTION_SCALE`` = 20 px) is

    m_t = e · v_t / 2 / 20.

This is the one implementation of "motion from video": training (a motion prior for M), the runtime
(adaptation on streams), ``neurmap motion`` and the benches all call it. The exposure fraction comes from the
camera when it reports it, else from :func:`neurmap.core.exposure.estimate_exposure`.
Flow is OpenCV's DIS (``"dis"``, the default: a few ms per 640×360 frame) or Farneback (``"farneback"``).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import cv2
import numpy as np
import torch

from .errors import InputError
from .models.motion import MOTION_SCALE

FrameLike = Union[np.ndarray, torch.Tensor]
FLOW_METHODS = ("dis", "farneback")


def to_gray_u8(frame: FrameLike) -> np.ndarray:
    """(3,H,W)/(1,3,H,W) float [0,1] or uint8 tensor, or an H×W×3 / H×W uint8 array → H×W uint8 luma."""
    if isinstance(frame, torch.Tensor):
        t = frame.detach().to("cpu")
        if t.dim() == 4:
            t = t[0]
        if t.dim() != 3 or t.shape[0] not in (1, 3):
            raise InputError(f"flow needs (3,H,W) frames, got a tensor of shape {tuple(frame.shape)}")
        if t.dtype != torch.uint8:
            t = (t.float().clamp(0, 1) * 255 + 0.5).to(torch.uint8)
        a = t.numpy()
        if a.shape[0] == 3:       # planar RGB: merging the planes is ~15x cheaper than a transposed copy
            return cv2.cvtColor(cv2.merge([a[0], a[1], a[2]]), cv2.COLOR_RGB2GRAY)
        a = a.transpose(1, 2, 0)
    else:
        a = np.asarray(frame)
        if a.dtype != np.uint8:
            a = (np.clip(a.astype(np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)
    if a.ndim == 3 and a.shape[2] == 3:
        return cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGB2GRAY)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim != 2:
        raise InputError(f"flow needs an RGB or grey frame, got an array of shape {a.shape}")
    return np.ascontiguousarray(a)


def frame_size(frame: FrameLike) -> tuple[int, int]:
    """(H, W) of a (3,H,W)/(1,3,H,W) tensor or an H×W(×C) array."""
    return tuple(frame.shape[-2:]) if isinstance(frame, torch.Tensor) else tuple(np.asarray(frame).shape[:2])


class FlowEstimator:
    """Dense flow a → b in pixels, (2,H,W) float32 with channels (dy, dx): ``b(p + flow(p)) ≈ a(p)``.

    ``scale`` < 1 computes the flow on downscaled frames (and scales the vectors back up) for speed.
    One estimator per thread: OpenCV's DIS object keeps state between calls."""

    def __init__(self, method: str = "dis", scale: float = 1.0, preset: str = "medium") -> None:
        if method not in FLOW_METHODS:
            raise InputError(f"flow method {method!r} unknown; use one of {', '.join(FLOW_METHODS)}")
        if not 0.05 <= float(scale) <= 1.0:
            raise InputError(f"flow scale {scale} must be in [0.05, 1]")
        self.method, self.scale = method, float(scale)
        if method == "dis":
            presets = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
                       "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
            if preset not in presets:
                raise InputError(f"DIS preset {preset!r} unknown; use one of {', '.join(presets)}")
            self._dis = cv2.DISOpticalFlow_create(presets[preset])

    def prepare(self, frame: FrameLike) -> np.ndarray:
        """A frame as the flow reads it: luma, uint8, at the working scale (convert each frame once)."""
        g = to_gray_u8(frame)
        if self.scale < 1.0:
            h, w = g.shape
            sw, sh = max(8, int(round(w * self.scale))), max(8, int(round(h * self.scale)))
            g = cv2.resize(g, (sw, sh), interpolation=cv2.INTER_AREA)
        return g

    def low(self, ga: np.ndarray, gb: np.ndarray) -> np.ndarray:
        """Flow between two :meth:`prepare` d frames, H'×W'×2 (dx, dy) at the working scale, in its pixels."""
        if ga.shape != gb.shape:
            raise InputError(f"flow needs frames of one size, got {ga.shape} and {gb.shape}")
        if self.method == "dis":
            return self._dis.calc(ga, gb, None)
        return cv2.calcOpticalFlowFarneback(ga, gb, None, 0.5, 4, 21, 3, 7, 1.5, 0)

    @staticmethod
    def full(f: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """A working-scale flow (H'×W'×2, (dx, dy)) → (2,H,W) (dy, dx) in full-size pixels. Linear, so flows may
        be combined before it (one upsample for a whole stencil)."""
        h, w = shape
        if f.shape[:2] != (h, w):
            sy, sx = h / f.shape[0], w / f.shape[1]
            f = cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR)
            f[..., 0] *= sx
            f[..., 1] *= sy
        return np.ascontiguousarray(np.stack((f[..., 1], f[..., 0])), dtype=np.float32)   # (dy, dx)

    def __call__(self, a: FrameLike, b: FrameLike) -> np.ndarray:
        ga, gb = to_gray_u8(a), to_gray_u8(b)
        if ga.shape != gb.shape:
            raise InputError(f"flow needs frames of one size, got {ga.shape} and {gb.shape}")
        return self.full(self.low(self.prepare(ga), self.prepare(gb)), ga.shape)


#: stencils of :func:`velocity`: 3 (one flow, the default) or 5 (four flows on frame t's grid)
VELOCITY_POINTS = (3, 5)


def velocity(frames: Sequence[FrameLike], t: int, flow: Optional[FlowEstimator] = None,
             points: int = 3) -> np.ndarray:
    """Scene velocity at frame ``t`` in pixels per frame interval, (2,H,W) (dy, dx): central difference
    flow(t−1 → t+1)/2 inside the clip, one-sided flow at its ends.

    ``points=5``: the five-point stencil (8·(d₊₁ − d₋₁) − (d₊₂ − d₋₂)) / 12 of the displacements
    d_k = flow(t → t+k) on frame t's own grid (frames within 2 of an end fall back to 3 points). A central
    difference reads a shake of ω radians per frame as sin ω / ω of its speed, the five-point stencil as
    (8 sin ω − sin 2ω) / 6ω: at 0.25 cycles/frame (hand tremor at 30 fps) 0.64 vs 0.85, and since x, y and
    rotation shake at different rates the blur's direction is wrong too. On held-out camera-shake clips its
    per-pixel error to the known blur is 20-55 % lower (6 clips, true exposure; 10-30 % with each stencil's
    own estimated exposure, ``bench/adapt_stream.py``). Four flows instead of one."""
    n = len(frames)
    if n < 2:
        raise InputError("flow-derived motion needs at least 2 consecutive frames; a single image has no neighbours")
    if not 0 <= t < n:
        raise InputError(f"frame index {t} outside a clip of {n} frames")
    if points not in VELOCITY_POINTS:
        raise InputError(f"velocity stencil of {points} points unknown; use one of {VELOCITY_POINTS}")
    flow = flow or FlowEstimator()
    if points == 5 and 2 <= t < n - 2:
        g = {k: flow.prepare(frames[t + k]) for k in (-2, -1, 0, 1, 2)}   # each frame converted once
        d = {k: flow.low(g[0], g[k]) for k in (-2, -1, 1, 2)}
        stencil = (8.0 * (d[1] - d[-1]) - (d[2] - d[-2])) / 12.0          # at the working scale: one upsample
        return flow.full(stencil, frame_size(frames[t]))
    a, b = max(t - 1, 0), min(t + 1, n - 1)
    return flow(frames[a], frames[b]) / float(b - a)


def velocity_to_motion(v: Union[np.ndarray, torch.Tensor], exposure: float) -> torch.Tensor:
    """Velocity (px / frame, (2,H,W) or (B,2,H,W)) × exposure fraction → blur motion in reblur's units."""
    check_exposure(exposure)
    v = torch.as_tensor(np.asarray(v) if isinstance(v, np.ndarray) else v, dtype=torch.float32)
    return v * (float(exposure) / 2.0 / MOTION_SCALE)


def check_exposure(exposure: float) -> float:
    """The exposure fraction, checked: the share of the frame interval the shutter is open, in (0, 1]."""
    try:
        e = float(exposure)
    except (TypeError, ValueError):
        raise InputError(f"exposure {exposure!r} must be a number in (0, 1] (the share of the frame interval "
                         "the shutter is open; 1/60 s at 30 fps is 0.5)") from None
    if not 0.0 < e <= 1.0:
        raise InputError(f"exposure {e:g} must be in (0, 1] (the share of the frame interval the shutter is open; "
                         "1/60 s at 30 fps is 0.5); omit it to estimate it from the footage")
    return e


def flow_blur(frames: Sequence[FrameLike], t: int, exposure: float,
              flow: Optional[FlowEstimator] = None) -> torch.Tensor:
    """Blur motion of frame ``t`` of a clip ((2,H,W), (dy, dx) in units of 20 px) from its neighbours' flow."""
    return velocity_to_motion(velocity(frames, t, flow), exposure)


def clip_velocities(frames: Sequence[FrameLike], flow: Optional[FlowEstimator] = None,
                    points: int = 3) -> list[np.ndarray]:
    """:func:`velocity` of every frame of a clip (n−1 flows for the ends, n−2 central ones inside)."""
    flow = flow or FlowEstimator()
    return [velocity(frames, t, flow, points) for t in range(len(frames))]


def blur_px(motion: torch.Tensor) -> float:
    """Mean blur half-length in pixels (|m| · 20) of a motion map (any leading shape, channels (dy, dx))."""
    m = motion.float()
    return float(m.norm(dim=-3).mean() * MOTION_SCALE)


def flow_to_color(m: torch.Tensor, max_norm: float | None = None) -> torch.Tensor:
    """(2,H,W) motion → (3,H,W) RGB in [0,1]: hue = direction, saturation = magnitude (the usual flow wheel).

    ``max_norm`` (in the units of ``m``) fixes the full-saturation magnitude, so frames of one video compare;
    default: the map's own maximum."""
    dy, dx = m[0].float().cpu().numpy(), m[1].float().cpu().numpy()
    mag, ang = cv2.cartToPolar(np.ascontiguousarray(dx), np.ascontiguousarray(dy))
    top = max_norm or float(mag.max()) or 1.0
    hsv = np.stack([ang * 90 / np.pi, np.clip(mag / top, 0, 1) * 255, np.full_like(mag, 255)], -1).astype(np.uint8)
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return torch.from_numpy(rgb).permute(2, 0, 1).float().div(255).to(m.device)
