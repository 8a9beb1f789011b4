"""Blur synthesis: GoPro-protocol frame averaging, kernel (reblur) blur with random motion fields, and
handheld camera-shake clips from still photos.

All images are float RGB in [0, 1]; motion maps are (2, H, W) with channels (dy, dx) in the units
:func:`neurmap.core.reblur` takes (pixels / 20).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..models.motion import MOTION_SCALE
from ..reblur import TAPS, reblur
from .io import PathLike, array_to_tensor, read_image
from .video import FrameSequence, frame_source

ArrayOrTensor = Union[torch.Tensor, np.ndarray]

# ------------------------------------------------------------------------------------------------
# sRGB transfer curve (IEC 61966-2-1), exact piecewise form
# ------------------------------------------------------------------------------------------------


def srgb_to_linear(x: ArrayOrTensor) -> ArrayOrTensor:
    """sRGB-encoded values in [0, 1] -> linear light (exact piecewise curve; input clipped at 0)."""
    if isinstance(x, np.ndarray):
        x = np.clip(x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float32), 0.0, None)
        return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(x.dtype, copy=False)
    x = torch.as_tensor(x)
    x = (x if x.is_floating_point() else x.float()).clamp_min(0.0)
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: ArrayOrTensor) -> ArrayOrTensor:
    """Linear light in [0, 1] -> sRGB-encoded values (exact piecewise curve; input clipped at 0)."""
    if isinstance(x, np.ndarray):
        x = np.clip(x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float32), 0.0, None)
        return np.where(x <= 0.0031308, x * 12.92, 1.055 * x ** (1.0 / 2.4) - 0.055).astype(x.dtype, copy=False)
    x = torch.as_tensor(x)
    x = (x if x.is_floating_point() else x.float()).clamp_min(0.0)
    return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x.pow(1.0 / 2.4) - 0.055)


# ------------------------------------------------------------------------------------------------
# GoPro protocol
# ------------------------------------------------------------------------------------------------


def _stack_frames(frames) -> torch.Tensor:
    if isinstance(frames, torch.Tensor):
        if frames.dim() != 4:
            raise InputError(f"frames must be (N,C,H,W) or a list of (C,H,W), got a tensor of shape {tuple(frames.shape)}")
        return frames
    frames = list(frames)
    if not frames:
        raise InputError("gopro_blur needs at least one frame")
    shapes = {tuple(f.shape) for f in frames}
    if len(shapes) != 1:
        raise InputError(f"frames to average must share one shape, got {sorted(shapes)}")
    return torch.stack([torch.as_tensor(f) for f in frames])


def middle_index(n: int) -> int:
    """Index of the sharp target inside a window of ``n`` frames (exact middle for odd ``n``; n//2 for even)."""
    return n // 2


def gopro_blur(frames) -> torch.Tensor:
    """GoPro-protocol blur: the mean of consecutive sharp frames in linear light, re-encoded to sRGB.

    ``frames``: (N,C,H,W) tensor or a list of (C,H,W) tensors in [0, 1]. Returns (C,H,W).
    """
    f = _stack_frames(frames).to(torch.float32)
    return linear_to_srgb(srgb_to_linear(f).mean(dim=0)).clamp(0.0, 1.0)


def gopro_pair(frames) -> tuple[torch.Tensor, torch.Tensor]:
    """(blurry, sharp): :func:`gopro_blur` of the window and its middle frame."""
    f = _stack_frames(frames)
    return gopro_blur(f), f[middle_index(f.shape[0])].to(torch.float32).clone()


def tap_gain(n: int, taps: int = TAPS) -> float:
    """From the half-extent (W_last − W_first)/2 of ``n`` equally spaced views along a straight path to the
    half-extent reblur's ``taps`` taps need for the same blur (equal second moment; 1 when n == taps)."""
    return math.sqrt((n + 1) / (n - 1) * (taps - 1) / (taps + 1)) if n > 1 else 0.0


def window_motion(frames: torch.Tensor, flow=None) -> torch.Tensor:
    """Blur of a GoPro-protocol window (N,3,H,W) on its middle (sharp) frame's grid, (2,H,W) in pixels/20.

    Dense flow from the middle frame to the last minus that to the first gives W_last(x) − W_first(x) — real
    parallax and moving objects, which no global model has; halved and scaled by :func:`tap_gain` it is the
    convention of :func:`affine_blur_motion` for ``N`` views. Two half-window flows rather than one first → last:
    they live on the sharp frame's grid and match smaller displacements."""
    from ..flow_motion import FlowEstimator

    n = frames.shape[0]
    if n < 2:
        return torch.zeros(2, *frames.shape[-2:])
    flow = flow or FlowEstimator()
    mid = middle_index(n)
    span = flow(frames[mid], frames[-1]) - flow(frames[mid], frames[0])
    return torch.from_numpy(span * (tap_gain(n) / 2.0 / MOTION_SCALE))


def _lengths(n_frames) -> list[int]:
    if isinstance(n_frames, (int, np.integer)):
        lengths = [int(n_frames)]
    elif isinstance(n_frames, range):
        lengths = list(n_frames)
    elif isinstance(n_frames, (tuple, list)) and len(n_frames) == 2:
        lengths = list(range(int(n_frames[0]), int(n_frames[1]) + 1))
    else:
        raise InputError(f"n_frames must be an int, a range or an inclusive (low, high) pair, got {n_frames!r}")
    if not lengths or min(lengths) < 1:
        raise InputError(f"n_frames must give window lengths of at least 1 frame, got {n_frames!r}")
    return lengths


def _resolve_range(frame_range, total: int, where) -> tuple[int, int]:
    if frame_range is None:
        return 0, total
    a, b = (int(v) for v in frame_range)
    a, b = max(a, 0), min(b, total)
    if b <= a:
        raise InputError(f"frame_range {tuple(frame_range)} selects no frames of the {total} in {where}")
    return a, b


class GoProPairs(Sequence):
    """Lazy list of GoPro-protocol (blurry, sharp) pairs; ``windows[i]`` = (first frame index, length)."""

    def __init__(self, source: FrameSequence, windows: list[tuple[int, int]],
                 crop: Optional[tuple[int, int, int, int]] = None) -> None:
        self.source = source
        self.windows = windows
        self.crop = crop

    def __len__(self) -> int:
        return len(self.windows)

    def frames(self, index: int) -> torch.Tensor:
        """The (N,3,H,W) sharp frames of window ``index`` (cropped when ``crop`` is set)."""
        first, n = self.windows[index]
        fr = [self.source[first + k] for k in range(n)]
        if self.crop is not None:
            top, left, h, w = self.crop
            fr = [f[:, top:top + h, left:left + w] for f in fr]
        return torch.stack(fr)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"pair index {index} out of range for {n} pairs")
        return gopro_pair(self.frames(index))


