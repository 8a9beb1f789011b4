"""torch Datasets for NeurMAP: paired GoPro folders, unpaired frames, on-the-fly GoPro-protocol and
kernel-synthesized blur.

Every item is a dict of float32 tensors in [0, 1] (3,H,W) (motion maps: (2,H,W), pixels/20):
``PairedFolder`` / ``SynthesizedGoPro`` -> ``blurry``, ``sharp``; ``KernelBlurred`` -> ``blurry``,
``sharp``, ``motion`` (``SynthesizedGoPro(motion=True)`` too); ``VideoFlowMotion`` -> ``blurry``, ``motion``
(flow-derived); ``UnpairedFolder`` -> one key (``image`` by default). Files are read lazily in
``__getitem__``. Crops/flips use torch's global RNG by default (DataLoader workers are seeded
apart); with ``seed`` set, item ``i`` is reproducible (and ``set_epoch`` changes the draw per epoch).
"""
from __future__ import annotations

import math
from collections.abc import Sequence as SequenceABC
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import InputError
from .io import IMAGE_EXTENSIONS, PathLike, array_to_tensor, list_images, natural_key, read_image
from .synthesis import _lengths, _resolve_range, gopro_pair, kernel_blur, random_motion_field, window_motion
from .transforms import RandomCropFlip, Size, _hw, crop_sample, pad_sample, resize_sample
from .video import FrameSequence, frame_source


class _SeededDataset(Dataset):
    """Per-item generators: None (global RNG) unless ``seed`` is set."""

    seed: Optional[int] = None
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        """Change the random draws of a seeded dataset (call once per epoch)."""
        self.epoch = int(epoch)

    def _generator(self, index: int) -> Optional[torch.Generator]:
        if self.seed is None:
            return None
        mixed = (int(self.seed) * 1_000_003 + int(index) * 7_919 + self.epoch * 104_729) % (2**63 - 1)
        return torch.Generator().manual_seed(mixed)

    def _check_index(self, index: int) -> int:
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for {type(self).__name__} of {n} items")
        return i


# ------------------------------------------------------------------------------------------------
# Paired folders (GoPro layout)
# ------------------------------------------------------------------------------------------------


def _pair_dirs(root: Path, split: Optional[str], blur_dir: str, sharp_dir: str) -> list[tuple[Path, Path]]:
    def is_pair(p: Path) -> bool:
        return (p / blur_dir).is_dir() and (p / sharp_dir).is_dir()

    if split is not None:
        base = root / split
        if not base.is_dir():
            have = sorted(p.name for p in root.iterdir() if p.is_dir())
            raise InputError(f"split folder {base} does not exist (folders in {root}: {have}); check split")
    else:
        base = root
    if is_pair(base):                                       # <root>/{blur,sharp}/
        return [(base / blur_dir, base / sharp_dir)]
    subdirs = sorted((p for p in base.iterdir() if p.is_dir()), key=lambda p: p.name)
    seqs = [p for p in subdirs if is_pair(p)]
    if seqs:                                                # <root>/<seq>/{blur,sharp}/
        return [(p / blur_dir, p / sharp_dir) for p in seqs]
    splits = [p for p in subdirs if any(is_pair(q) for q in p.iterdir() if q.is_dir())]
    if len(splits) == 1 and split is None:                  # <root>/<split>/<seq>/{blur,sharp}/
        return _pair_dirs(splits[0], None, blur_dir, sharp_dir)
    if splits:
        raise InputError(
            f"{root} holds several splits {[p.name for p in splits]}; choose one with split=... (e.g. 'train')"
        )
    raise InputError(
        f"no '{blur_dir}'/'{sharp_dir}' folders found under {base}; expected <root>/<split>/<sequence>/"
        f"{{{blur_dir},{sharp_dir}}}/*.png (GoPro layout) or <root>/{{{blur_dir},{sharp_dir}}}/"
    )


