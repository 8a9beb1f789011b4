"""The motion net's closed-form blur prior (neurmap.core.models.blur_prior) and how M carries it."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neurmap.core.errors import ConfigError
from neurmap.core.models import build_network
from neurmap.core.models.blur_prior import blur_direction, blur_length, frame_blur
from neurmap.core.reblur import reblur


def _photo(size=(128, 160)):
    import cv2
    import skimage.data as skd

    img = cv2.resize(skd.astronaut(), (size[1], size[0]), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    return torch.from_numpy(img).permute(2, 0, 1)[None].contiguous()


def _linear_blur(img, angle_deg, half_px):
    a = math.radians(angle_deg)
    m = torch.tensor([math.sin(a), math.cos(a)]).view(1, 2, 1, 1) * (half_px / 20.0)
    return reblur(img, m.expand(1, 2, *img.shape[-2:]).contiguous(), taps=31)


@pytest.mark.parametrize("angle", [0, 30, 90, 135])
def test_prior_reads_a_known_linear_blur(angle):
    """A uniform linear blur of a photo: the direction within 12 degrees (sign-free), the blur length within 25 %."""
    half = 4.0
    b = _linear_blur(_photo(), angle, half)
    g = b.mean(1, keepdim=True)
    u = blur_direction(g)[0]
    true = torch.tensor([math.sin(math.radians(angle)), math.cos(math.radians(angle))])
    assert math.degrees(math.acos(min(1.0, abs(float(u @ true))))) < 12
    length = float(blur_length(g, blur_direction(g))[0])
    assert length == pytest.approx(2 * half, rel=0.25)
    m = frame_blur(b)
    assert m.shape == (1, 2, *b.shape[-2:]) and torch.allclose(m, m[:, :, :1, :1].expand_as(m))
    assert float(m[0, :, 0, 0].norm()) * 20 == pytest.approx(length / 2, rel=1e-5)


def test_prior_reads_more_blur_in_blurrier_images():
    img = _photo()
    reads = [float(frame_blur(_linear_blur(img, 60, h)).norm(dim=1).mean()) * 20 for h in (1.5, 3.0, 6.0)]
    assert reads[0] < reads[1] < reads[2]


def test_length_is_the_first_deep_minimum_not_one_from_periodic_texture():
    """Stripes of an 18 px period add an autocorrelation minimum at 9-10 px: the global minimum lands there on a
    2 px blur, the first minimum at least DEPTH as deep does not."""
    img = _photo()
    stripes = 0.05 * torch.sin(2 * math.pi * torch.arange(img.shape[-1]).float() / 18).view(1, 1, 1, -1)
    g = _linear_blur(img + stripes, 0, 1.0).mean(1, keepdim=True)
    u = torch.tensor([[0.0, 1.0]])
    assert float(blur_length(g, u, depth=1.0)[0]) > 8
    assert float(blur_length(g, u)[0]) < 5


def test_direction_follows_the_sharp_edges_not_the_weak_texture():
    """Low-contrast vertical stripes hold most of the gradient energy along x; a disk blurred along x keeps its
    sharp edges along y. The plain structure tensor reads the stripes (vertical blur), the edge-weighted one the
    blur."""
    h, w = 128, 160
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    disk = (((yy - 64) ** 2 + (xx - 80) ** 2) < 30 ** 2).float()
    img = (0.5 + 0.1 * torch.sin(2 * math.pi * xx / 24) + 0.4 * disk).expand(1, 3, h, w).contiguous()
    g = _linear_blur(img, 0, 4.0).mean(1, keepdim=True)
    assert abs(float(blur_direction(g, edge_power=2)[0, 0])) > 0.99        # (dy, dx) = vertical: wrong
    assert abs(float(blur_direction(g)[0, 1])) > 0.99                       # horizontal: the blur


def test_large_frames_are_read_pooled_so_long_blur_stays_in_range():
    """A 24 px blur of a 736-line frame is longer than the lags (16 px) at full size; read pooled by 2 it is not."""
    big = torch.nn.functional.interpolate(_photo((368, 368)), scale_factor=2, mode="bilinear", align_corners=False)
    half = float(frame_blur(_linear_blur(big, 30, 12.0))[0, :, 0, 0].norm()) * 20
    assert 10.0 < half < 18.0          # read at full size it would stop at MAX_LAG / 2 = 8 (uncalibrated: ~1.3x long)


def test_motion_net_adds_the_scaled_prior_and_old_checkpoints_load_with_it_off():
    torch.manual_seed(0)
    net = build_network("motion").eval()
    x = _linear_blur(_photo((64, 64)), 45, 3.0)
    with torch.no_grad():
        plain = net(x)
        net.prior_scale.fill_(0.7)
        with_prior = net(x)
    torch.testing.assert_close(with_prior, plain + 0.7 * frame_blur(x), atol=1e-6, rtol=0)
    old = {k: v for k, v in net.state_dict().items() if k != "prior_scale"}   # saved before the prior existed
    fresh = build_network("motion")
    fresh.prior_scale.fill_(0.5)
    fresh.load_state_dict(old)
    assert float(fresh.prior_scale) == 0.0


def test_train_config_turns_the_prior_on_as_exactly_the_prior():
    from neurmap.core.train import TrainConfig, build_nets

    _, M, _ = build_nets(TrainConfig(backbone="compact", motion_prior=0.7, paired_only=False))
    x = _linear_blur(_photo((64, 64)), 20, 3.0)
    with torch.no_grad():
        torch.testing.assert_close(M.eval()(x), 0.7 * frame_blur(x), atol=1e-6, rtol=0)
    with pytest.raises(ConfigError, match="motion_prior"):
        TrainConfig(motion_prior="yes")


def test_motion_net_with_the_prior_exports_to_onnx(tmp_path):
    from neurmap.core.models.wrapper import MotionModel
    from neurmap.export.onnx_export import export_motion_onnx, onnx_session

    torch.manual_seed(0)
    net = build_network("motion")
    net.prior_scale.fill_(0.7)
    mm = MotionModel(net).eval()
    p = export_motion_onnx(mm, tmp_path / "motion.onnx", 64, 96)
    x = _linear_blur(_photo((64, 96)), 70, 3.0)
    y = onnx_session(p).run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        ref = mm(x).numpy()
    assert np.abs(y - ref).max() < 1e-4


def test_prior_passes_no_gradient_to_the_image_even_on_flat_images():
    """In a NeurMAP run G's loss reaches M(G(B)): the prior must not send NaN or Inf back (flat images are where
    the direction's square roots have infinite slope)."""
    torch.manual_seed(0)
    net = build_network("motion")
    net.prior_scale.fill_(0.7)
    for x in (torch.full((1, 3, 64, 64), 0.5), torch.rand(1, 3, 64, 64)):
        x = x.requires_grad_(True)
        net(x).abs().sum().backward()
        assert torch.isfinite(x.grad).all()
