"""The pieces of the default model's recipe: photo pairs and their held-out split, source ratios, the
re-parameterised blocks, the lr schedule, the frequency term, EMA + synthesis workers with exact resume."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import shared_path
from neurmap.core.data import PhotoPairs, WeightedMix, photo_split
from neurmap.core.data.photos import camera_noise, jpeg, render_shake, shake_path
from neurmap.core.losses import frequency_loss
from neurmap.core.models import build_network
from neurmap.core.models.wrapper import DeblurModel
from neurmap.core.train import TrainConfig, Trainer, inference_model, lr_factor


@pytest.fixture(scope="module")
def photos():
    return shared_path("sharp_photos")


def test_heldout_split_is_disjoint_stable_and_about_a_tenth(photos):
    train, held, every = (photo_split(photos, s) for s in ("train", "heldout", "all"))
    assert not set(train) & set(held)
    assert sorted(train + held) == every
    assert 0.05 < len(held) / len(every) < 0.15
    assert photo_split(photos, "heldout") == held          # a hash of the name, not the listing order


def test_photo_pairs_are_reproducible_blurry_and_in_range(photos):
    ds = PhotoPairs(photos, crop_size=64, split="heldout", blur="shake", p_sharp=0.0, degrade=False, seed=7)
    a, b = ds[3], ds[3]
    assert torch.equal(a["blurry"], b["blurry"]) and a["sharp"].shape == (3, 64, 64)
    other = PhotoPairs(photos, crop_size=64, split="heldout", blur="shake", p_sharp=0.0, degrade=False, seed=8)[3]
    assert not torch.equal(a["sharp"], other["sharp"])
    err = [float((ds[i]["blurry"] - ds[i]["sharp"]).abs().mean()) for i in range(6)]
    assert min(err) > 1e-3                                   # real blur on every item (p_sharp 0)
    for x in (a["blurry"], a["sharp"]):
        assert x.min() >= 0 and x.max() <= 1


def test_shake_path_has_the_asked_length_and_is_centred():
    rng = np.random.default_rng(0)
    p = shake_path(rng, 12.0, 1.0, 31)
    assert p.shape == (31, 3)
    assert np.linalg.norm(np.diff(p[:, :2], axis=0), axis=1).sum() == pytest.approx(12.0, rel=1e-6)
    assert np.allclose(p[15, :2], 0.0)                      # the sharp target is the mid-exposure view


def test_render_shake_of_a_pure_translation_is_a_box_blur():
    """A horizontal 4-px path over a vertical edge: the blurry edge is the 5-tap average, in linear light."""
    img = np.zeros((16, 32, 3), np.float32)
    img[:, 16:] = 1.0
    poses = np.array([[dx, 0.0, 0.0] for dx in (-2, -1, 0, 1, 2)], np.float64)
    blurry, sharp = render_shake(img, poses, (15.5, 7.5))
    assert np.array_equal(sharp, img)
    row = blurry[8, :, 0]
    assert row[12] == 0 and row[20] == 1
    assert np.allclose(row[14:19], [0.2, 0.4, 0.6, 0.8, 1.0], atol=1e-6)


def test_camera_degradations_change_the_image_by_their_size():
    x = np.full((32, 32, 3), 0.5, np.float32)
    rng = np.random.default_rng(0)
    noisy = camera_noise(x, rng, shot=0.0, read=0.01)
    assert 0.003 < float(np.std(noisy - x)) < 0.05
    assert float(np.abs(jpeg(x, 90) - x).max()) < 0.01


def test_weighted_mix_draws_sources_in_the_given_ratios():
    a, b = [{"src": 0}] * 3, [{"src": 1}] * 500
    mix = WeightedMix([a, b], [0.7, 0.3])
    draws = [mix[int(i)]["src"] for i in torch.randint(0, len(mix), (4000,), generator=torch.Generator().manual_seed(0))]
    assert abs(np.mean(np.array(draws) == 0) - 0.7) < 0.03   # regardless of the sources' sizes


@pytest.mark.parametrize("name", ["compact_rep", "compact_repx"])
def test_rep_blocks_fold_into_the_plain_compact_net(name):
    net = build_network(name)                               # Xavier init: not the identity
    g = torch.Generator().manual_seed(0)
    for m in net.modules():                                  # move the extra branches off their zero init
        if hasattr(m, "gamma"):
            m.gamma.data = torch.randn(m.gamma.shape, generator=g) * 0.3
            m.conv1.weight.data = torch.randn(m.conv1.weight.shape, generator=g) * 0.05
    plain = net.fold()
    assert type(plain).__name__ == "CompactDeblur" and plain.block == "res"
    assert set(plain.state_dict()) == set(build_network("compact").state_dict())
    x = torch.rand(2, 3, 32, 48, generator=g)
    y = net(x)
    assert torch.allclose(y, plain(x), atol=1e-5 * float(y.abs().max()))    # float rounding of this scale
    assert not torch.allclose(y, x, atol=1e-3)               # the check is not trivially the identity


@pytest.mark.parametrize("name, plain", [("compact_rep", "compact"), ("compact_wide_rep", "compact_wide"),
                                         ("compact_low_rep", "compact_low"), ("compact_repx", "compact")])
def test_saved_rep_net_is_the_plain_registry_net_of_the_same_shape(name, plain):
    saved = inference_model(DeblurModel(build_network(name), name=name))
    assert saved.name == plain
    shapes = {k: v.shape for k, v in saved.net.state_dict().items()}
    assert shapes == {k: v.shape for k, v in build_network(plain).state_dict().items()}


def test_cosine_schedule_warms_up_then_reaches_its_floor():
    cfg = TrainConfig(lr_schedule="cosine", lr_warmup=10, lr_min_ratio=0.01)
    f = lr_factor(cfg, 110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.01 + 0.99 * 0.5, rel=1e-6)
    assert f(110) == pytest.approx(0.01)
    assert lr_factor(TrainConfig(), 100)(50) == pytest.approx(0.5)     # linear default unchanged


def test_frequency_loss_sees_detail_that_is_lost():
    g = torch.Generator().manual_seed(0)
    s = torch.rand(1, 3, 32, 32, generator=g)
    smooth = torch.nn.functional.avg_pool2d(s, 3, 1, 1, count_include_pad=False)
    assert frequency_loss(s, s) == 0
    assert frequency_loss(smooth, s) > 0.01
    # Parseval: the orthonormal spectrum has the image's energy
    d = torch.fft.fft2(s - smooth, norm="ortho")
    assert float((d.abs() ** 2).sum()) == pytest.approx(float(((s - smooth) ** 2).sum()), rel=1e-4)


def _cfg(tmp_path, photos, iterations):
    gopro = shared_path("gopro240/GOPR0477_11_00")
    return TrainConfig.from_dict({
        "backbone": "compact_rep", "paired_only": True, "iterations": iterations, "batch_paired": 2, "crop": 32,
        "lr_G": 1e-3, "lr_schedule": "cosine", "lr_warmup": 2, "ema_decay": 0.9, "grad_clip": None,
        "loss_weights": {"G_content": 1.0, "G_fft": 0.1}, "workers": 1, "checkpoint_every": 2,
        "tensorboard": False, "output_dir": str(tmp_path / "run"),
        "data": {"paired": [
            {"type": "photos", "path": str(photos), "split": "train", "cache": True, "weight": 0.7},
            {"type": "gopro240", "path": str(gopro), "frame_range": [0, 12], "n_frames": [7, 9], "cache": True,
             "weight": 0.3}]}})


def test_default_recipe_resumes_exactly_with_ema_and_workers(tmp_path, photos):
    torch.set_num_threads(1)
    full = Trainer(_cfg(tmp_path / "a", photos, 4), log=lambda *_: None)
    list(full.iterations())
    part = Trainer(_cfg(tmp_path / "b", photos, 4), log=lambda *_: None)
    it = part.iterations()
    for _ in range(2):
        next(it)
    it.close()                                                # stop after the checkpoint at iteration 2
    resumed = Trainer(_cfg(tmp_path / "b", photos, 4), resume=tmp_path / "b" / "run", log=lambda *_: None)
    assert resumed.start == 2
    list(resumed.iterations())
    for x, y in zip(full.step.ema.state_dict().values(), resumed.step.ema.state_dict().values()):
        assert torch.equal(x, y)
    for x, y in zip(full.step.G.state_dict().values(), resumed.step.G.state_dict().values()):
        assert torch.equal(x, y)
    from neurmap.core import load_weights
    G, meta = load_weights(str(tmp_path / "a" / "run" / "final.safetensors"))
    assert meta["architecture"] == "compact"                  # folded for inference
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        ema = full.step.ema.module.eval()
        assert torch.allclose(G.eval()(x), ema(x), atol=1e-5)    # the file holds the EMA weights
        assert not math.isclose(float((G(x) - full.step.G(x)).abs().max()), 0.0, abs_tol=1e-7)