class PairedFolder(_SeededDataset):
    """Blurry/sharp pairs matched by file name.

    Layouts: ``<root>/<split>/<seq>/{blur,sharp}/*`` (GoPro; pick ``split``, or it is found when there is
    only one), ``<root>/<seq>/{blur,sharp}/*`` and ``<root>/{blur,sharp}/*``. Files are matched by name
    without extension. ``strict`` (default) raises :class:`InputError` on names present on one side only;
    otherwise those are skipped. ``pairs[i]`` = (blur path, sharp path); ``names[i]`` = "seq/name".
    """

    def __init__(self, root: PathLike, split: Optional[str] = None, crop_size: Optional[Size] = None,
                 flip: bool = False, resize: Optional[Size] = None, blur_dir: str = "blur",
                 sharp_dir: str = "sharp", strict: bool = True, seed: Optional[int] = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"paired data folder {self.root} does not exist or is not a folder")
        self.transform = RandomCropFlip(crop_size, flip=flip, resize=resize)
        self.seed = seed
        self.pairs: list[tuple[Path, Path]] = []
        self.names: list[str] = []
        for bdir, sdir in _pair_dirs(self.root, split, blur_dir, sharp_dir):
            blurs = {p.stem: p for p in list_images(bdir)}
            sharps = {p.stem: p for p in list_images(sdir)}
            only_b, only_s = sorted(set(blurs) - set(sharps)), sorted(set(sharps) - set(blurs))
            if strict and (only_b or only_s):
                raise InputError(
                    f"unmatched files in {bdir.parent}: {len(only_b)} only in '{bdir.name}' {only_b[:5]}, "
                    f"{len(only_s)} only in '{sdir.name}' {only_s[:5]}; give both folders the same file names "
                    "(or pass strict=False to skip them)"
                )
            seq = bdir.parent.name if bdir.parent != self.root else ""
            for stem in sorted(set(blurs) & set(sharps), key=natural_key):
                self.pairs.append((blurs[stem], sharps[stem]))
                self.names.append(f"{seq}/{stem}" if seq else stem)
        if not self.pairs:
            raise InputError(
                f"no blurry/sharp image pairs ({', '.join(IMAGE_EXTENSIONS)}) found under {self.root}; "
                "check the folder and the blur_dir/sharp_dir names"
            )

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        i = self._check_index(index)
        bp, sp = self.pairs[i]
        blurry, sharp = read_image(bp), read_image(sp)
        if blurry.shape != sharp.shape:
            raise InputError(f"pair {self.names[i]}: blurry {tuple(blurry.shape)} and sharp {tuple(sharp.shape)} differ in size")
        return self.transform({"blurry": blurry, "sharp": sharp}, self._generator(i))


# ------------------------------------------------------------------------------------------------
# Unpaired frames
# ------------------------------------------------------------------------------------------------


class UnpairedFolder(_SeededDataset):
    """Frames of an image folder or a video file (see :func:`frame_source`), read lazily: ``{key: frame}``."""

    def __init__(self, path: PathLike, key: str = "image", crop_size: Optional[Size] = None, flip: bool = False,
                 resize: Optional[Size] = None, seed: Optional[int] = None) -> None:
        self.source = frame_source(path)
        self.key = key
        self.transform = RandomCropFlip(crop_size, flip=flip, resize=resize)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        i = self._check_index(index)
        return self.transform({self.key: self.source[i]}, self._generator(i))


# ------------------------------------------------------------------------------------------------
# On-the-fly GoPro protocol
# ------------------------------------------------------------------------------------------------


