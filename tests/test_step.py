"""Losses and one full NeurMAP iteration on tiny real crops."""
from __future__ import annotations

import copy

import pytest
import torch

from neurmap.core import build_model
from neurmap.core import losses as L
from neurmap.core.data.io import list_images, read_image
from neurmap.core.data.synthesis import gopro_pairs_from_folder
from neurmap.core.step import LossWeights, NeurMAPStep

from conftest import shared_path


def test_loss_terms_behave():
    x = torch.rand(2, 3, 32, 32)
    assert L.reblur_loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert L.reblur_loss(x, x.flip(-1)) > 0.01
    assert L.total_variation(torch.ones(1, 2, 8, 8)) == 0
    m = torch.zeros(1, 2, 4, 4)
    assert L.sharp_zero_motion_loss(m) == 0
    assert L.blurry_large_motion_loss(torch.ones(1, 2, 4, 4)) == 0
    assert L.never_blurrier_loss(torch.zeros(1, 2, 4, 4), torch.ones(1, 2, 4, 4)) == 0
    assert L.never_blurrier_loss(torch.ones(1, 2, 4, 4), torch.zeros(1, 2, 4, 4)) > 0
    d = [torch.zeros(1, 1, 5, 5), torch.zeros(1, 1, 3, 3)]
    assert L.discriminator_loss(d, [t + 1 for t in d]) == 0
    assert L.generator_adversarial_loss(d) == 2


def test_reblur_loss_finite_for_fresh_net_outputs():
    torch.manual_seed(0)
    out = (torch.randn(2, 3, 64, 64) * 3).requires_grad_()
    loss = L.reblur_loss(out, torch.rand(2, 3, 64, 64))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(out.grad).all()


def test_sharp_motion_pool_keeps_last_50():
    pool = L.SharpMotionPool(50)
    for i in range(60):
        pool.update(torch.full((1, 2, 4, 4), float(i)))
    assert len(pool.values) == 50
    assert pool.mean().tolist() == pytest.approx([34.5, 34.5])
    clone = L.SharpMotionPool()
    clone.load_state_dict(pool.state_dict())
    assert torch.equal(clone.mean(), pool.mean())


def _real_crops(size: int = 32):
    pairs = gopro_pairs_from_folder(shared_path("gopro240", "GOPR0477_11_00"), n_frames=7, count=2, start=10,
                                    crop=(300, 600, size, size))
    pb = torch.stack([pairs[i][0] for i in range(2)])
    ps = torch.stack([pairs[i][1] for i in range(2)])
    car = list_images(shared_path("real_video", "car"))[:2]
    ub = torch.stack([read_image(p)[:, 300:300 + size, 600:600 + size] for p in car])
    us = torch.stack([pairs[1][1].flip(-1), pairs[0][1].flip(-2)])
    return pb, ps, ub, us


