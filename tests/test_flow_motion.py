"""Flow-derived blur (neurmap.core.flow_motion), the exposure estimator, the flow colour wheel."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from neurmap.core.errors import InputError
from neurmap.core.flow_motion import (FlowEstimator, blur_px, check_exposure, flow_blur, flow_to_color, velocity,
                                      velocity_to_motion)


def _translation_clip(v=(1.5, 4.0), exposure=0.5, n=5, size=(96, 128), sub=9, path=None):
    """A clip of a photo moving at a constant ``v`` = (dy, dx) px/frame (or along ``path(s) -> (y, x)``), each
    frame integrating ``sub`` views over ``exposure`` frame intervals: the true blur streak is exposure·v."""
    import cv2
    import skimage.data as skd

    img = cv2.resize(skd.astronaut(), (size[1] + 80, size[0] + 80), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    frames = []
    for t in range(n):
        acc = np.zeros((*size, 3), np.float32)
        for o in (np.arange(sub) + 0.5) / sub - 0.5:
            s = t + exposure * o
            py, px = path(s) if path else (v[0] * s, v[1] * s)
            mat = np.float32([[1, 0, -40 + px], [0, 1, -40 + py]])
            acc += cv2.warpAffine(img, mat, (size[1], size[0]), flags=cv2.INTER_LINEAR)
        frames.append(torch.from_numpy(acc / sub).permute(2, 0, 1).contiguous())
    return frames


def test_flow_blur_reads_a_known_translation_blur():
    v, e = (1.5, 4.0), 0.5
    frames = _translation_clip(v, e)
    vel = velocity(frames, 2)                               # central difference: flow(1 -> 3) / 2
    inner = vel[:, 16:-16, 16:-16].reshape(2, -1).mean(1)
    # the frames move by +v, so content at p in frame 1 sits at p + 2v in frame 3
    assert inner[0] == pytest.approx(v[0], rel=0.1) and inner[1] == pytest.approx(v[1], rel=0.1)
    m = flow_blur(frames, 2, e)
    true_half_len = e * float(np.hypot(*v)) / 2            # reblur's taps span ±20·|m|
    assert blur_px(m[:, 16:-16, 16:-16]) == pytest.approx(true_half_len, rel=0.12)
    # twice the exposure, twice the blur; the ends of the clip use one-sided differences
    assert blur_px(velocity_to_motion(vel, 1.0)) == pytest.approx(2 * blur_px(velocity_to_motion(vel, 0.5)), rel=1e-5)
    end = velocity(frames, 0)[:, 16:-16, 16:-16].reshape(2, -1).mean(1)
    assert end[1] == pytest.approx(v[1], rel=0.15)


@pytest.mark.parametrize("as_array", [False, True])
def test_five_point_velocity_at_half_scale_reads_full_size_pixels(as_array):
    """The stencil is combined at the working scale and upsampled once: the result is on the frame's own grid
    and in its pixels, for tensors and H×W×3 uint8 arrays alike."""
    v = (1.5, 4.0)
    frames = _translation_clip(v, 0.5, n=5)
    if as_array:
        frames = [(f.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8) for f in frames]
    vel = velocity(frames, 2, FlowEstimator(scale=0.5, preset="fast"), points=5)
    assert vel.shape == (2, 96, 128)
    inner = vel[:, 16:-16, 16:-16].reshape(2, -1).mean(1)
    assert inner[0] == pytest.approx(v[0], rel=0.1) and inner[1] == pytest.approx(v[1], rel=0.1)


def test_flow_blur_explains_the_observed_blur_better_than_other_fractions():
    """Reblurring the (known) sharp frame with the flow-derived motion at the true fraction reproduces the
    blurry frame better than at half or double it."""
    from neurmap.core.metrics import psnr
    from neurmap.core.reblur import reblur

    e = 0.6
    blurry = _translation_clip((-2.0, 5.0), e)
    sharp = _translation_clip((-2.0, 5.0), e, sub=1)        # the view at mid-exposure
    c = slice(16, -16)
    scores = {}
    for k in (0.5, 1.0, 1.6):
        m = flow_blur(blurry, 2, e * k)[None]
        scores[k] = psnr(reblur(sharp[2][None], m)[..., c, c], blurry[2][None, :, c, c])
    assert scores[1.0] > scores[0.5] and scores[1.0] > scores[1.6], scores
    assert scores[1.0] > psnr(sharp[2][:, c, c], blurry[2][:, c, c]) + 3.0


def test_exposure_estimator_on_clips_with_known_fractions():
    """A smooth handheld-like path (0.1 cycles per frame, so the central difference reads the velocity
    well): the estimator recovers short and long fractions."""
    from neurmap.core.exposure import estimate_exposure

    def path(s):
        w = 2 * np.pi * 0.1
        return 9.0 * np.sin(w * s + 0.3), 14.0 * np.sin(0.7 * w * s + 1.1)

    got = {e: estimate_exposure(_translation_clip(exposure=e, n=7, path=path), max_pairs=6).exposure
           for e in (0.3, 0.8)}
    assert got[0.3] == pytest.approx(0.3, rel=0.25) and got[0.8] == pytest.approx(0.8, rel=0.2), got


def test_exposure_estimator_costs_its_pairs_not_the_clip_length():
    """The pairs are spread over the whole clip (the fraction is the camera's; the motion changes along a clip),
    and only their frames get a velocity: a 40-frame clip costs at most two flows per pair (one velocity per
    frame of the pair with the 3-point stencil, one half-way warp), not one per frame."""
    from neurmap.core.exposure import estimate_exposure

    class Counting(FlowEstimator):
        calls = 0

        def __call__(self, a, b):
            Counting.calls += 1
            return super().__call__(a, b)

    def path(s):                                  # the velocity must change between frames to tell e apart
        w = 2 * np.pi * 0.1
        return 9.0 * np.sin(w * s + 0.3), 14.0 * np.sin(0.7 * w * s + 1.1)

    clip = _translation_clip(exposure=0.6, n=40, size=(72, 96), path=path)
    est = estimate_exposure(clip, max_pairs=4, flow=Counting())
    assert est.pairs == 4 and Counting.calls <= 3 * 4, Counting.calls
    assert est.exposure == pytest.approx(0.6, rel=0.25)


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(InputError, match="exposure 1.5 must be in"):
        check_exposure(1.5)
    with pytest.raises(InputError, match="must be a number"):
        check_exposure("fast")
    one = [torch.rand(3, 16, 16)]
    with pytest.raises(InputError, match="at least 2 consecutive frames"):
        velocity(one, 0)
    with pytest.raises(InputError, match="one size"):
        FlowEstimator()(torch.rand(3, 16, 16), torch.rand(3, 16, 20))
    with pytest.raises(InputError, match="flow method"):
        FlowEstimator("lucas")
    from neurmap.core.exposure import estimate_exposure
    with pytest.raises(InputError, match="--exposure"):
        estimate_exposure([torch.rand(3, 16, 16)] * 2)


def test_flow_to_color_wheel():
    m = torch.zeros(2, 4, 8)
    m[1, :, 4:] = 1.0                                       # right half moves +x at full magnitude
    rgb = flow_to_color(m)
    assert rgb.shape == (3, 4, 8)
    assert torch.allclose(rgb[:, 0, 0], torch.ones(3))       # no motion: white
    assert rgb[0, 0, 6] == pytest.approx(1.0) and rgb[1, 0, 6] < 0.05 and rgb[2, 0, 6] < 0.05   # +x: red
    half = flow_to_color(m, max_norm=2.0)                    # a fixed scale: the same motion is paler
    assert 0.4 < float(half[1, 0, 6]) < 0.6
    up = torch.zeros(2, 1, 1)
    up[0] = 1.0                                              # +y: another hue than +x
    assert not torch.allclose(flow_to_color(up)[:, 0, 0], rgb[:, 0, 6])