class SynthesizedGoPro(_SeededDataset):
    """GoPro-protocol pairs drawn on the fly from a folder (or video) of 240 fps sharp frames.

    Item ``i`` starts a window at frame ``frame_range[0] + i`` (shifted back where it would run past
    ``frame_range[1]``) with a random length from ``n_frames`` (inclusive (low, high), default 7-13;
    ``odd_only`` keeps lengths odd so the sharp frame is exactly the middle one). The same crop/flip is
    applied to all frames before averaging. ``frame_range`` = (first, end) keeps training and held-out
    frames disjoint. ``motion=True`` adds ``motion``: the window's blur from DIS flow between its sharp frames
    (:func:`window_motion`), computed on the crop after the flip.
    """

    def __init__(self, folder: PathLike, n_frames=(7, 13), frame_range: Optional[tuple[int, int]] = None,
                 crop_size: Optional[Size] = None, flip: bool = True, resize: Optional[Size] = None,
                 odd_only: bool = True, seed: Optional[int] = None, cache: bool = False, motion: bool = False) -> None:
        self.motion = bool(motion)
        self.source = frame_source(folder)
        # cache: frames kept decoded (8-bit, ~2.8 MB per 720p frame) and cropped before conversion — the
        # same items, without decoding 7-13 PNGs and averaging full frames for every 128² crop
        self.cache: Optional[dict] = {} if cache else None
        self.crop_hw = _hw(crop_size) if crop_size is not None else None
        self.flip, self.resize = bool(flip), resize
        self.lo, self.hi = _resolve_range(frame_range, len(self.source), folder)
        lengths = _lengths(n_frames)
        if odd_only and any(n % 2 for n in lengths):
            lengths = [n for n in lengths if n % 2]
        self.lengths = [n for n in lengths if n <= self.hi - self.lo]
        if not self.lengths:
            raise InputError(
                f"frames [{self.lo}, {self.hi}) of {folder} are fewer than the shortest window "
                f"{min(lengths)}; widen frame_range or lower n_frames"
            )
        self.transform = RandomCropFlip(crop_size, flip=flip, resize=resize)
        self.seed = seed
        self.deferred = False    # True: cached windows come back as 8-bit frames to average on the training device

    def __len__(self) -> int:
        return self.hi - self.lo - min(self.lengths) + 1

    def __getitem__(self, index: int) -> dict:
        i = self._check_index(index)
        g = self._generator(i)
        n = self.lengths[int(torch.randint(0, len(self.lengths), (1,), generator=g))]
        first = min(self.lo + i, self.hi - n)
        if self.cache is not None and self.resize is None:
            fast = self._cached_window(first, n, g)
            if fast is not None:
                return fast
        frames = torch.cat([self.source[first + k] for k in range(n)], 0)        # (3n,H,W)
        frames = self.transform({"frames": frames}, g)["frames"]
        return self._item(frames.view(n, 3, *frames.shape[-2:]))

    def _item(self, window: torch.Tensor) -> dict:
        blurry, sharp = gopro_pair(window)
        out = {"blurry": blurry, "sharp": sharp}
        if self.motion:
            out["motion"] = window_motion(window)
        return out

    def _frame_u8(self, k: int) -> torch.Tensor:
        if k not in self.cache:
            self.cache[k] = (self.source[k] * 255.0).round_().to(torch.uint8)
        return self.cache[k]

    def _cached_window(self, first: int, n: int, g: Optional[torch.Generator]) -> Optional[dict]:
        """The item the uncached path makes (same random draws, in the same order), from cached frames;
        None where the frames are smaller than the crop (the padded path handles those)."""
        frames = [self._frame_u8(first + k) for k in range(n)]
        ih, iw = frames[0].shape[-2:]
        if self.crop_hw is not None:
            ch, cw = self.crop_hw
            if ih < ch or iw < cw:
                return None
            top = int(torch.randint(0, ih - ch + 1, (1,), generator=g))
            left = int(torch.randint(0, iw - cw + 1, (1,), generator=g))
            frames = [f[:, top:top + ch, left:left + cw] for f in frames]
        stack = torch.stack(frames)
        flip = self.flip and bool(torch.rand((), generator=g) < 0.5)
        if self.deferred:      # the training device averages the (flipped) 8-bit frames (device_synthesis)
            stack = stack.flip(-1) if flip else stack
            return {"recipe": "gopro", "frames": stack,
                    **({"motion": window_motion(stack.float().div_(255.0))} if self.motion else {})}
        stack = stack.float().div_(255.0)
        if flip:
            stack = stack.flip(-1)
        return self._item(stack)