def gopro_pairs_from_folder(
    folder: PathLike,
    n_frames=7,
    stride: Optional[int] = None,
    start: int = 0,
    count: Optional[int] = None,
    seed: int = 0,
    frame_range: Optional[tuple[int, int]] = None,
    crop: Optional[tuple[int, int, int, int]] = None,
) -> GoProPairs:
    """GoPro-protocol (blurry, sharp) pairs from a folder (or video) of 240 fps sharp frames, read lazily.

    ``n_frames``: window length, an int or an inclusive (low, high) pair / range drawn per window with
    ``seed`` (the GoPro dataset uses 7-13). Windows start at ``frame_range[0] + start`` and advance by
    ``stride`` frames (default: the window's own length, so windows do not overlap); only frames inside
    ``frame_range = (first, end)`` (end exclusive) are used, so training and held-out pairs can be
    made from disjoint frames. ``count`` caps the number of pairs. ``crop = (top, left, height, width)``
    cuts every frame before averaging. Indexing the result gives ``(blurry, sharp)`` (3,H,W) tensors.
    """
    source = frame_source(folder)
    lo, hi = _resolve_range(frame_range, len(source), folder)
    lengths = _lengths(n_frames)
    if stride is not None and int(stride) < 1:
        raise InputError(f"stride must be at least 1, got {stride}")
    if count is not None and int(count) < 1:
        raise InputError(f"count must be at least 1, got {count}")
    rng = np.random.default_rng(seed)
    windows: list[tuple[int, int]] = []
    pos = lo + int(start)
    while count is None or len(windows) < int(count):
        n = int(rng.choice(lengths)) if len(lengths) > 1 else lengths[0]
        if pos < lo or pos + n > hi:
            break
        windows.append((pos, n))
        pos += int(stride) if stride is not None else n
    if not windows:
        raise InputError(
            f"no window of {min(lengths)}+ frames fits in frames [{lo + int(start)}, {hi}) of {folder} "
            f"({len(source)} frames); lower n_frames or start, or widen frame_range"
        )
    if crop is not None:
        top, left, h, w = (int(v) for v in crop)
        fh, fw = source.size
        if top < 0 or left < 0 or h < 1 or w < 1 or top + h > fh or left + w > fw:
            raise InputError(f"crop {tuple(crop)} (top, left, height, width) does not fit frames of {fh}x{fw}")
        crop = (top, left, h, w)
    return GoProPairs(source, windows, crop)