def _params(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _changed(before, net):
    return any(not torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_one_full_iteration_from_random_init_changes_all_three_nets():
    torch.manual_seed(0)
    G, M, D = build_model("dmphn_1_2_4"), build_model("motion"), build_model("discriminator")
    step = NeurMAPStep(G, M, D)
    g0, m0, d0 = _params(G), _params(M), _params(D)
    out = step(*_real_crops())
    assert set(out) >= {"M_reblur", "M_tv", "M_sharp", "M_blur", "M_f_sharp", "M_never_blurrier", "D",
                        "G_content", "G_reblur", "G_f_sharp", "G_global"}
    assert all(torch.isfinite(v) for v in out.values()), out
    assert _changed(g0, G) and _changed(m0, M) and _changed(d0, D)


def test_each_step_changes_only_its_own_net():
    """sg[·] respected: G's step leaves M and D unchanged, M's step leaves G and D unchanged, etc."""
    torch.manual_seed(1)
    G, M, D = build_model("dmphn_1_2_4"), build_model("motion"), build_model("discriminator")
    step = NeurMAPStep(G, M, D)
    batch = _real_crops()
    snaps = []

    def snapshot(opt_name):
        opt = getattr(step, opt_name)
        real = opt.step

        def wrapped(*a, **k):
            before = (_params(G), _params(M), _params(D))
            r = real(*a, **k)
            snaps.append((opt_name, before, (_params(G), _params(M), _params(D))))
            return r
        opt.step = wrapped

    for name in ("opt_M", "opt_D", "opt_G"):
        snapshot(name)
    step(*batch)
    assert [s[0] for s in snaps] == ["opt_M", "opt_D", "opt_G"]
    own = {"opt_G": 0, "opt_M": 1, "opt_D": 2}
    for name, before, after in snaps:
        for i in range(3):
            moved = any(not torch.equal(before[i][k], after[i][k]) for k in before[i])
            assert moved == (i == own[name]), f"{name} moved net {i}"


def test_sharp_anchor_term_trains_G_to_leave_shrunk_unpaired_blur_alone():
    """G_anchor alone (every other G weight 0) must move G so that the shrunk unpaired crops pass it more unchanged."""
    torch.manual_seed(0)
    G, M, D = build_model("compact"), build_model("motion"), build_model("discriminator")
    only_anchor = LossWeights(G_content=0, G_reblur=0, G_f_sharp=0, G_global=0, G_anchor=1.0)
    step = NeurMAPStep(G, M, D, weights=only_anchor, lr_G=1e-3)
    batch = _real_crops(64)
    with torch.no_grad():
        before = float(L.sharp_anchor_loss(G, batch[2], 4))
    outs = [step(*batch) for _ in range(4)]
    with torch.no_grad():
        after = float(L.sharp_anchor_loss(G, batch[2], 4))
    assert after < 0.7 * before, (before, after)
    assert float(outs[-1]["G_anchor"]) < float(outs[0]["G_anchor"])  # the step reports the term it lowers
    assert "G_anchor" not in NeurMAPStep(G, M, D)(*batch)          # off by default: SPEC's step unchanged


def test_flow_reblur_term_reads_only_the_video_items_and_needs_their_motion():
    """G_reblur_flow: ℓ_rb under the given absolute motion, on the unpaired items that carry one (NaN: none)."""
    from neurmap.core import load_weights
    from neurmap.core.errors import ConfigError
    from neurmap.core.reblur import reblur

    torch.manual_seed(0)
    G, M, D = load_weights("default")[0], build_model("motion"), build_model("discriminator")
    pb, ps, _, us = _real_crops(64)
    motion = torch.zeros(2, 2, 64, 64)
    motion[0, 1] = 0.25                                              # 5 px horizontal blur on item 0
    ub = reblur(ps.flip(0), motion)                                  # the truth of item 0 is ps[1]
    motion[1] = float("nan")                                         # item 1: no flow (kernel blur, say)
    only_flow = LossWeights(G_content=0, G_reblur=0, G_f_sharp=0, G_global=0, G_reblur_flow=1.0)

    def first_step(blurry, flow):
        step = NeurMAPStep(copy.deepcopy(G), M, D, weights=only_flow, lr_G=1e-4, grad_clip=None)
        return float(step(pb, ps, blurry, us[: len(blurry)], unpaired_motion=flow)["G_reblur_flow"])

    masked = first_step(ub, motion)
    assert masked == pytest.approx(first_step(ub[:1], motion[:1]), rel=1e-4)   # item 1 left out, not zero-motion
    with_item1 = motion.clone()
    with_item1[1] = 0.0
    assert abs(first_step(ub, with_item1) - masked) > 0.05 * masked           # had it been read, the term moves
    step = NeurMAPStep(G, M, D, weights=only_flow, lr_G=1e-4, grad_clip=None)
    later = [float(step(pb, ps, ub, us, unpaired_motion=motion)["G_reblur_flow"]) for _ in range(6)]
    assert later[-1] < 0.5 * masked, (masked, later)                  # G learns to explain the video's blur
    with pytest.raises(ConfigError, match="G_reblur_flow"):
        step(pb, ps, ub, us)


def test_non_finite_loss_stops_before_any_update():
    torch.manual_seed(0)
    G, M, D = build_model("dmphn_1_2_4"), build_model("motion"), build_model("discriminator")
    step = NeurMAPStep(G, M, D, weights=LossWeights(M_sharp=float("inf")))  # poisons M's total loss
    m0, g0 = _params(M), _params(G)
    with pytest.raises(FloatingPointError, match="motion net step"):
        step(*_real_crops())
    assert not _changed(m0, M) and not _changed(g0, G)


def test_loss_weights_from_dict_rejects_typos():
    assert LossWeights.from_dict({"G_reblur": 10}).G_reblur == 10
    with pytest.raises(ValueError, match="unknown loss weights"):
        LossWeights.from_dict({"G_rebluur": 10})
    assert LossWeights.real_blur().G_Itv == 1.0
