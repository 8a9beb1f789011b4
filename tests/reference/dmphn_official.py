"""An independent DMPHN 1-2-4 forward for tests: the official code's arithmetic written out with
``torch.nn.functional`` on the raw per-level state dicts (``encoder_lvK.pkl`` / ``decoder_lvK.pkl``), none of
neurmap's model code. From the official DMPHN release (Zhang et al. 2019): encoder conv 3->32, two residual
blocks, stride-2 conv ->64, two blocks, stride-2 conv ->128, two blocks; decoder two blocks, 4x4 stride-2
transposed conv ->64, two blocks, ->32, two blocks, conv ->3; a residual block is conv-ReLU-conv plus its input.
Images are fed as ``blurry - 0.5`` and 0.5 is added to the output."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F


def _load(folder: Path, name: str) -> dict:
    return torch.load(Path(folder) / f"{name}.pkl", map_location="cpu", weights_only=True)


def _conv(sd, name, x, stride=1):
    return F.conv2d(x, sd[f"{name}.weight"], sd[f"{name}.bias"], stride=stride, padding=1)


def _block(sd, name, x):
    h = F.relu(F.conv2d(x, sd[f"{name}.0.weight"], sd[f"{name}.0.bias"], padding=1))
    return F.conv2d(h, sd[f"{name}.2.weight"], sd[f"{name}.2.bias"], padding=1) + x


def _up(sd, name, x):
    return F.conv_transpose2d(x, sd[f"{name}.weight"], sd[f"{name}.bias"], stride=2, padding=1)


def encoder(sd, x):
    x = _block(sd, "layer3", _block(sd, "layer2", _conv(sd, "layer1", x)))
    x = _block(sd, "layer7", _block(sd, "layer6", _conv(sd, "layer5", x, 2)))
    return _block(sd, "layer11", _block(sd, "layer10", _conv(sd, "layer9", x, 2)))


def decoder(sd, x):
    x = _up(sd, "layer16", _block(sd, "layer14", _block(sd, "layer13", x)))
    x = _up(sd, "layer20", _block(sd, "layer18", _block(sd, "layer17", x)))
    return _conv(sd, "layer24", _block(sd, "layer22", _block(sd, "layer21", x)))


@torch.no_grad()
def dmphn_1_2_4(folder, blurry: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) in [0,1], H and W multiples of 16 -> the official network's output (not clamped)."""
    e = {k: _load(folder, f"encoder_lv{k}") for k in (1, 2, 3)}
    d = {k: _load(folder, f"decoder_lv{k}") for k in (1, 2, 3)}
    x1 = blurry - 0.5
    h, w = x1.shape[-2:]
    x2 = [x1[:, :, : h // 2], x1[:, :, h // 2:]]                                  # top, bottom halves
    x3 = [half[:, :, :, s] for half in x2 for s in (slice(0, w // 2), slice(w // 2, w))]   # four quarters
    f3 = [encoder(e[3], q) for q in x3]
    f3_top, f3_bot = torch.cat(f3[:2], 3), torch.cat(f3[2:], 3)
    r3_top, r3_bot = decoder(d[3], f3_top), decoder(d[3], f3_bot)
    f2 = torch.cat([encoder(e[2], x2[0] + r3_top), encoder(e[2], x2[1] + r3_bot)], 2) + torch.cat([f3_top, f3_bot], 2)
    r2 = decoder(d[2], f2)
    f1 = encoder(e[1], x1 + r2) + f2
    return decoder(d[1], f1) + 0.5