# ------------------------------------------------------------------------------------------------
# Kernel-synthesized blur
# ------------------------------------------------------------------------------------------------


def _uniform(g: Optional[torch.Generator], lo: float = 0.0, hi: float = 1.0, n: int = 1) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


def random_motion_field(
    h: int,
    w: int,
    generator: Optional[torch.Generator] = None,
    max_px: float = 20.0,
    min_px: float = 2.0,
    n_regions: tuple[int, int] = (0, 3),
    region_size: tuple[float, float] = (0.12, 0.35),
) -> torch.Tensor:
    """A smooth, spatially varying blur-motion field, (2,H,W) float32, channels (dy, dx) in pixels/20.

    Model (after Gong et al. 2017, "From motion blur to motion flow"): a global camera motion, i.e. an
    in-plane translation plus a rotation about the optical axis and a zoom (forward motion) about a
    random centre, scaled so its peak is a random magnitude in [``min_px``, ``max_px``]; then
    ``n_regions`` (drawn in the inclusive range) moving objects are layered on top, each a soft
    super-Gaussian ellipse (random centre, orientation, radii a ``region_size`` fraction of the image's
    larger side) carrying its own constant motion of up to ``max_px``. Each layer is a convex blend
    of vectors bounded by ``max_px``, so ``|20 * field| <= max_px`` everywhere. Drawn with
    ``generator`` (torch's default when None), so a seeded generator reproduces the field.
    The draw (:func:`draw_motion_field`) and the evaluation (:func:`motion_fields`) are apart so a batch of
    drawn fields can be evaluated on the training device.
    """
    return motion_fields([draw_motion_field(h, w, generator, max_px, min_px, n_regions, region_size)])[0]


def draw_motion_field(h: int, w: int, generator: Optional[torch.Generator] = None, max_px: float = 20.0,
                      min_px: float = 2.0, n_regions: tuple[int, int] = (0, 3),
                      region_size: tuple[float, float] = (0.12, 0.35)) -> dict:
    """The random numbers of one :func:`random_motion_field` (a small dict of floats, no image-sized array)."""
    h, w = int(h), int(w)
    if h < 1 or w < 1:
        raise InputError(f"motion field size must be positive, got {h}x{w}")
    if not max_px >= 0:
        raise InputError(f"max_px must be >= 0, got {max_px}")
    min_px = min(max(float(min_px), 0.0), float(max_px))
    g = generator
    s = max(h, w) / 2.0
    # global camera motion: translation + rotation + zoom about a random centre
    r = _uniform(g, -1.0, 1.0, 8)
    cy, cx = 0.5 * r[0].item() * (h / (2 * s)), 0.5 * r[1].item() * (w / (2 * s))
    ang = math.pi * r[2].item()
    trans = abs(r[3].item())
    glob = [cy, cx, trans * math.sin(ang), trans * math.cos(ang), r[4].item(), 0.6 * r[5].item()]
    glob.append(min_px + (max_px - min_px) * _uniform(g).item())       # peak magnitude
    # moving regions, layered (later ones in front): centre, radii, orientation, constant motion
    k_lo, k_hi = (int(n) for n in n_regions)
    k = int(torch.randint(max(k_lo, 0), max(k_hi, k_lo, 0) + 1, (1,), generator=g).item()) if k_hi > 0 else 0
    regions = []
    for _ in range(k):
        p = _uniform(g, 0.0, 1.0, 7)
        th, a, m = math.pi * p[4].item(), 2.0 * math.pi * p[5].item(), max_px * (0.2 + 0.8 * p[6].item())
        regions.append([(p[0].item() - 0.5) * (h / s), (p[1].item() - 0.5) * (w / s),
                        2.0 * (region_size[0] + (region_size[1] - region_size[0]) * p[2].item()),
                        2.0 * (region_size[0] + (region_size[1] - region_size[0]) * p[3].item()),
                        math.cos(th), math.sin(th), m * math.sin(a), m * math.cos(a)])
    return {"h": h, "w": w, "max_px": float(max_px), "global": glob, "regions": regions}


