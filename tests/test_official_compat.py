"""official_compat: the official MS-SSIM against the published formula, and the switch on one iteration.

The reference below is the published ``pytorch_msssim.msssim`` (jorge-pessoa) formula written out in numpy/scipy,
float64 but for the float32 window it publishes: Gaussian window (sigma 1.5) centred on tap size//2, valid correlation, data range guessed from the
first image at every scale, cs and SSIM averaged over the whole batch, 2x2 average pooling that drops an odd
row/column, and ``prod_{j<5}(cs_j^w_j * ssim_5^w_5)``.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from scipy.signal import correlate2d

from neurmap.core import build_model
from neurmap.core import losses as L
from neurmap.core.errors import ConfigError, InputError
from neurmap.core.metrics.ssim import MS_EPS, ms_ssim, ms_ssim_official
from neurmap.core.reblur import canonical_motion, reblur
from neurmap.core.step import NeurMAPStep
from neurmap.core.train import TrainConfig, Trainer, load_config

from test_step import _real_crops
from test_train import tiny_config

W = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])


def _ref_terms(a: np.ndarray, b: np.ndarray) -> tuple[list[float], float]:
    """(cs_1..cs_5, ssim_5) of the published formula for batches a, b of shape (B, C, H, W)."""
    cs, ssim5 = [], None
    for level in range(5):
        hi = 255.0 if a.max() > 128 else 1.0
        lo = -1.0 if a.min() < -0.5 else 0.0
        rng = hi - lo
        win = min(11, a.shape[2], a.shape[3])
        # the published window is a float32 torch.Tensor, normalised and multiplied out in float32
        g = np.array([math.exp(-((k - win // 2) ** 2) / (2 * 1.5 ** 2)) for k in range(win)], dtype=np.float32)
        g /= g.sum()
        w2 = np.outer(g, g).astype(np.float64)

        def filt(z):
            return np.stack([[correlate2d(z[i, c], w2, mode="valid") for c in range(z.shape[1])]
                             for i in range(z.shape[0])])
        mu1, mu2 = filt(a), filt(b)
        s11, s22, s12 = filt(a * a) - mu1 ** 2, filt(b * b) - mu2 ** 2, filt(a * b) - mu1 * mu2
        c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
        v1, v2 = 2 * s12 + c2, s11 + s22 + c2
        cs.append(float(np.mean(v1 / v2)))
        ssim5 = float(np.mean((2 * mu1 * mu2 + c1) * v1 / ((mu1 ** 2 + mu2 ** 2 + c1) * v2)))
        h, w = a.shape[2] // 2 * 2, a.shape[3] // 2 * 2
        a = a[:, :, :h, :w].reshape(a.shape[0], a.shape[1], h // 2, 2, w // 2, 2).mean(axis=(3, 5))
        b = b[:, :, :h, :w].reshape(b.shape[0], b.shape[1], h // 2, 2, w // 2, 2).mean(axis=(3, 5))
    return cs, ssim5


def ref_msssim(a: np.ndarray, b: np.ndarray, floor: float | None = None) -> float:
    """The published value; with ``floor``, each term floored first (NaN-free, as documented for ours)."""
    cs, s5 = _ref_terms(a, b)
    if floor is not None:
        cs, s5 = [max(c, floor) for c in cs], max(s5, floor)
    with np.errstate(invalid="ignore"):
        return float(np.prod([np.float64(cs[j]) ** W[j] * np.float64(s5) ** W[4] for j in range(4)]))


def _pairs():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 40, 48, generator=g, dtype=torch.float64)
    yield "noisy [0,1] pair", x, (x + 0.08 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    x = torch.rand(3, 3, 37, 53, generator=g, dtype=torch.float64) * 2 - 1       # range 2 guessed from x
    yield "odd sizes, [-1,1]", x, 0.6 * x + 0.3 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    s = torch.linspace(0, 1, 64, dtype=torch.float64)
    x = (s.view(1, 1, -1, 1) * s.view(1, 1, 1, -1)).expand(1, 3, 64, 64).contiguous()
    yield "128²-like smooth ramps (even window at the 5th scale)", x, x ** 1.3


@pytest.mark.parametrize("case", [c[0] for c in _pairs()])
def test_official_ms_ssim_matches_published_formula(case):
    _, x, y = next(c for c in _pairs() if c[0] == case)
    want = ref_msssim(x.numpy(), y.numpy())
    assert math.isfinite(want) and 0.05 < want < 1.0
    got = float(ms_ssim_official(x, y))
    assert got == pytest.approx(want, rel=1e-6, abs=1e-9)
    # the last-scale SSIM sits inside the product (raised to 4·w5): the standard per-image value differs
    assert abs(float(ms_ssim(x, y)) - want) > 1e-4


def test_official_ms_ssim_takes_the_data_range_from_the_first_image():
    g = torch.Generator().manual_seed(5)
    b = torch.nn.functional.interpolate(torch.rand(2, 3, 8, 8, generator=g, dtype=torch.float64), size=32,
                                        mode="bicubic", align_corners=False).clamp(0, 1)   # smooth, range 1
    a = b + 0.05 * torch.randn(b.shape, generator=g, dtype=torch.float64)
    a[:, :, :2, :2] = -0.6                                            # min < -0.5 at every scale: range 2
    ab, ba = float(ms_ssim_official(a, b)), float(ms_ssim_official(b, a))
    assert ab == pytest.approx(ref_msssim(a.numpy(), b.numpy(), floor=MS_EPS), rel=1e-6)
    assert ba == pytest.approx(ref_msssim(b.numpy(), a.numpy(), floor=MS_EPS), rel=1e-6)
    assert 0.05 < ab < 1 and abs(ab - ba) > 1e-4 * ab           # 100x the agreement above


def test_official_ms_ssim_is_finite_where_the_published_formula_is_nan():
    g = torch.Generator().manual_seed(7)
    x = torch.rand(2, 3, 48, 48, generator=g, dtype=torch.float64)
    y = (1.0 - x).requires_grad_()                                          # anti-correlated: cs < 0
    assert math.isnan(ref_msssim(x.numpy(), y.detach().numpy()))
    v = ms_ssim_official(x, y)
    assert torch.isfinite(v)
    assert float(v.detach()) == pytest.approx(ref_msssim(x.numpy(), y.detach().numpy(), floor=MS_EPS), rel=1e-6)
    v.backward()
    assert torch.isfinite(y.grad).all()
    with pytest.raises(InputError, match="at least 16 px"):
        ms_ssim_official(x[..., :12, :12], x[..., :12, :12])


def test_image_pool_keeps_the_last_50_sharp_images():
    pool = L.SharpMotionImagePool(50)
    for i in range(20):                                   # 20 batches of 4 images: image k holds value k
        pool.update(torch.arange(4 * i, 4 * i + 4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 2, 3, 3))
    assert len(pool.values) == 50
    assert pool.mean().tolist() == pytest.approx([np.mean(np.arange(30, 80))] * 2)
    ours = L.SharpMotionPool(50)                          # ours: the last 50 batches (all 20 here)
    for i in range(20):
        ours.update(torch.arange(4 * i, 4 * i + 4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 2, 3, 3))
    assert ours.mean().tolist() == pytest.approx([np.mean(np.arange(0, 80))] * 2)


def _nets(seed=0):
    torch.manual_seed(seed)
    return build_model("dmphn_1_2_4"), build_model("motion"), build_model("discriminator")


def test_switch_on_one_iteration_changes_exactly_the_documented_terms():
    batch = _real_crops()
    pb, ps, ub, us = batch
    blurry, sharp = torch.cat((pb, ub)), torch.cat((ps, us))
    nets = _nets()
    G0, M0, D0 = (copy.deepcopy(n) for n in nets)
    runs = {}
    for mode in (None, "synthetic", "real"):
        G, M, D = (copy.deepcopy(n) for n in nets)
        step = NeurMAPStep(G, M, D, lr_M=3e-4, lr_D=1e-4, grad_clip=None, official=mode)
        runs[mode] = (step, step(*batch))
    ours, syn, real = runs[None][1], runs["synthetic"][1], runs["real"][1]
    for out in (syn, real):
        assert all(torch.isfinite(v) for v in out.values()), out
    # M's step: only ℓ_rb changes, and to the official formula in the official order (reblurred, B)
    with torch.no_grad():
        fake = G0(blurry).float()
        m = canonical_motion(M0(torch.cat((blurry, fake, sharp))).float())
        b_hat = reblur(fake, m[:4] - m[4:8])
    mse = torch.mean((b_hat - blurry) ** 2)
    assert float(syn["M_reblur"]) == pytest.approx(float(mse + 0.1 * (1 - ms_ssim_official(b_hat, blurry))),
                                                   rel=1e-5)
    assert float(ours["M_reblur"]) == pytest.approx(float(mse + 0.1 * (1 - ms_ssim(b_hat, blurry))), rel=1e-5)
    assert abs(float(syn["M_reblur"]) - float(ours["M_reblur"])) > 1e-5
    for k in ("M_tv", "M_sharp", "M_blur", "M_f_sharp", "M_never_blurrier"):
        assert torch.equal(syn[k], ours[k]) and torch.equal(real[k], ours[k]), k
    # D's step: the real config keeps our sharp/blurry mix; the synthetic config's real images are all sharp
    assert torch.equal(real["D"], ours["D"])
    with torch.no_grad():
        d_real_sharp = L.discriminator_loss(D0(fake), D0(sharp))
    assert float(syn["D"]) == pytest.approx(float(d_real_sharp), rel=1e-5)
    assert abs(float(syn["D"]) - float(ours["D"])) > 1e-6
    # M's lr from lr_D; μ_sharp pooled per image (4 sharp images this iteration) instead of per batch
    assert runs["synthetic"][0].opt_M.param_groups[0]["lr"] == 1e-4
    assert runs[None][0].opt_M.param_groups[0]["lr"] == 3e-4
    assert len(runs["synthetic"][0].pool.values) == 4 and len(runs[None][0].pool.values) == 1
    # G's ℓ_rb on the official MS-SSIM too (and M moved differently): the G terms differ, all finite
    assert abs(float(syn["G_reblur"]) - float(ours["G_reblur"])) > 1e-7
    with pytest.raises(ConfigError, match="official="):
        NeurMAPStep(*_nets(), official="yes")


def test_config_switch_values_and_clip_rule(tmp_path):
    assert TrainConfig().official_compat == "off"
    assert load_config(None, ["official_compat=off"]).official_compat == "off"      # YAML reads off as false
    assert load_config(None, ["official_compat=synthetic"]).official_compat == "synthetic"
    for bad in (["official_compat=true"], ["official_compat=paper"]):
        with pytest.raises(ConfigError, match="official_compat"):
            load_config(None, bad)
    with pytest.raises(ConfigError, match="grad_clip: auto"):
        TrainConfig(official_compat="real", grad_clip=0.01)                         # DMPHN: official is unclipped
    assert TrainConfig(official_compat="real", backbone="mprnet").grad_clip == 0.01


def test_trainer_runs_one_official_iteration(tmp_path):
    trainer = Trainer(tiny_config(tmp_path / "o", iterations=1, official_compat="synthetic", lr_M=3e-4))
    losses = [l for _, l, _ in trainer.iterations()]
    assert len(losses) == 1 and all(math.isfinite(v) for v in losses[0].values()), losses
    assert trainer.step.official == "synthetic" and isinstance(trainer.step.pool, L.SharpMotionImagePool)
    assert trainer.scheds[1].base_lrs == [trainer.cfg.lr_D]
