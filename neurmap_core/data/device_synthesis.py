"""Blur synthesis on the training device, in batch (``synthesis_device: cuda``).

On the CPU path a worker process makes each pair whole: OpenCV warps for camera shake, a 15-tap
``grid_sample`` for kernel blur, a linear-light mean for GoPro windows. Here the workers only cut the sharp
8-bit windows and draw the item's random parameters — the very draws of :meth:`PhotoPairs.draw` and
:class:`SynthesizedGoPro`, from the same per-item generator, so a batch is still a pure function of
(seed, iteration) — and :func:`pack` stacks them; the main process then :func:`render` s the whole batch
on the device:

* camera shake: each sub-frame view is ``F.affine_grid`` + ``F.grid_sample`` (bilinear, mirrored borders =
  OpenCV's ``BORDER_REFLECT_101``) of the window in linear light, averaged; only the crop is sampled;
* kernel blur: the drawn fields evaluated in batch (:func:`motion_fields`) and :func:`kernel_blur`;
* GoPro protocol: the mean of the window's frames in linear light, the middle frame as target;
* then clipped highlights (the gain before integration), Poisson–Gaussian noise (the workers' own normal
  draws) and the final clip. JPEG stays on the CPU (OpenCV's codec, :func:`jpeg`: one copy of the chosen crops
  off and back onto the device): there is no codec in torch, and skipping it would train on a different
  distribution than the CPU recipe. The small rescale stays in the worker too: it is one ``cv2.resize`` of the
  photo before the cut (1-8 ms of one core here), and doing it on the device would ship photos, not windows.

Mirrors and quarter turns are applied to the window before the blur instead of to the pair after it: the blur
parameters are symmetric under them (isotropic paths and fields, centres symmetric about the crop), so the
pairs have the same distribution, and motion targets need no turning. The same torch code runs on the CPU,
which is how it is tested: pairs match the CPU path's statistics, not its bits (bilinear weights, float order).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .photos import add_camera_noise, jpeg
from .synthesis import affine_blur_motion, affine_matrix, kernel_blur, linear_to_srgb, motion_fields, srgb_to_linear


def defer(ds: Dataset, on: bool = True) -> int:
    """Make every source inside ``ds`` (mixes, concatenations, subsets) that can hand its blur to the device
    return recipes instead of pairs; returns how many sources did."""
    n = 0
    if hasattr(ds, "deferred"):
        ds.deferred, n = bool(on), 1
    for child in list(getattr(ds, "datasets", [])) + ([ds.dataset] if hasattr(ds, "dataset") else []):
        n += defer(child, on)
    return n


def _full(m: np.ndarray) -> np.ndarray:
    return np.vstack([np.asarray(m, np.float64).reshape(2, 3), [0.0, 0.0, 1.0]])


def shake_thetas(poses: np.ndarray, centre: tuple[float, float], side: int, margin: int, crop: int) -> np.ndarray:
    """``F.affine_grid`` matrices (n,2,3) of the views ``cv2.warpAffine(window, affine_matrix(...))`` would make,
    restricted to the crop: output crop pixel (normalised, align_corners) -> window pixel -> source pixel of the
    inverse warp -> normalised source coordinates."""
    to_src = np.array([[2.0 / (side - 1), 0.0, -1.0], [0.0, 2.0 / (side - 1), -1.0], [0.0, 0.0, 1.0]])
    half = (crop - 1) / 2.0
    from_out = np.array([[half, 0.0, half + margin], [0.0, half, half + margin], [0.0, 0.0, 1.0]])
    mats = [np.linalg.inv(_full(affine_matrix(centre, ang, 1.0, dx, dy))) for dx, dy, ang in poses]
    return np.stack([(to_src @ m @ from_out)[:2] for m in mats]).astype(np.float32)


def _degrade(items: list[dict], crop: int) -> dict:
    """Per-item noise (mask, shot, read, normal draws as fp16) and JPEG quality (0 = none)."""
    z = np.zeros((len(items), crop, crop, 3), np.float16)
    shot, read, noisy = (np.zeros(len(items), np.float32) for _ in range(3))
    for j, it in enumerate(items):
        if it["noise"] is not None:
            shot[j], read[j], z[j], noisy[j] = it["noise"][0], it["noise"][1], it["noise"][2], 1.0
    return {"noisy": torch.from_numpy(noisy), "shot": torch.from_numpy(shot), "read": torch.from_numpy(read),
            "z": torch.from_numpy(z), "jpeg": torch.tensor([it["jpeg"] or 0 for it in items])}


def _pack_shake(items: list[dict]) -> dict:
    crop, margin, side = items[0]["crop"], items[0]["margin"], items[0]["window"].shape[0]
    views = max(len(it["poses"]) for it in items)
    theta = np.zeros((len(items), views, 2, 3), np.float32)
    weight = np.zeros((len(items), views), np.float32)
    mid = np.zeros((len(items), 2, 3), np.float32)
    for j, it in enumerate(items):
        n = len(it["poses"])
        th = shake_thetas(it["poses"], it["centre"], side, margin, crop)
        theta[j, :n], theta[j, n:], weight[j, :n], mid[j] = th, th[n // 2], 1.0 / n, th[n // 2]
    g = {"window": torch.from_numpy(np.stack([it["window"] for it in items])), "theta": torch.from_numpy(theta),
         "weight": torch.from_numpy(weight), "theta_mid": torch.from_numpy(mid),
         "gain": torch.tensor([it["gain"] or 1.0 for it in items], dtype=torch.float32), **_degrade(items, crop)}
    if all(it["want_motion"] for it in items):      # known blur of the views, as render_shake(motion=True)
        c = slice(margin, margin + crop)
        truth = []
        for it in items:
            mats = [affine_matrix(it["centre"], ang, 1.0, dx, dy) for dx, dy, ang in it["poses"]]
            n = len(mats)
            truth.append(affine_blur_motion(mats, np.arange(n) - n // 2, mats[n // 2], side, side)[:, c, c])
        g["motion"] = torch.stack(truth)
    return g


def _pack_kernel(items: list[dict]) -> dict:
    return {"window": torch.from_numpy(np.stack([it["window"] for it in items])),
            "fields": [it["field"] for it in items], "motion_wanted": all(it["want_motion"] for it in items),
            **_degrade(items, items[0]["crop"])}


def _pack_gopro(items: list[dict]) -> dict:
    count = [it["frames"].shape[0] for it in items]
    frames = torch.zeros((len(items), max(count), *items[0]["frames"].shape[1:]), dtype=items[0]["frames"].dtype)
    for j, it in enumerate(items):
        frames[j, :count[j]] = it["frames"]
    g = {"frames": frames, "count": torch.tensor(count)}
    if all("motion" in it for it in items):
        g["motion"] = torch.stack([it["motion"] for it in items])
    return g


def _pack_ready(items: list[dict]) -> dict:
    g = {k: torch.stack([it[k] for it in items]) for k in ("blurry", "sharp")}
    if all("motion" in it for it in items):
        g["motion"] = torch.stack([it["motion"] for it in items])
    return g


_PACK = {"shake": _pack_shake, "kernel": _pack_kernel, "gopro": _pack_gopro, "ready": _pack_ready}


def pack(items: list[dict]) -> dict:
    """A batch of recipes (and of finished pairs, from sources that cannot defer) as a few stacked tensors per
    group of one kind and size: cheap to hand from a worker process, and what :func:`render` takes."""
    groups: dict = defaultdict(list)
    for pos, it in enumerate(items):
        kind = it.get("recipe", "ready")
        size = tuple({"gopro": lambda: it["frames"].shape[1:], "ready": lambda: it["sharp"].shape}.get(
            kind, lambda: it["window"].shape)())
        groups[(kind, size)].append(pos)
    out = []
    for (kind, _), where in groups.items():
        out.append({"kind": kind, "index": torch.tensor(where), **_PACK[kind]([items[p] for p in where])})
    return {"n": len(items), "groups": out}


def _noise(blurry: torch.Tensor, g: dict, dev) -> torch.Tensor:
    n = blurry.shape[0]
    per = lambda k: g[k].to(dev).view(n, 1, 1, 1)
    z = g["z"].to(dev).permute(0, 3, 1, 2).float()
    return torch.where(per("noisy") > 0, add_camera_noise(blurry, z, per("shot"), per("read")), blurry)


def _render_shake(g: dict, dev) -> dict:
    lin = srgb_to_linear(g["window"].to(dev).permute(0, 3, 1, 2).float() / 255.0)
    gain = g["gain"].to(dev).view(-1, 1, 1, 1)
    lin = torch.where(lin > 0.8, lin * gain, lin)
    theta, weight = g["theta"].to(dev), g["weight"].to(dev)
    n, views = weight.shape
    crop = g["z"].shape[1]
    size = (n, 3, crop, crop)
    view = lambda th: F.grid_sample(lin, F.affine_grid(th, size, align_corners=True), mode="bilinear",
                                    padding_mode="reflection", align_corners=True)
    acc = torch.zeros(size, device=dev)
    for k in range(views):                      # one batched warp per sub-frame: memory stays at one view
        acc += weight[:, k].view(n, 1, 1, 1) * view(theta[:, k])
    out = {"blurry": _noise(linear_to_srgb(acc.clamp(0, 1)), g, dev),
           "sharp": linear_to_srgb(view(g["theta_mid"].to(dev)).clamp(0, 1))}
    if "motion" in g:
        out["motion"] = g["motion"].to(dev)
    return out


def _render_kernel(g: dict, dev) -> dict:
    win = g["window"].to(dev).permute(0, 3, 1, 2).float() / 255.0
    crop = g["z"].shape[1]
    m = (win.shape[-1] - crop) // 2
    c = slice(m, m + crop)
    field = motion_fields(g["fields"], device=dev)
    blurry = kernel_blur(win, field, border="replicate").clamp(0, 1)[..., c, c]
    out = {"blurry": _noise(blurry, g, dev), "sharp": win[..., c, c]}
    if g["motion_wanted"]:
        out["motion"] = field[..., c, c]
    return out


def _render_gopro(g: dict, dev) -> dict:
    f = g["frames"].to(dev)
    f = f.float() / 255.0 if f.dtype == torch.uint8 else f.float()
    count = g["count"].to(dev)
    w = (torch.arange(f.shape[1], device=dev)[None] < count[:, None]).float() / count[:, None]
    blurry = linear_to_srgb((srgb_to_linear(f) * w.view(*w.shape, 1, 1, 1)).sum(1)).clamp(0, 1)
    out = {"blurry": blurry, "sharp": f[torch.arange(f.shape[0], device=dev), count // 2]}
    if "motion" in g:
        out["motion"] = g["motion"].to(dev)
    return out


def _render_ready(g: dict, dev) -> dict:
    return {k: v.to(dev) for k, v in g.items() if k in ("blurry", "sharp", "motion")}


_RENDER = {"shake": _render_shake, "kernel": _render_kernel, "gopro": _render_gopro, "ready": _render_ready}


def render(packed: dict, device: Optional[torch.device | str] = None) -> dict:
    """The pairs of a :func:`pack` ed batch, in its order, on ``device``: ``blurry``, ``sharp`` (B,3,H,W) in
    [0, 1], and ``motion`` (B,2,H,W) when every item carries it. Deterministic (no atomics), so a resumed run
    renders the same batches."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    parts = [(g["index"], g.get("jpeg"), _RENDER[g["kind"]](g, dev)) for g in packed["groups"]]
    n = packed["n"]
    out = {}
    for key in ("blurry", "sharp", "motion"):
        if not all(key in r for _, _, r in parts):
            continue
        first = parts[0][2][key]
        out[key] = torch.empty((n, *first.shape[1:]), dtype=torch.float32, device=dev)
        for index, _, r in parts:
            out[key][index.to(dev)] = r[key].float()
    quality = torch.zeros(n, dtype=torch.long)
    for index, q, _ in parts:
        if q is not None:
            quality[index] = q
    chosen = torch.nonzero(quality).flatten()
    if len(chosen):                             # JPEG on the CPU (module docstring)
        crops = out["blurry"][chosen.to(dev)].permute(0, 2, 3, 1).cpu().numpy()
        coded = np.stack([jpeg(x, int(q)) for x, q in zip(crops, quality[chosen])])
        out["blurry"][chosen.to(dev)] = torch.from_numpy(coded).permute(0, 3, 1, 2).to(dev)
    for key in ("blurry", "sharp"):
        out[key].clamp_(0, 1)
    return out


__all__ = ["defer", "pack", "render", "shake_thetas"]