class VideoFlowMotion(_SeededDataset):
    """Frames of a blurry video with their flow-derived blur: items ``blurry`` and ``motion`` ((2,H,W), pixels/20).

    ``path``: a video file or image folder, or a sequence of frames in memory ((3,H,W) tensors in [0, 1]).

    The motion prior for M on real footage that has no ground truth (:mod:`neurmap.core.flow_motion`): frame t's
    blur is the central-difference flow of its neighbours × the exposure fraction — ``exposure`` when the camera
    reports it, else :func:`~neurmap.core.exposure.estimate_exposure` on the clip. Only frames inside
    ``frame_range`` are read, also as neighbours (one-sided flow at its ends), so held-out frames next to it never
    leak in. The flow runs once, on first use, at ``flow_scale`` of the frame size (0.5: 0.25 s instead of 1.9 s
    per 720p pair, the same mean flow to 0.1 % on the car clip), and stays in memory (uint8 frames and fp16
    motion, 9 MB per 720p frame). Each item is a random crop (and flip) of one frame and its motion.
    """

    motion = True      # items always carry their blur (as ``motion=True`` sources do)

    def __init__(self, path, frame_range: Optional[tuple[int, int]] = None, exposure: Optional[float] = None,
                 crop_size: Optional[Size] = None, flip: bool = True, flow_scale: float = 0.5,
                 seed: Optional[int] = None) -> None:
        from ..flow_motion import check_exposure

        # a folder or video, or frames already in memory ((3,H,W) tensors in [0, 1]: a synthesized clip)
        self.source = frame_source(path) if isinstance(path, (str, Path)) else path
        path = path if isinstance(path, (str, Path)) else "the clip"
        self.lo, self.hi = _resolve_range(frame_range, len(self.source), path)
        need = 2 if exposure is not None else 3
        if self.hi - self.lo < need:
            raise InputError(f"video_flow needs >= {need} consecutive frames of {path} (frames [{self.lo}, {self.hi}) "
                             "selected); widen frame_range" + ("" if exposure is not None else " or give exposure"))
        self.exposure = None if exposure is None else check_exposure(exposure)
        if not 0.05 <= float(flow_scale) <= 1.0:
            raise InputError(f"flow_scale {flow_scale} must be in [0.05, 1]")
        self.flow_scale = float(flow_scale)
        self.transform = RandomCropFlip(crop_size, flip=flip)
        self.seed = seed
        self._frames: Optional[list] = None
        self._motion: Optional[list] = None

    def __len__(self) -> int:
        return self.hi - self.lo

    def prepare(self) -> float:
        """Read the frames, estimate the exposure (unless given) and derive every frame's blur; once. Returns
        the exposure fraction used."""
        if self._motion is None:
            from ..exposure import estimate_exposure
            from ..flow_motion import FlowEstimator, clip_velocities, velocity_to_motion

            frames = [self.source[i] for i in range(self.lo, self.hi)]
            if self.exposure is None:
                self.exposure = estimate_exposure(frames).exposure
            vel = clip_velocities(frames, FlowEstimator(scale=self.flow_scale))
            self._frames = [(f * 255.0).round_().to(torch.uint8) for f in frames]
            self._motion = [velocity_to_motion(v, self.exposure).half() for v in vel]
        return float(self.exposure)

    def __getitem__(self, index: int) -> dict:
        i = self._check_index(index)
        self.prepare()
        sample = {"blurry": self._frames[i].float().div_(255.0), "motion": self._motion[i].float()}
        return self.transform(sample, self._generator(i))


# ------------------------------------------------------------------------------------------------
# Kernel-synthesized blur
# ------------------------------------------------------------------------------------------------


class _TensorList(SequenceABC):
    def __init__(self, items) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _as_sharp(item, key: Optional[str]) -> torch.Tensor:
    if isinstance(item, dict):
        keys = [key] if key else ["sharp", "image"]
        for k in keys:
            if k in item:
                item = item[k]
                break
        else:
            raise InputError(f"sharp_source items are dicts without any of the keys {keys}; pass key=...")
    if isinstance(item, (str, Path)):
        return read_image(item)
    if isinstance(item, torch.Tensor):
        t = item.detach().to(torch.float32)
        if t.dim() == 2:
            t = t[None]
        if t.dim() != 3 or t.shape[0] not in (1, 3):
            raise InputError(f"sharp images must be (3,H,W) tensors, got {tuple(item.shape)}")
        return t.expand(3, -1, -1).clamp(0.0, 1.0)
    return array_to_tensor(np.asarray(item), bgr=False)


