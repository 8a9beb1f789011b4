"""Input handling shared by the metrics: everything becomes a float (B,C,H,W) tensor in [0,1] units."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError


def as_image_batch(img, name: str = "image") -> torch.Tensor:
    """A float tensor (B,C,H,W) from a tensor (B,C,H,W)/(C,H,W) or a numpy (H,W,C)/(H,W)/(B,H,W,C) array.

    Tensors keep their values, dtype, device and autograd graph (integer tensors are divided by 255).
    Numpy arrays are taken as channel-last images; ``uint8`` arrays are divided by 255, float arrays
    are taken as already being in [0,1] units.
    """
    if isinstance(img, np.ndarray):
        arr = img
        if arr.dtype == np.uint8:
            arr = arr.astype(np.float32) / 255.0
        elif arr.dtype == np.uint16:
            arr = arr.astype(np.float32) / 65535.0
        elif not np.issubdtype(arr.dtype, np.floating):
            raise InputError(f"{name}: numpy image of dtype {arr.dtype} is not supported (use uint8 or float in [0,1])")
        if arr.ndim == 2:
            arr = arr[None, :, :, None]
        elif arr.ndim == 3:
            arr = arr[None]
        elif arr.ndim != 4:
            raise InputError(f"{name}: numpy image must be HxW, HxWxC or BxHxWxC, got shape {arr.shape}")
        t = torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))
        if t.dtype not in (torch.float32, torch.float64):
            t = t.float()
        return t
    if not isinstance(img, torch.Tensor):
        raise InputError(f"{name}: expected a torch tensor or numpy array, got {type(img).__name__}")
    t = img
    if t.dim() == 3:
        t = t.unsqueeze(0)
    if t.dim() != 4:
        raise InputError(f"{name}: tensor must be (B,C,H,W) or (C,H,W), got shape {tuple(img.shape)}")
    if not t.is_floating_point():
        t = t.float() / 255.0
    return t


def as_pair(x, y) -> tuple[torch.Tensor, torch.Tensor]:
    """Both inputs as (B,C,H,W) tensors of one shape, dtype and device."""
    xt, yt = as_image_batch(x, "pred"), as_image_batch(y, "target")
    if xt.shape != yt.shape:
        raise InputError(f"images differ in shape: {tuple(xt.shape)} vs {tuple(yt.shape)}")
    dtype = torch.promote_types(xt.dtype, yt.dtype)
    return xt.to(dtype), yt.to(device=xt.device, dtype=dtype)