def motion_fields(draws: Sequence[dict], device=None) -> torch.Tensor:
    """Evaluate drawn fields (:func:`draw_motion_field`, all of one size) at once: (B,2,H,W) float32 on ``device``.

    Evaluated in float64 with the very operations :func:`random_motion_field` always used, so one draw gives
    the same bits as before; items with fewer moving regions get blend weight 0 for the missing ones."""
    h, w = draws[0]["h"], draws[0]["w"]
    if any((d["h"], d["w"]) != (h, w) for d in draws):
        raise InputError("motion_fields evaluates fields of one size at a time")
    dt, b = torch.float64, len(draws)
    col = lambda vals: torch.tensor(vals, dtype=dt, device=device).view(b, -1, 1, 1).unbind(1)
    s = max(h, w) / 2.0
    v = ((torch.arange(h, dtype=dt, device=device) - (h - 1) / 2.0) / s).view(1, h, 1).expand(1, h, w)   # ~[-1, 1]
    u = ((torch.arange(w, dtype=dt, device=device) - (w - 1) / 2.0) / s).view(1, 1, w).expand(1, h, w)
    cy, cx, ty, tx, rot, zoom, mag = col([d["global"] for d in draws])
    dv, du = v - cy, u - cx
    gy = ty + rot * du + zoom * dv
    gx = tx - rot * dv + zoom * du
    field = torch.stack((gy, gx), 1)                                    # (B,2,H,W), arbitrary scale
    peak = field.norm(dim=1).amax(dim=(-2, -1)).clamp_min(1e-12).view(b, 1, 1, 1)
    field = field * (peak.reciprocal() * mag[:, None])                  # python's mag / peak
    for j in range(max(len(d["regions"]) for d in draws)):
        have = [j < len(d["regions"]) for d in draws]
        py, px, ry, rx, cth, sth, my, mx = col([d["regions"][j] if ok else [0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
                                                for d, ok in zip(draws, have)])
        yy, xx = v - py, u - px
        e1 = (xx * cth + yy * sth) / rx
        e2 = (-xx * sth + yy * cth) / ry
        alpha = torch.exp(-0.5 * (e1 * e1 + e2 * e2) ** 2 * 4.0)            # smooth, flat-topped blob
        if not all(have):
            alpha = alpha * torch.tensor(have, dtype=dt, device=device).view(b, 1, 1)
        alpha = alpha[:, None]
        field = (1.0 - alpha) * field + alpha * torch.stack((my, mx), 1)
    max_px = col([[d["max_px"]] for d in draws])[0][:, None]
    norm = field.norm(dim=1, keepdim=True)
    field = torch.where(norm > max_px, field * (norm.clamp_min(1e-12).reciprocal() * max_px), field)
    return (field / MOTION_SCALE).to(torch.float32)


def kernel_blur(sharp: torch.Tensor, motion: torch.Tensor, border: str = "zeros") -> torch.Tensor:
    """Blur ``sharp`` ((C,H,W) or (B,C,H,W)) along a known ``motion`` ((2,H,W) / (B,2,H,W), pixels/20).

    ``border="zeros"`` is exactly :func:`neurmap.core.reblur` (samples outside the image are zero, so
    strong motion darkens the borders). ``"replicate"`` / ``"reflect"`` pad the image (and replicate the
    motion) by the largest displacement first and crop afterwards: identical to ``reblur`` wherever the
    taps stay inside the image, without the dark border.
    """
    single = sharp.dim() == 3
    x = sharp.unsqueeze(0) if single else sharp
    m = motion.unsqueeze(0) if motion.dim() == 3 else motion
    if x.dim() != 4 or m.dim() != 4 or m.shape[1] != 2:
        raise InputError(f"kernel_blur needs sharp (C,H,W)/(B,C,H,W) and motion (2,H,W)/(B,2,H,W), "
                         f"got {tuple(sharp.shape)} and {tuple(motion.shape)}")
    if m.shape[0] == 1 and x.shape[0] > 1:
        m = m.expand(x.shape[0], -1, -1, -1)
    m = m.to(x.dtype)
    if border == "zeros":
        out = reblur(x, m)
    elif border in ("replicate", "reflect"):
        pad = int(math.ceil(float(m.detach().abs().max()) * MOTION_SCALE)) + 1 if m.numel() else 1
        h, w = x.shape[-2:]
        mode = border if (border == "replicate" or (pad < h and pad < w)) else "replicate"
        xp = F.pad(x, (pad, pad, pad, pad), mode=mode)
        mp = F.pad(m, (pad, pad, pad, pad), mode="replicate")
        out = reblur(xp, mp)[..., pad:pad + h, pad:pad + w]
    else:
        raise InputError(f"border must be 'zeros', 'replicate' or 'reflect', got {border!r}")
    return out[0] if single else out


# ------------------------------------------------------------------------------------------------
# Handheld camera shake from still images
# ------------------------------------------------------------------------------------------------


def affine_matrix(centre: tuple[float, float], angle_deg: float, zoom: float, dx: float, dy: float) -> np.ndarray:
    """The 2x3 matrix ``cv2.warpAffine`` takes (source -> view): a rotation and zoom about ``centre``, then a shift."""
    mat = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), float(angle_deg), float(zoom))
    mat[0, 2] += dx
    mat[1, 2] += dy
    return mat