class KernelBlurred(_SeededDataset):
    """Sharp frames blurred with :func:`kernel_blur` along a random smooth motion field (known truth).

    ``sharp_source``: an image folder / video / image path (via :func:`frame_source`), or any indexable
    of (3,H,W) tensors, RGB arrays, image paths or dicts (``key``, default "sharp" then "image").
    Items: ``blurry``, ``sharp``, ``motion`` ((2,H,W), dy/dx in pixels/20, as the motion net predicts).
    The field comes from :func:`random_motion_field` (``max_px``, ``n_regions``), drawn on the crop plus
    a margin of ``max_px`` so crop edges see real neighbouring content; ``border`` handles the image's
    own edges (default ``replicate``: no dark rims; ``zeros`` is exact ``reblur``). With ``seed`` set,
    item ``i`` always gets the same crop and motion (use for evaluation sets). ``motion=False`` leaves
    ``motion`` out of the items (the same blur): an unpaired source whose field M must not be told, since
    unpaired data has no ground truth.
    """

    def __init__(self, sharp_source, crop_size: Optional[Size] = None, flip: bool = False,
                 resize: Optional[Size] = None, max_px: float = 20.0, min_px: float = 2.0,
                 n_regions: tuple[int, int] = (0, 3), border: str = "replicate", key: Optional[str] = None,
                 seed: Optional[int] = None, motion: bool = True) -> None:
        self.motion = bool(motion)
        if isinstance(sharp_source, (str, Path)):
            self.source = frame_source(sharp_source)
        elif isinstance(sharp_source, torch.Tensor):
            self.source = _TensorList(sharp_source.unbind(0) if sharp_source.dim() == 4 else [sharp_source])
        elif isinstance(sharp_source, np.ndarray) and sharp_source.ndim in (2, 3):
            self.source = _TensorList([sharp_source])                # one RGB / gray image array
        elif isinstance(sharp_source, (FrameSequence, Dataset)) or hasattr(sharp_source, "__getitem__"):
            self.source = sharp_source
        else:
            self.source = _TensorList(sharp_source)
        if len(self.source) == 0:
            raise InputError("KernelBlurred got an empty sharp_source")
        if border not in ("zeros", "replicate", "reflect"):
            raise InputError(f"border must be 'zeros', 'replicate' or 'reflect', got {border!r}")
        self.key = key
        self.crop = _hw(crop_size) if crop_size is not None else None
        self.resize = _hw(resize) if resize is not None else None
        self.flip_transform = RandomCropFlip(None, flip=flip)
        self.max_px, self.min_px = float(max_px), float(min_px)
        self.n_regions = tuple(n_regions)
        self.border = border
        self.seed = seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        i = self._check_index(index)
        g = self._generator(i)
        sample = {"sharp": _as_sharp(self.source[i], self.key)}
        if self.resize is not None:
            sample = resize_sample(sample, self.resize)
        margin = 0
        if self.crop is not None:
            ch, cw = self.crop
            margin = int(math.ceil(self.max_px)) + 1
            sample = pad_sample(sample, ch, cw)                      # small images: pad to the crop first
            ih, iw = sample["sharp"].shape[-2:]
            top = int(torch.randint(0, ih - ch + 1, (1,), generator=g))
            left = int(torch.randint(0, iw - cw + 1, (1,), generator=g))
            t0, l0 = max(0, top - margin), max(0, left - margin)     # crop + margin, within the image
            t1, l1 = min(ih, top + ch + margin), min(iw, left + cw + margin)
            sample = crop_sample(sample, t0, l0, t1 - t0, l1 - l0)
            inner = (top - t0, left - l0, ch, cw)
        sharp = sample["sharp"]
        motion = random_motion_field(sharp.shape[-2], sharp.shape[-1], generator=g, max_px=self.max_px,
                                     min_px=self.min_px, n_regions=self.n_regions)
        blurry = kernel_blur(sharp, motion, border=self.border).clamp(0.0, 1.0)
        out = {"blurry": blurry, "sharp": sharp, "motion": motion}
        if self.crop is not None:
            out = crop_sample(out, *inner)
        out = {k: v.contiguous() for k, v in out.items()}
        out = self.flip_transform(out, g)
        if not self.motion:
            del out["motion"]
        return out


class WeightedMix(Dataset):
    """Several sources drawn in fixed ratios: a uniform index over ``len(self)`` lands in source k with
    probability ``weights[k] / sum(weights)``, whatever the sources' sizes (a 40-frame GoPro clip and 600
    photos can be mixed 1:1). Index -> (source, item) is a pure function, so exact resume is unaffected."""

    SLOTS = 1_000_000

    def __init__(self, datasets: list, weights: list[float]) -> None:
        if len(datasets) != len(weights) or not datasets:
            raise InputError("WeightedMix needs one weight per source")
        w = [float(x) for x in weights]
        if any(not x >= 0 for x in w) or sum(w) <= 0:
            raise InputError(f"source weights must be >= 0 with a positive sum, got {weights}")
        self.datasets = list(datasets)
        edges = np.cumsum([0.0] + w) / sum(w) * self.SLOTS
        self.edges = [int(round(e)) for e in edges]

    def __len__(self) -> int:
        return self.SLOTS

    def __getitem__(self, index: int) -> dict:
        i = int(index) % self.SLOTS
        k = next(j for j in range(len(self.datasets)) if i < self.edges[j + 1])
        lo, hi = self.edges[k], self.edges[k + 1]
        return self.datasets[k][(i - lo) * len(self.datasets[k]) // (hi - lo)]


__all__ = ["PairedFolder", "UnpairedFolder", "SynthesizedGoPro", "KernelBlurred", "VideoFlowMotion", "WeightedMix"]
