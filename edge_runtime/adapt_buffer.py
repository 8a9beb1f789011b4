"""Frames for on-device adaptation: a bounded, thread-safe ring of recent frames (every k-th held out for the
guard) and the random / fixed crops drawn from it.

uint8 on the CPU, so a stream can keep a few dozen 720p frames beside the model without touching GPU memory.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from neurmap.core.errors import NeurmapError


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
        self.place(_to_uint8_chw(frame))

    def place(self, item) -> None:
        """Store ``item`` as it is (a uint8 frame, or the stream path's frame-with-motion)."""
        with self.lock:
            (self.held if self.seen % self.holdout_every == self.holdout_every - 1 else self.train).append(item)
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