def affine_blur_motion(mats: Sequence[np.ndarray], times: Sequence[float], ref: np.ndarray, h: int, w: int,
                       taps: int = TAPS) -> torch.Tensor:
    """Known per-pixel linear blur of a frame averaged from affine views, (2,H,W) (dy, dx) in pixels/20.

    View k shows ``cv2.warpAffine(src, mats[k])`` at time ``times[k]``; ``ref`` is the sharp view's matrix.
    ``W_k = ref · mats[k]⁻¹`` maps an output pixel x to where view k samples the sharp view, so the blurry
    frame is mean_k S(W_k(x)) and :func:`reblur` wants taps along x ± 20·m(x). m is the least-squares line
    through the displacements d_k = W_k(x) − x over time (no intercept: the sharp view is the reference),
    scaled so its 15 taps have the second moment of the n views: the truth then does not depend on how many
    sub-frames rendered the blur. With ``taps`` views on a straight path it is exactly the endpoint
    formula (W_last − W_first)/2/20; with fewer views the endpoints alone would under-read (9 views span
    8/9 of the exposure, which reblur's 15 taps at ±20·m do not know).
    """
    tau = np.asarray(times, np.float64)
    if len(mats) != len(tau) or len(tau) == 0:
        raise InputError(f"affine_blur_motion needs one time per view, got {len(mats)} views and {len(tau)} times")
    den = float((tau * tau).sum())
    if len(tau) < 2 or den <= 0:
        return torch.zeros(2, h, w)
    t_rms = math.sqrt((taps + 1) / (3.0 * (taps - 1)))              # rms of linspace(-1, 1, taps)
    gain = math.sqrt(den / len(tau)) / den / t_rms / MOTION_SCALE   # LS slope × rms(τ) / rms(taps), in /20
    full = lambda m: np.vstack([np.asarray(m, np.float64).reshape(2, 3), [0.0, 0.0, 1.0]])
    r = full(ref)
    # d_k(x) = (R A_k⁻¹ − I) x is affine in x: sum the weighted maps first, then apply once per pixel
    acc = sum(t * (r @ np.linalg.inv(full(m)) - np.eye(3)) for t, m in zip(tau, mats))[:2] * gain
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    dx = acc[0, 0] * xs + acc[0, 1] * ys + acc[0, 2]
    dy = acc[1, 0] * xs + acc[1, 1] * ys + acc[1, 2]
    return torch.from_numpy(np.stack((dy, dx)).astype(np.float32))


