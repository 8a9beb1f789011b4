"""Blurry/sharp pairs over many scenes, synthesized from sharp photos — with a fixed held-out split by photo.

A model trained on one GoPro sequence only knows one scene; `../shared/data/sharp_photos` (BSDS500,
Urban100, Sun–Hays 80) gives hundreds. Each item is made on the fly from one photo:

* ``blur="shake"`` — handheld camera shake: a smooth random camera path during the exposure (translation
  with velocity, acceleration and tremor, plus in-plane rotation about a random centre, so the blur varies
  across the crop), rendered as sub-frame warps averaged in **linear light**; the sharp target is the
  view at mid-exposure. ``exposure`` scales the path (the fraction of the frame interval the shutter is
  open); a share ``p_sharp`` of items is nearly sharp (≤ 1.5 px), so the net learns to leave those alone.
* ``blur="kernel"`` — spatially varying kernel blur with moving regions (:func:`random_motion_field` +
  :func:`kernel_blur`), motion known.

Then what real cameras add (``degrade=True``): clipped highlights (bright areas boosted in linear light
before integration, clipped after — the blurry streaks of lights), Poisson–Gaussian sensor noise, JPEG
re-encoding, and a small random rescale of the photo before cropping. Only the blurry input is degraded
by noise/JPEG; the target stays clean.

The split is by photo name (a hash, stable across machines and folder listings): ``split="train"`` and
``split="heldout"`` never share a photo (:func:`photo_split`).
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import torch

from ..errors import InputError
from .datasets import _SeededDataset
from .io import PathLike, list_images
from .synthesis import (affine_blur_motion, affine_matrix, camera_shake_clip, draw_motion_field, kernel_blur,
                        linear_to_srgb, motion_fields, srgb_to_linear)

HELDOUT_FRACTION = 0.1


def is_heldout(name: str, fraction: float = HELDOUT_FRACTION) -> bool:
    """Whether a photo (by file name) belongs to the held-out split: a stable hash, not the listing order."""
    h = int.from_bytes(hashlib.sha1(Path(name).name.encode()).digest()[:8], "big")
    return (h % 10_000) < fraction * 10_000


def photo_split(root: PathLike, split: str = "train", fraction: float = HELDOUT_FRACTION) -> list[Path]:
    """The photos under ``root`` (recursively, sorted) of one split: ``train``, ``heldout`` or ``all``."""
    if split not in ("train", "heldout", "all"):
        raise InputError(f"photo split {split!r} unknown; use train, heldout or all")
    root = Path(root)
    if not root.exists():
        raise InputError(f"photo folder {root} does not exist; point data at ../shared/data/sharp_photos")
    paths = sorted(p for d in [root, *sorted(q for q in root.rglob("*") if q.is_dir())] for p in list_images(d))
    if split == "all":
        return paths
    want = split == "heldout"
    return [p for p in paths if is_heldout(p.name, fraction) == want]


def _read_rgb_u8(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise InputError(f"cannot read photo {path}; remove it or re-encode it as PNG/JPEG")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def shake_path(rng: np.random.Generator, length_px: float, max_rotation_deg: float, n: int) -> np.ndarray:
    """``n`` camera poses (dx, dy, angle°) along one exposure, centred on mid-exposure.

    Velocity + acceleration + a little tremor (two random sinusoids), rescaled so the path of the image
    centre is ``length_px`` long; the rotation is an independent smooth ramp of up to ``max_rotation_deg``.
    """
    t = np.linspace(-0.5, 0.5, n)
    v, a = rng.normal(size=2), rng.normal(size=2) * rng.uniform(0.0, 2.0)
    f, ph = rng.uniform(1.0, 3.0, 2), rng.uniform(0, 2 * np.pi, 2)
    trem = rng.uniform(0.0, 0.3) * np.stack([np.sin(2 * np.pi * f[i] * t + ph[i]) for i in range(2)], 1)
    xy = v[None] * t[:, None] + 0.5 * a[None] * t[:, None] ** 2 + trem
    seg = np.linalg.norm(np.diff(xy, axis=0), axis=1).sum()
    xy = (xy - xy[n // 2]) * (length_px / max(seg, 1e-9))
    ang = rng.uniform(-1, 1) * max_rotation_deg * (t + rng.normal(0, 0.1) * t ** 2)
    return np.concatenate([xy, ang[:, None]], 1)


def render_shake(linear: np.ndarray, poses: np.ndarray, centre: tuple[float, float],
                 motion: bool = False) -> tuple[np.ndarray, ...]:
    """(blurry, sharp) in linear light: the mean of the warped views, and the mid-exposure view.

    ``motion=True`` adds the known per-pixel blur, (2,H,W) float32 in pixels/20 (:func:`affine_blur_motion`
    over the views, equally spaced in time, relative to the mid-exposure one)."""
    h, w = linear.shape[:2]
    acc = np.zeros_like(linear)
    views, mats = [], [affine_matrix(centre, ang, 1.0, dx, dy) for dx, dy, ang in poses]
    for mat in mats:
        views.append(cv2.warpAffine(linear, mat, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101))
        acc += views[-1]
    mid = len(poses) // 2
    out = (acc / len(poses), views[mid])
    if not motion:
        return out
    truth = affine_blur_motion(mats, np.arange(len(poses)) - mid, mats[mid], h, w).numpy()
    return out + (truth,)


def _orient(a: np.ndarray, flip: bool, k: int, motion: bool = False) -> np.ndarray:
    """Mirror left-right (when ``flip``) then turn by k·90° (``np.rot90``) an H×W×C map; a motion map's
    (dy, dx) vectors turn with it (a mirror negates dx; each quarter turn sends (dy, dx) to (−dx, dy))."""
    if flip:
        a = a[:, ::-1]
        if motion:
            a = a * np.array([1.0, -1.0], np.float32)
    a = np.rot90(a, k)
    if motion:
        for _ in range(k % 4):
            a = np.stack((-a[..., 1], a[..., 0]), -1)
    return a


def camera_noise(x: np.ndarray, rng: np.random.Generator, shot: float, read: float) -> np.ndarray:
    """Poisson–Gaussian noise on a [0, 1] sRGB image (variance ``shot·x + read²``, in linear light)."""
    return add_camera_noise(x, rng.standard_normal(x.shape).astype(np.float32), shot, read)


def add_camera_noise(x, z, shot, read):
    """:func:`camera_noise` with its standard normal draw ``z`` given: numpy (H,W,C), or torch (B,C,H,W) with
    per-item ``shot``/``read`` shaped to broadcast — the device path noises a batch with the workers' draws."""
    lin = srgb_to_linear(x)
    if isinstance(lin, np.ndarray):
        sigma = np.sqrt(np.maximum(shot * lin + read * read, 0.0))
        return linear_to_srgb(np.clip(lin + sigma * z, 0.0, 1.0))
    sigma = (shot * lin + read * read).clamp_min(0.0).sqrt()
    return linear_to_srgb((lin + sigma * z).clamp(0.0, 1.0))


