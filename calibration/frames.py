"""Representative calibration frames: spread over sources (scenes), time and blur strength, seeded, cached.

A deblur net sees *blurry* frames, so calibration must too. Sources are image folders, videos or single
images; a folder of high-fps **sharp** frames (GoPro-style) can be turned into GoPro-protocol blurry frames
(``synthesize=(7, 13)``: the mean of 7-13 consecutive frames in linear light), which also gives the sharp
middle frame as ground truth.

Selection: from each source a seeded pool of candidates (evenly spaced in time with jitter, each a crop of
the export shape at the frame's native scale, so blur keeps its size in pixels) is scored for blur strength —
by the motion net's mean predicted motion length when one is given, else by (inverse) gradient energy — and
the pool is split into equal-count strata of that score; frames are drawn from every stratum, round-robin
over sources. The result is cached as ``.npy`` keyed by everything that decides it.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from neurmap.core.errors import NeurmapError

DEFAULT_CACHE = Path(os.environ.get("NEURMAP_CACHE", Path.home() / ".cache" / "neurmap")) / "calibration"


@dataclass
class CalibSet:
    """Calibration (and hold-out) frames: float32 (N,3,H,W) in [0, 1]; ``sharp`` when synthesized."""

    blurry: np.ndarray
    sharp: Optional[np.ndarray] = None
    info: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.blurry.shape[0])

    def subset(self, idx: Sequence[int]) -> "CalibSet":
        idx = list(idx)
        return CalibSet(self.blurry[idx], None if self.sharp is None else self.sharp[idx],
                        [self.info[i] for i in idx] if self.info else [])


def _fit_crop(img: torch.Tensor, h: int, w: int, rng: np.random.Generator) -> tuple[torch.Tensor, dict]:
    """A crop of (h, w) at native scale; frames smaller than that are resized up to cover it first."""
    _, H, W = img.shape
    scale = 1.0
    if H < h or W < w:
        scale = max(h / H, w / W)
        nh, nw = max(h, round(H * scale)), max(w, round(W * scale))
        img = F.interpolate(img[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=False)[0]
        H, W = nh, nw
    top = int(rng.integers(0, H - h + 1))
    left = int(rng.integers(0, W - w + 1))
    return img[:, top:top + h, left:left + w].contiguous(), {"top": top, "left": left, "scale": round(scale, 4)}


def _apply_crop(img: torch.Tensor, h: int, w: int, c: dict) -> torch.Tensor:
    """Repeat a crop made by :func:`_fit_crop` (same scale and position) on another image."""
    if c["scale"] != 1.0:
        _, H, W = img.shape
        nh, nw = max(h, round(H * c["scale"])), max(w, round(W * c["scale"]))
        img = F.interpolate(img[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=False)[0]
    return img[:, c["top"]:c["top"] + h, c["left"]:c["left"] + w].contiguous()


def gradient_energy(img: torch.Tensor) -> float:
    """Mean squared gradient of the luminance at half resolution: low for strong blur (or flat content)."""
    y = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2])[None, None]
    y = F.avg_pool2d(y, 2) if min(y.shape[-2:]) >= 4 else y
    gx, gy = y[..., :, 1:] - y[..., :, :-1], y[..., 1:, :] - y[..., :-1, :]
    return float((gx.pow(2).mean() + gy.pow(2).mean()) * 1e3)


@torch.no_grad()
def motion_magnitude(img: torch.Tensor, motion_model: torch.nn.Module) -> float:
    """Mean predicted blur length (pixels) of the motion net on a half-size copy."""
    from neurmap.core.models.motion import MOTION_SCALE

    x = F.interpolate(img[None], scale_factor=0.5, mode="bilinear", align_corners=False, antialias=True)
    m = motion_model(x)
    return float(m.pow(2).sum(1).sqrt().mean() * MOTION_SCALE * 2.0)


def _file_key(p: Path) -> list:
    if p.is_dir():
        files = sorted(q for q in p.iterdir() if q.is_file())
        return [str(p.resolve()), len(files), sum(q.stat().st_size for q in files),
                max((q.stat().st_mtime_ns for q in files), default=0)]
    st = p.stat()
    return [str(p.resolve()), st.st_size, st.st_mtime_ns]


class _Source:
    """One source, with its own frame cache, yielding (blurry, sharp|None, info) per candidate position."""

    def __init__(self, path: Path, synthesize: Optional[tuple[int, int]], frame_range: Optional[tuple[int, int]]):
        from neurmap.core.data.video import frame_source

        self.path = Path(path)
        # a paired folder (blur/ + sharp/, or the GoPro layouts) is read as eval reads it: blurry frames with truth
        self.pairs = _paired(self.path)
        self.src = self.pairs if self.pairs is not None else frame_source(self.path)
        if self.pairs is not None:
            synthesize = None
        n = len(self.src)
        self.lo, self.hi = (0, n) if frame_range is None else (max(0, frame_range[0]), min(n, frame_range[1]))
        self.synthesize = synthesize
        self._frames: dict[int, torch.Tensor] = {}

    def frame(self, i: int) -> torch.Tensor:
        if i not in self._frames:
            if len(self._frames) > 32:
                self._frames.pop(next(iter(self._frames)))
            self._frames[i] = self.src[i]
        return self._frames[i]

    def positions(self, k: int, rng: np.random.Generator) -> list[tuple[int, int]]:
        """k (first frame, window length) positions spread over the source's time range."""
        lens = list(range(self.synthesize[0], self.synthesize[1] + 1)) if self.synthesize else [1]
        span = self.hi - self.lo
        if span < min(lens):
            return []
        out = []
        edges = np.linspace(self.lo, self.hi, k + 1)
        for a, b in zip(edges[:-1], edges[1:]):
            n = int(rng.choice(lens))
            n = min(n, span)
            first_max = min(int(b), self.hi - n)
            first_min = max(int(a), self.lo)
            if first_max < first_min:
                first_min = first_max = max(self.lo, self.hi - n)
            first = int(rng.integers(first_min, first_max + 1))
            if (first, n) not in out:
                out.append((first, n))
        return out

    def candidate(self, first: int, n: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        if self.pairs is not None:
            item = self.frame(first)
            return item["blurry"], item["sharp"]
        if not self.synthesize:
            return self.frame(first), None
        from neurmap.core.data.synthesis import gopro_pair

        return gopro_pair(torch.stack([self.frame(first + j) for j in range(n)]))


AUTO_WINDOW = (7, 13)


def _paired(path: Path):
    """The :class:`PairedFolder` behind ``path`` when it is one of the paired layouts ``neurmap eval`` reads."""
    from neurmap.core.data import PairedFolder
    from neurmap.core.data.datasets import _pair_dirs

    if not path.is_dir():
        return None
    try:
        _pair_dirs(path, None, "blur", "sharp")
    except NeurmapError:
        return None
    return PairedFolder(path)


def _synth_for(path: Path, synthesize) -> Optional[tuple[int, int]]:
    """The GoPro-protocol window lengths to synthesize blur with for one source (None: use frames as they are)."""
    if synthesize == "auto":
        return AUTO_WINDOW if _paired(Path(path)) is None and looks_like_sharp_highfps(path) else None
    if synthesize is None:
        return None
    lo, hi = (int(v) for v in synthesize)
    return (lo, hi)


def _stratified_pick(scores: np.ndarray, groups: np.ndarray, n: int, rng: np.random.Generator,
                     windows: Optional[np.ndarray] = None) -> list[int]:
    """n indices spread over score strata (equal-count quantile bins); inside a stratum the source (scene)
    used least so far wins, then the source window used least (so crops spread over frames too)."""
    order = np.argsort(scores, kind="stable")
    n = min(n, len(order))
    strata = np.array_split(order, n) if n else []
    picked: list[int] = []
    used_groups: dict[int, int] = {}
    used_windows: dict[int, int] = {}
    wins = windows if windows is not None else np.arange(len(scores))
    for s in strata:
        s = list(s)
        rng.shuffle(s)
        s.sort(key=lambda i: (used_groups.get(int(groups[i]), 0), used_windows.get(int(wins[i]), 0)))
        i = int(s[0])
        picked.append(i)
        used_groups[int(groups[i])] = used_groups.get(int(groups[i]), 0) + 1
        used_windows[int(wins[i])] = used_windows.get(int(wins[i]), 0) + 1
    return picked


def select_frames(sources: Sequence[str | Path], n: int, height: int, width: int, *, holdout: int = 0,
                  seed: int = 0, motion_model: Optional[torch.nn.Module] = None,
                  synthesize: Optional[tuple[int, int] | str] = "auto", frame_range: Optional[tuple[int, int]] = None,
                  pool_factor: int = 3, crops_per_frame: int = 2, cache_dir: Optional[Path] = DEFAULT_CACHE,
                  ) -> tuple[CalibSet, CalibSet]:
    """``n`` calibration frames and ``holdout`` disjoint frames (never the same source frame window) of
    size ``height`` x ``width``. Returns ``(calib, holdout)`` :class:`CalibSet` s."""
    if n < 1:
        raise NeurmapError(f"calibration needs at least 1 frame, got {n}")
    paths = [Path(s) for s in sources]
    for p in paths:
        if not p.exists():
            raise NeurmapError(f"calibration source {p} does not exist; pass a folder of frames or a video")
    key = None
    if cache_dir is not None:
        desc = {"v": 3, "src": [_file_key(p) for p in paths], "n": n, "holdout": holdout, "hw": [height, width],
                "seed": seed, "synth": [_synth_for(p, synthesize) for p in paths],
                "range": list(frame_range) if frame_range else None, "pool": pool_factor, "crops": crops_per_frame,
                "scorer": "motion" if motion_model is not None else "gradient"}
        if motion_model is not None:
            from neurmap.core.checkpoint import weights_hash

            net = getattr(motion_model, "net", motion_model)
            desc["motion"] = weights_hash(net.state_dict())
        key = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:20]
        cached = _load_cache(Path(cache_dir), key)
        if cached is not None:
            return cached

    rng = np.random.default_rng(seed)
    total = n + holdout
    srcs = [_Source(p, _synth_for(p, synthesize), frame_range) for p in paths]
    per_source = max(1, -(-total * pool_factor // len(srcs)))      # windows per source; crops_per_frame crops each
    # pool of candidates: (source, window) with several crops each; windows are the unit of disjointness
    windows, crops_b, crops_s, infos, scores, groups = [], [], [], [], [], []
    for si, s in enumerate(srcs):
        for first, ln in s.positions(per_source, rng):
            b, sh = s.candidate(first, ln)
            wi = len(windows)
            windows.append((si, first, ln))
            for _ in range(crops_per_frame):
                sub = np.random.default_rng(rng.integers(1 << 31))
                cb, c = _fit_crop(b, height, width, sub)
                cs = None if sh is None else _apply_crop(sh, height, width, c)
                crops_b.append(cb)
                crops_s.append(cs)
                infos.append({"source": str(s.path), "first": first, "frames": ln, **c, "window": wi})
                score = (motion_magnitude(cb, motion_model) if motion_model is not None
                         else -gradient_energy(cb))  # higher = blurrier either way
                scores.append(score)
                groups.append(si)
    if not crops_b:
        raise NeurmapError(f"no calibration frames could be read from {', '.join(map(str, paths))}")
    scores_a, groups_a = np.array(scores), np.array(groups)
    for i, sc in enumerate(scores):
        infos[i]["blur_score"] = round(float(sc), 4)
    # hold-out: whole windows, stratified too, so no calibration crop shares source frames with it
    hold_idx: list[int] = []
    if holdout:
        win_of = np.array([inf["window"] for inf in infos])
        first_crop = {w: i for i, w in reversed(list(enumerate(win_of)))}
        wl = sorted(first_crop)
        wpick = _stratified_pick(scores_a[[first_crop[w] for w in wl]], groups_a[[first_crop[w] for w in wl]],
                                 min(holdout, max(1, len(wl) // 4)), rng)
        hold_windows = {wl[i] for i in wpick}
        hold_pool = [i for i in range(len(infos)) if win_of[i] in hold_windows]
        hold_idx = [hold_pool[i] for i in _stratified_pick(scores_a[hold_pool], groups_a[hold_pool],
                                                          min(holdout, len(hold_pool)), rng)]
        rest = [i for i in range(len(infos)) if win_of[i] not in hold_windows]
    else:
        rest = list(range(len(infos)))
    wins_a = np.array([inf["window"] for inf in infos])
    cal_idx = [rest[i] for i in _stratified_pick(scores_a[rest], groups_a[rest], min(n, len(rest)), rng, wins_a[rest])]

    def build(idx: list[int]) -> CalibSet:
        if not idx:
            return CalibSet(np.zeros((0, 3, height, width), np.float32), None, [])
        b = torch.stack([crops_b[i] for i in idx]).numpy().astype(np.float32)
        s = None
        if all(crops_s[i] is not None for i in idx):
            s = torch.stack([crops_s[i] for i in idx]).numpy().astype(np.float32)
        return CalibSet(b, s, [infos[i] for i in idx])

    out = build(cal_idx), build(hold_idx)
    if key is not None:
        _save_cache(Path(cache_dir), key, out)
    return out


def _save_cache(folder: Path, key: str, sets: tuple[CalibSet, CalibSet]) -> None:
    from neurmap.core.checkpoint import atomic_write

    try:
        folder.mkdir(parents=True, exist_ok=True)
        for tag, cs in zip(("calib", "hold"), sets):
            atomic_write(folder / f"{key}.{tag}.blurry.npy", lambda t, a=cs.blurry: np.save(open(t, "wb"), a))
            if cs.sharp is not None:
                atomic_write(folder / f"{key}.{tag}.sharp.npy", lambda t, a=cs.sharp: np.save(open(t, "wb"), a))
            atomic_write(folder / f"{key}.{tag}.json", lambda t, i=cs.info: Path(t).write_text(json.dumps(i)))
    except OSError:  # a read-only cache never breaks calibration
        pass


def _load_cache(folder: Path, key: str) -> Optional[tuple[CalibSet, CalibSet]]:
    out = []
    for tag in ("calib", "hold"):
        b, s, j = (folder / f"{key}.{tag}.blurry.npy", folder / f"{key}.{tag}.sharp.npy", folder / f"{key}.{tag}.json")
        if not (b.exists() and j.exists()):
            return None
        try:
            out.append(CalibSet(np.load(b), np.load(s) if s.exists() else None, json.loads(j.read_text())))
        except (OSError, ValueError):
            return None
    return out[0], out[1]


def looks_like_sharp_highfps(path: str | Path) -> bool:
    """Heuristic for `--calib` folders: a folder of >= 60 consecutive frames whose neighbours differ very
    little (a 240 fps capture) is treated as sharp frames to synthesize GoPro-protocol blur from."""
    from neurmap.core.data.video import frame_source

    p = Path(path)
    if not p.is_dir():
        return False
    try:
        src = frame_source(p)
    except Exception:
        return False
    if len(src) < 60:
        return False
    a, b = src[0], src[1]
    return float((a - b).abs().mean()) < 0.01