def _to_rgb_hwc(image) -> np.ndarray:
    if isinstance(image, (str, Path)):
        t = read_image(image)
    elif isinstance(image, torch.Tensor):
        t = image.detach().to("cpu", torch.float32)
        if t.dim() == 2:
            t = t[None]
        if t.dim() != 3 or t.shape[0] not in (1, 3):
            raise InputError(f"an image tensor must be (3,H,W) or (1,H,W), got {tuple(image.shape)}")
        t = t.expand(3, -1, -1).clamp(0.0, 1.0)
    else:
        t = array_to_tensor(np.asarray(image), bgr=False)          # e.g. skimage.data.astronaut()
    return np.ascontiguousarray(t.numpy().transpose(1, 2, 0), dtype=np.float32)


def _cover_resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Scale to cover (h, w) keeping the aspect ratio, then centre-crop."""
    ih, iw = img.shape[:2]
    if (ih, iw) == (h, w):
        return img
    sc = max(h / ih, w / iw)
    nh, nw = max(h, int(math.ceil(ih * sc))), max(w, int(math.ceil(iw * sc)))
    interp = cv2.INTER_AREA if sc < 1 else cv2.INTER_LINEAR
    r = cv2.resize(img, (nw, nh), interpolation=interp)
    top, left = (nh - h) // 2, (nw - w) // 2
    return np.ascontiguousarray(r[top:top + h, left:left + w])


def _random_waves(rng: np.random.Generator, n_waves: int, freq: tuple[float, float]) -> tuple:
    """Parameters of a random smooth 1-D signal: a sum of sinusoids with amplitude ~ 1/f."""
    f = rng.uniform(freq[0], freq[1], n_waves)
    return f, rng.normal(0.0, 1.0, n_waves) / f, rng.uniform(0.0, 2 * np.pi, n_waves)


def _eval_waves(waves: tuple, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Value and time derivative of :func:`_random_waves`' signal at times ``t``."""
    f, a, ph = waves
    arg = 2 * np.pi * f[:, None] * np.asarray(t, np.float64)[None, :] + ph[:, None]
    return (a[:, None] * np.sin(arg)).sum(0), (a[:, None] * 2 * np.pi * f[:, None] * np.cos(arg)).sum(0)