def jpeg(x: np.ndarray, quality: int) -> np.ndarray:
    """Re-encode a [0, 1] RGB image as JPEG at ``quality`` (what phone and camera pipelines do)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor((x * 255 + 0.5).clip(0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


class PhotoPairs(_SeededDataset):
    """Blurry/sharp crops synthesized from sharp photos (module docstring); items ``blurry``, ``sharp``.

    ``photos``: a folder (split by :func:`photo_split`) or a list of paths. ``blur``: ``shake``,
    ``kernel`` or ``mix`` (half each). ``max_px``: the longest blur path in pixels; ``exposure``: a
    fixed fraction, or a ``(lo, hi)`` range drawn per item. ``items_per_photo`` only sets ``len``
    (each draw makes a new crop and blur). With ``seed`` set, item ``i`` is reproducible. ``cache`` keeps
    the decoded photos in memory (training: ~0.6 GB for the 609 training photos). ``motion=True`` adds
    ``motion``, the known per-pixel blur (2,H,W) in pixels/20 (shake: :func:`render_shake`'s; kernel: the
    field it blurred with), oriented with the crop; other outputs are unchanged by it.
    """

    def __init__(self, photos, crop_size: int = 128, split: str = "train", blur: str = "mix",
                 max_px: float = 24.0, max_rotation_deg: float = 1.5, exposure=(0.5, 1.0), p_sharp: float = 0.1,
                 degrade: bool = True, scale: tuple[float, float] = (0.6, 1.0), items_per_photo: int = 1,
                 seed: Optional[int] = None, cache: bool = False, motion: bool = False) -> None:
        self.motion = bool(motion)
        self.paths = photo_split(photos, split) if isinstance(photos, (str, Path)) else [Path(p) for p in photos]
        if not self.paths:
            raise InputError(f"no photos for split {split!r} in {photos}; check the data path")
        if blur not in ("shake", "kernel", "mix"):
            raise InputError(f"blur {blur!r} unknown; use shake, kernel or mix")
        self.crop, self.blur, self.max_px, self.max_rot = int(crop_size), blur, float(max_px), float(max_rotation_deg)
        self.exposure = (float(exposure), float(exposure)) if np.isscalar(exposure) else tuple(map(float, exposure))
        self.p_sharp, self.degrade, self.scale = float(p_sharp), bool(degrade), tuple(map(float, scale))
        self.items_per_photo, self.seed = int(items_per_photo), seed
        self.cache: Optional[dict] = {} if cache else None     # decoded 8-bit photos (~1 MB each), per process
        self.deferred = False      # True: items are recipes the training device renders (device_synthesis.defer)

    def _photo(self, k: int) -> np.ndarray:
        if self.cache is None:
            return _read_rgb_u8(self.paths[k])
        if k not in self.cache:
            self.cache[k] = _read_rgb_u8(self.paths[k])
        return self.cache[k]

    def __len__(self) -> int:
        return len(self.paths) * self.items_per_photo

    def _rng(self, index: int) -> np.random.Generator:
        g = self._generator(index)
        seed = int(torch.randint(0, 2**62, (1,), generator=g)) if g is not None else None
        return np.random.default_rng(seed)

    def _window(self, img: np.ndarray, rng: np.random.Generator, margin: int) -> np.ndarray:
        """Rescale a little, then cut crop + margin (mirrored where the photo is too small); uint8."""
        s = rng.uniform(*self.scale)
        if s < 0.999:
            img = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        need = self.crop + 2 * margin
        ph, pw = max(0, need - img.shape[0]), max(0, need - img.shape[1])
        if ph or pw:
            img = cv2.copyMakeBorder(img, ph // 2, ph - ph // 2, pw // 2, pw - pw // 2, cv2.BORDER_REFLECT_101)
        top = int(rng.integers(0, img.shape[0] - need + 1))
        left = int(rng.integers(0, img.shape[1] - need + 1))
        return img[top:top + need, left:left + need]

    def draw(self, index: int) -> dict:
        """Item ``index``'s window (uint8, crop + 2·margin square) and every random choice that makes its pair, in
        the order the item's generator gives them: the CPU path (:meth:`render`) and the device path
        (:mod:`.device_synthesis`) draw the same parameters. Keys: kind, margin, window, gain (shake, None = no
        clipped highlights), centre and poses (shake), field (kernel: :func:`draw_motion_field`'s), noise (None
        or (shot, read, standard normal (crop, crop, 3) float32)), jpeg (None or the quality), flip, k."""
        i = self._check_index(index)
        rng = self._rng(i)
        img = self._photo(i // self.items_per_photo)
        sharp_item = rng.random() < self.p_sharp
        length = rng.uniform(0.0, 1.5) if sharp_item else rng.uniform(1.5, self.max_px)
        length *= rng.uniform(*self.exposure) / max(self.exposure)
        kind = self.blur if self.blur != "mix" else ("shake" if rng.random() < 0.5 else "kernel")
        margin = int(math.ceil(self.max_px)) + 2
        d = {"kind": kind, "margin": margin, "window": self._window(img, rng, margin), "gain": None, "noise": None,
             "jpeg": None}
        if kind == "shake":
            if self.degrade and rng.random() < 0.3:                   # lights and sky: clip after integration
                d["gain"] = rng.uniform(1.5, 4.0)
            n = max(9, int(math.ceil(length * 1.5)) | 1)
            d["centre"] = (float(rng.uniform(-2, 3) * self.crop), float(rng.uniform(-2, 3) * self.crop))
            d["poses"] = shake_path(rng, length, self.max_rot * length / self.max_px, n)
        else:
            g = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
            side = d["window"].shape[0]
            d["field"] = draw_motion_field(side, side, generator=g, max_px=max(length, 0.1), min_px=0.6 * length)
        if self.degrade:
            if rng.random() < 0.7:
                shot, read = rng.uniform(0, 4e-3), rng.uniform(0, 8e-3)
                d["noise"] = (shot, read, rng.standard_normal((self.crop, self.crop, 3)).astype(np.float32))
            if rng.random() < 0.5:
                d["jpeg"] = int(rng.integers(60, 96))
        d["flip"] = rng.random() < 0.5
        d["k"] = int(rng.integers(0, 4))
        return d

    def render(self, d: dict) -> dict:
        """The pair of one :meth:`draw`, made on the CPU (OpenCV warps): what a worker process makes by default."""
        win, c = d["window"].astype(np.float32) / 255.0, slice(d["margin"], d["margin"] + self.crop)
        if d["kind"] == "shake":
            lin = srgb_to_linear(win)
            if d["gain"] is not None:
                lin = np.where(lin > 0.8, lin * d["gain"], lin).astype(np.float32)
            b, s, *m = render_shake(lin, d["poses"], d["centre"], motion=self.motion)
            blurry, sharp = linear_to_srgb(np.clip(b, 0, 1)[c, c]), linear_to_srgb(np.clip(s, 0, 1)[c, c])
        else:
            t = torch.from_numpy(win.transpose(2, 0, 1).copy())
            field = motion_fields([d["field"]])[0]
            blurry = kernel_blur(t, field, border="replicate").clamp(0, 1).numpy().transpose(1, 2, 0)[c, c]
            sharp = win[c, c]
            m = [field.numpy()]
        if d["noise"] is not None:
            shot, read, z = d["noise"]
            blurry = add_camera_noise(blurry, z, shot, read)
        if d["jpeg"] is not None:
            blurry = jpeg(blurry, d["jpeg"])
        flip, k = d["flip"], d["k"]
        blurry, sharp = _orient(blurry, flip, k), _orient(sharp, flip, k)
        as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1), dtype=np.float32))
        out = {"blurry": as_t(blurry).clamp_(0, 1), "sharp": as_t(sharp).clamp_(0, 1)}
        if self.motion:
            out["motion"] = as_t(_orient(m[0].transpose(1, 2, 0)[c, c], flip, k, motion=True))
        return out

    def recipe(self, d: dict) -> dict:
        """One :meth:`draw` for the device path (:mod:`.device_synthesis`): the window turned by the draw's
        mirror and quarter turn (the blur parameters are symmetric under them, so the pairs keep their
        distribution), the pair left to the training device."""
        d = dict(d, window=np.ascontiguousarray(_orient(d["window"], d["flip"], d["k"])))
        return {"recipe": d["kind"], "want_motion": self.motion, "crop": self.crop, **d}

    def __getitem__(self, index: int) -> dict:
        d = self.draw(index)
        return self.recipe(d) if self.deferred else self.render(d)


def photo_shake_videos(photos: PathLike, n_clips: int = 48, split: str = "train", n_frames: int = 8,
                       size: int = 256, max_blur_px: tuple[float, float] = (8.0, 20.0),
                       exposure: tuple[float, float] = (0.5, 1.0), seed: int = 0) -> list[torch.Tensor]:
    """Blurry handheld clips of ``n_clips`` photos of one split — footage as a user brings it, without its sharp
    frames: each a (n_frames, 3, size, size) :func:`camera_shake_clip` of one photo (spread over the split), its
    shake strength and exposure fraction drawn per clip from ``max_blur_px`` and ``exposure``. Unpaired blurry
    video for NeurMAP training (``photo_clips`` sources), whose blur the neighbours' flow tells."""
    picked, rng = _shake_video_draw(photos, n_clips, split, seed)
    return [camera_shake_clip(str(path), n_frames=n_frames, size=(size, size),
                              max_blur_px=float(rng.uniform(*max_blur_px)), exposure=float(rng.uniform(*exposure)),
                              seed=int(rng.integers(2**31)))[0] for path in picked]


def shake_video_photos(photos: PathLike, n_clips: int = 48, split: str = "train", seed: int = 0) -> list[Path]:
    """The photos :func:`photo_shake_videos` makes its clips of (same arguments): what a validation set leaves out."""
    return _shake_video_draw(photos, n_clips, split, seed)[0]


def _shake_video_draw(photos, n_clips: int, split: str, seed: int) -> tuple[list[Path], np.random.Generator]:
    paths = photo_split(photos, split)
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(paths), size=min(int(n_clips), len(paths)), replace=False)
    return [paths[k] for k in picks], rng


__all__ = ["PhotoPairs", "photo_split", "photo_shake_videos", "shake_video_photos", "is_heldout", "shake_path", "render_shake",
           "camera_noise", "add_camera_noise", "jpeg", "HELDOUT_FRACTION"]
