"""Reblur module R: the checks SPEC names (box filter, identity, gradients) and the canonical motion."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from neurmap.core import canonical_motion, reblur


def test_constant_motion_is_a_15_tap_box_filter():
    x = torch.rand(2, 3, 24, 40, dtype=torch.float64)
    m = torch.zeros(2, 2, 24, 40, dtype=torch.float64)
    m[:, 1] = 7 / 20  # dx = 7 px
    box = F.conv2d(F.pad(x, (7, 7, 0, 0)), torch.ones(3, 1, 1, 15, dtype=torch.float64) / 15, groups=3)
    assert (reblur(x, m) - box).abs().max() < 1e-6
    m = torch.zeros_like(m)
    m[:, 0] = 7 / 20  # dy = 7 px: vertical box
    boxv = F.conv2d(F.pad(x, (0, 0, 7, 7)), torch.ones(3, 1, 15, 1, dtype=torch.float64) / 15, groups=3)
    assert (reblur(x, m) - boxv).abs().max() < 1e-6


def test_float32_box_filter_within_1e6():
    x = torch.rand(1, 3, 16, 64)
    m = torch.zeros(1, 2, 16, 64)
    m[:, 1] = 0.35
    box = F.conv2d(F.pad(x, (7, 7, 0, 0)), torch.ones(3, 1, 1, 15) / 15, groups=3)
    assert (reblur(x, m) - box).abs().max() < 1e-6


def test_zero_motion_is_identity():
    x = torch.rand(2, 3, 17, 23, dtype=torch.float64)
    assert (reblur(x, torch.zeros(2, 2, 17, 23, dtype=torch.float64)) - x).abs().max() < 1e-12
    # float32: only the rounding of the normalised sampling grid remains
    x = x.float()
    assert (reblur(x, torch.zeros(2, 2, 17, 23)) - x).abs().max() < 1e-5


def test_gradcheck_image_and_motion():
    torch.manual_seed(0)
    x = torch.rand(1, 2, 7, 9, dtype=torch.float64, requires_grad=True)
    m = (torch.rand(1, 2, 7, 9, dtype=torch.float64) * 0.2 - 0.1).requires_grad_()
    assert torch.autograd.gradcheck(reblur, (x, m))


def test_one_grid_sample_call(monkeypatch):
    calls = []
    real = F.grid_sample
    monkeypatch.setattr(F, "grid_sample", lambda *a, **k: calls.append(1) or real(*a, **k))
    reblur(torch.rand(2, 3, 8, 8), torch.rand(2, 2, 8, 8))
    assert len(calls) == 1


def test_canonical_motion_flips_negative_dx_only():
    m = torch.tensor([[[[1.0, -2.0]], [[-3.0, 4.0]]]])  # dy row, dx row; pixel 0 has dx=-3
    vn = canonical_motion(m)
    assert vn[0, :, 0, 0].tolist() == [-1.0, 3.0]
    assert vn[0, :, 0, 1].tolist() == [-2.0, 4.0]


def test_sign_of_motion_does_not_change_the_blur():
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    m = torch.rand(1, 2, 16, 16, dtype=torch.float64) * 0.2
    assert torch.allclose(reblur(x, m), reblur(x, -m))