def camera_shake_clip(
    images,
    n_frames: int = 16,
    sub_frames: int = 9,
    max_blur_px: float = 15.0,
    max_rotation_deg: float = 1.0,
    exposure: float = 1.0,
    size: Optional[tuple[int, int]] = None,
    seed: Optional[int] = 0,
    hide_borders: bool = True,
    motion: bool = False,
) -> tuple[torch.Tensor, ...]:
    """A handheld-shake clip made from still photos: (blurry, sharp), each (n_frames, 3, H, W) in [0, 1].

    ``images``: one image or a list (RGB arrays such as ``skimage.data.astronaut()``, (3,H,W) tensors
    or file paths); the clip shows them in turn, ``n_frames / len(images)`` frames each, all resized
    (cover + centre crop) to ``size = (H, W)`` (default: the first image's size).
    The camera follows a smooth random trajectory (translation plus in-plane rotation, sums of random
    sinusoids of 0.08-0.4 cycles per frame). Output frame t integrates ``sub_frames`` views spread over
    an exposure of ``exposure`` frame intervals, each warped with ``cv2.warpAffine``, averaged in linear
    light; the sharp frame is the view at the exposure's middle. The trajectory is scaled so the
    fastest frame smears ``max_blur_px`` pixels of translation plus up to ``max_rotation_deg`` degrees of
    rotation. ``hide_borders`` zooms in just enough that the shaken view stays inside the photo (capped
    at 1.25x; beyond it borders are mirrored). Reproducible with ``seed``.
    ``motion=True`` also returns each frame's known per-pixel blur, (n_frames, 2, H, W) in pixels/20
    (:func:`affine_blur_motion`): ``reblur(sharp[t], motion[t])`` approximates ``blurry[t]``.
    """
    if isinstance(images, (np.ndarray, torch.Tensor, str, Path)):
        images = [images]
    imgs = [_to_rgb_hwc(im) for im in images]
    if not imgs:
        raise InputError("camera_shake_clip needs at least one image")
    n_frames, sub_frames = int(n_frames), int(sub_frames)
    if n_frames < 1 or sub_frames < 1:
        raise InputError(f"n_frames and sub_frames must be >= 1, got {n_frames} and {sub_frames}")
    if not 0 < exposure <= 1.0:
        raise InputError(f"exposure must be in (0, 1] frame intervals, got {exposure}")
    h, w = (int(size[0]), int(size[1])) if size is not None else imgs[0].shape[:2]
    linear = [srgb_to_linear(_cover_resize(im, h, w)) for im in imgs]

    rng = np.random.default_rng(seed)
    freq = (0.08, 0.4)
    waves = [_random_waves(rng, 4, freq), _random_waves(rng, 4, freq), _random_waves(rng, 3, freq)]  # x, y, angle
    # scale so the fastest exposure smears 60-100 % of max_blur_px / max_rotation_deg
    dense = np.linspace(0.0, float(n_frames), 64 * n_frames + 1)
    (x_d, vx_d), (y_d, vy_d), (th_d, vth_d) = (_eval_waves(wv, dense) for wv in waves)
    scale_t = rng.uniform(0.6, 1.0) * max_blur_px / (max(np.hypot(vx_d, vy_d).max(), 1e-9) * exposure)
    scale_r = rng.uniform(0.6, 1.0) * max_rotation_deg / (max(np.abs(vth_d).max(), 1e-9) * exposure)
    mean_x, mean_y, mean_th = x_d.mean(), y_d.mean(), th_d.mean()

    def pose(t: float) -> tuple[float, float, float]:
        (px, _), (py, _), (pth, _) = (_eval_waves(wv, np.array([t])) for wv in waves)
        return ((px[0] - mean_x) * scale_t, (py[0] - mean_y) * scale_t, (pth[0] - mean_th) * scale_r)

    zoom = 1.0
    if hide_borders:
        margin = (np.hypot(x_d - mean_x, y_d - mean_y).max() * scale_t
                  + np.deg2rad(np.abs(th_d - mean_th).max() * scale_r) * 0.5 * math.hypot(h, w))
        zoom = min(1.25, 1.0 / max(0.8, 1.0 - 2.0 * margin / min(h, w)))

    centre = ((w - 1) / 2.0, (h - 1) / 2.0)

    def matrix(t: float) -> np.ndarray:
        dx, dy, ang = pose(t)
        return affine_matrix(centre, ang, zoom, dx, dy)

    def view(src: np.ndarray, mat: np.ndarray) -> np.ndarray:
        return cv2.warpAffine(src, mat, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)

    # sub-frame k of frame t is seen at t + 0.5 + exposure * offs[k]; the sharp frame at t + 0.5
    offs = (np.arange(sub_frames) + 0.5) / sub_frames - 0.5
    blurry = np.empty((n_frames, 3, h, w), np.float32)
    sharp = np.empty((n_frames, 3, h, w), np.float32)
    truth = torch.empty((n_frames, 2, h, w)) if motion else None
    for t in range(n_frames):
        src = linear[min(t * len(linear) // n_frames, len(linear) - 1)]
        acc = np.zeros((h, w, 3), np.float32)
        mats = [matrix(t + 0.5 + exposure * float(o)) for o in offs]
        for mat in mats:
            acc += view(src, mat)
        ref = matrix(t + 0.5)
        blurry[t] = linear_to_srgb(acc / sub_frames).transpose(2, 0, 1)
        sharp[t] = linear_to_srgb(view(src, ref)).transpose(2, 0, 1)
        if truth is not None:
            truth[t] = affine_blur_motion(mats, exposure * offs, ref, h, w)
    out = (torch.from_numpy(blurry).clamp_(0.0, 1.0), torch.from_numpy(sharp).clamp_(0.0, 1.0))
    return out + (truth,) if truth is not None else out
