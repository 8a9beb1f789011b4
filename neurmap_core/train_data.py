"""Training data: one source per config spec (paired, GoPro-240 synthesis, photos, folders, kernel blur) and
batches drawn as a pure function of (seed, iteration, rank), so a resumed run sees the stream it left.

Split from :mod:`.train` (the loop) so the data choices read in one place; ``train`` re-exports these names.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import ConcatDataset, Dataset

from . import data as D
from .data import device_synthesis
from .errors import NeurmapError

if TYPE_CHECKING:
    from .train import TrainConfig


def build_source(spec: Any, crop: int, role: str) -> Dataset:
    """One data source from its config spec; a list of specs is concatenated.

    Spec forms: a path (a ``blur``/``sharp`` tree → paired, else an image folder or video), or a dict with
    ``type``: ``paired`` | ``gopro240`` (GoPro-protocol synthesis from 240 fps frames) | ``photos``
    (camera shake / kernel blur over sharp photos, :class:`PhotoPairs`) | ``folder`` (images or a video) |
    ``kernel`` (kernel-synthesized blur of sharp frames) | ``video_flow`` (ordered frames of a blurry video
    with their flow-derived blur, :class:`VideoFlowMotion`) | ``photo_clips`` (the same for synthesized handheld
    clips of photos, blurry frames only: :func:`photo_shake_videos`), plus ``path`` and options (``frame_range``,
    ``n_frames``, ``max_px``, ``split``, ``blur``, ``exposure``, ...; ``motion: true`` makes photos and
    gopro240 items carry their known motion). A list mixes sources: with a ``weight`` on each, drawn in those
    ratios (:class:`WeightedMix`); without, concatenated.
    """
    if isinstance(spec, list):
        weights = [s.get("weight") if isinstance(s, dict) else None for s in spec]
        if any(w is not None for w in weights):      # ratios: every source needs one
            if any(w is None for w in weights):
                raise NeurmapError(f"data.{role}: give every source a weight, or none (then they are concatenated)")
            parts = [build_source({k: v for k, v in s.items() if k != "weight"}, crop, role) for s in spec]
            return D.WeightedMix(parts, weights)
        return ConcatDataset([build_source(s, crop, role) for s in spec])
    if isinstance(spec, (str, Path)):
        p = Path(spec)
        kind = "paired" if role == "paired" else "folder"
        spec = {"type": kind, "path": str(p)}
    spec = dict(spec)
    kind, path = spec.pop("type", "folder"), spec.pop("path", None)
    if path is None or not Path(path).exists():
        raise NeurmapError(f"data source {path!r} for {role} does not exist; fix data.{role} in the config")
    size = (crop, crop)
    for key in ("frame_range", "n_frames", "exposure", "scale", "max_blur_px"):   # YAML lists -> the tuples taken
        if isinstance(spec.get(key), list):
            spec[key] = tuple(spec[key])
    if kind == "paired":
        return D.PairedFolder(path, crop_size=size, flip=True, **spec)
    if kind == "gopro240":
        return D.SynthesizedGoPro(path, crop_size=size, flip=True, **spec)
    if kind == "folder":
        rng = spec.pop("frame_range", None)
        ds = D.UnpairedFolder(path, crop_size=size, flip=True, **spec)
        return torch.utils.data.Subset(ds, range(*rng)) if rng else ds
    if kind == "photos":
        return D.PhotoPairs(path, crop_size=crop, **spec)
    if kind == "kernel":
        rng = spec.pop("frame_range", None)
        source = D.frame_source(path)
        if rng:
            source = torch.utils.data.Subset(source, range(*rng))  # lazy: frames read when drawn
        return D.KernelBlurred(source, crop_size=size, flip=True, **spec)
    if kind == "photo_clips":       # synthesized handheld clips of photos, blurry frames only, flow-derived blur
        flow_opts = {k: spec.pop(k) for k in ("flow_scale", "seed") if k in spec}
        clips = D.photo_shake_videos(path, **spec)
        return ConcatDataset([D.VideoFlowMotion(list(c), crop_size=size, flip=True, **flow_opts) for c in clips])
    if kind == "video_flow":
        return D.VideoFlowMotion(path, crop_size=size, flip=True, **spec)
    raise NeurmapError(f"unknown data type {kind!r} for {role}; use paired, gopro240, photos, folder, kernel, "
                       "video_flow or photo_clips")


def _image(sample: dict, role: str) -> torch.Tensor:
    keys = {"blurry": ("blurry", "image"), "sharp": ("sharp", "image")}[role]
    for k in keys:
        if k in sample:
            return sample[k]
    raise NeurmapError(f"a {role} source yielded keys {sorted(sample)}; expected one of {keys}")


def _motion(sample: dict, role: str) -> torch.Tensor:
    if "motion" not in sample:
        raise NeurmapError(f"a {role} source yielded keys {sorted(sample)} without 'motion'; motion targets come "
                           "from photos / gopro240 with motion: true, kernel, or video_flow sources")
    return sample["motion"]


def _yields_motion(ds: Dataset) -> bool:
    """Whether any source inside ``ds`` (mixes, concatenations, subsets) yields ``motion`` targets."""
    children = list(getattr(ds, "datasets", [])) + ([ds.dataset] if hasattr(ds, "dataset") else [])
    if children:
        return any(_yields_motion(c) for c in children)
    return bool(getattr(ds, "motion", False))


def _motion_or_none(sample: dict, like: torch.Tensor) -> torch.Tensor:
    """The item's motion, or an all-NaN map of its size: NeurMAPStep's M_video skips that image."""
    m = sample.get("motion")
    return m if m is not None else torch.full((2, *like.shape[-2:]), float("nan"))


def _seed_epoch(ds: Dataset, value: int) -> None:
    """Make the random crop/flip/blur of each item a function of the iteration (exact resume)."""
    if hasattr(ds, "set_epoch"):
        if getattr(ds, "seed", None) is None:
            ds.seed = 0
        ds.set_epoch(value)
    for child in getattr(ds, "datasets", []) + ([ds.dataset] if hasattr(ds, "dataset") else []):
        _seed_epoch(child, value)


class BatchSampler:
    """Batches as a pure function of (seed, iteration, rank): restarting at iteration t resumes the stream.

    A batch is a tuple of stacked tensors named by ``names`` (the keyword names of the step that takes it):
    paired_blurry, paired_sharp, then unpaired_blurry, unpaired_sharp for a NeurMAP run, and the motion
    targets its loss weights use (paired_motion for M_supervised, unpaired_motion for M_video). In a NeurMAP
    run the unpaired blurry may mix video_flow with sources that carry no motion (real footage, kernel blur
    with ``motion: false``): their images get an all-NaN target, which M_video skips.
    ``motion_only`` runs draw paired (with motion) and, when given, unpaired_blurry video with its motion.
    """

    def __init__(self, cfg: TrainConfig, rank: int = 0, world: int = 1, device: Any = None) -> None:
        from .step import LossWeights

        d, w = cfg.data, LossWeights.from_dict(cfg.loss_weights)
        if cfg.motion_only:
            roles = ("paired",) + (("unpaired_blurry",) if "unpaired_blurry" in d else ())
            if w.M_video and "unpaired_blurry" not in d:
                raise NeurmapError("loss_weights.M_video > 0 needs data.unpaired_blurry (a video_flow source); "
                                   "add one or set M_video: 0")
        else:
            roles = ("paired",) if cfg.paired_only else ("paired", "unpaired_blurry", "unpaired_sharp")
        for key in roles:
            if key not in d:
                raise NeurmapError(f"config data.{key} is missing; a NeurMAP run needs paired, unpaired_blurry "
                                   "and unpaired_sharp sources (paired_only / motion_only: true need only paired)")
        self.sources = {key: build_source(d[key], cfg.crop, key) for key in roles}
        for name, ds in self.sources.items():
            if len(ds) == 0:
                raise NeurmapError(f"data.{name} holds no images")
        # a NeurMAP run's unpaired blurry may mix video (M_video's and G_reblur_flow's motion) with blur that has none
        video_terms = [k for k in ("M_video", "G_reblur_flow") if getattr(w, k)]
        self.partial_unpaired_motion = bool(video_terms) and not cfg.motion_only and not cfg.paired_only
        if self.partial_unpaired_motion and not _yields_motion(self.sources["unpaired_blurry"]):
            raise NeurmapError(f"loss_weights.{video_terms[0]} > 0 needs a data.unpaired_blurry source with motion "
                               f"targets (video_flow, photo_clips); add one or set {video_terms[0]}: 0")
        self.cfg, self.rank, self.world = cfg, rank, world
        # synthesis_device: the paired sources' blur rendered in the main process on the training device
        self.device = torch.device(device if device is not None else "cpu")
        sd = cfg.synthesis_device
        self.deferred = sd == "cuda" or (sd == "auto" and self.device.type == "cuda")
        if self.deferred:
            device_synthesis.defer(self.sources["paired"])
        self.names = ["paired_blurry", "paired_sharp"]
        if cfg.motion_only:
            self.names += ["paired_motion"] + (["unpaired_blurry", "unpaired_motion"] if len(roles) > 1 else [])
        elif not cfg.paired_only:
            self.names += ["unpaired_blurry", "unpaired_sharp"] + (["paired_motion"] if w.M_supervised else []) \
                + (["unpaired_motion"] if w.M_video or w.G_reblur_flow else [])

    def _draw(self, ds: Dataset, n: int, g: torch.Generator, it: int) -> list[dict]:
        idx = torch.randint(0, len(ds), (n * self.world,), generator=g)[self.rank * n:(self.rank + 1) * n]
        _seed_epoch(ds, self.cfg.seed * 1_000_003 + it)
        return [ds[int(i)] for i in idx]

    def batch(self, it: int) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(self.cfg.seed * 7_919 + it)
        p = self._draw(self.sources["paired"], self.cfg.batch_paired, g, it)
        out = {} if self.deferred else {"paired_blurry": [x["blurry"] for x in p],
                                        "paired_sharp": [x["sharp"] for x in p]}
        if "paired_motion" in self.names and not self.deferred:
            out["paired_motion"] = [_motion(x, "paired") for x in p]
        if "unpaired_blurry" in self.names:
            u = self._draw(self.sources["unpaired_blurry"], self.cfg.batch_unpaired, g, it)
            out["unpaired_blurry"] = [_image(x, "blurry") for x in u]
            if "unpaired_sharp" in self.names:
                s = self._draw(self.sources["unpaired_sharp"], self.cfg.batch_unpaired, g, it)
                out["unpaired_sharp"] = [_image(x, "sharp") for x in s]
            if "unpaired_motion" in self.names:
                out["unpaired_motion"] = [_motion_or_none(x, _image(x, "blurry")) if self.partial_unpaired_motion
                                          else _motion(x, "unpaired_blurry") for x in u]
        if self.deferred:      # the paired recipes packed first, rendered by to_device
            return (device_synthesis.pack(p),) + tuple(torch.stack(out[k]) for k in self.names if k in out)
        return tuple(torch.stack(out[k]) for k in self.names)

    def to_device(self, cpu_batch: tuple, device: Any) -> list[torch.Tensor]:
        """One :meth:`batch` on the training device, in ``names`` order; deferred paired pairs rendered there."""
        if not self.deferred:
            return [b.to(device, non_blocking=True) for b in cpu_batch]
        r = device_synthesis.render(cpu_batch[0], device)
        done = {"paired_blurry": r["blurry"], "paired_sharp": r["sharp"]}
        if "paired_motion" in self.names:
            done["paired_motion"] = _motion(r, "paired")
        rest = iter(cpu_batch[1:])
        return [done[k] if k in done else next(rest).to(device, non_blocking=True) for k in self.names]


class _Batches(Dataset):
    """Batch ``it`` = ``sampler.batch(start + it)``: lets DataLoader workers synthesize ahead, in order."""

    def __init__(self, sampler: BatchSampler, start: int, stop: int) -> None:
        self.sampler, self.start, self.stop = sampler, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return self.sampler.batch(self.start + i)


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)   # synthesis workers must not compete with the training threads
