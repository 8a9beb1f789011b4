"""Calibration: frame selection (seeded, stratified, cached, disjoint hold-out), reader, ranges, the torch
interpreter of QDQ graphs, sensitivity and parity numbers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conftest import shared_path

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def test_select_frames_synthesizes_gopro_pairs_seeded_and_cached(tmp_path):
    from neurmap.calibration.frames import select_frames

    src = shared_path("gopro240", "GOPR0477_11_00")
    kw = dict(seed=1, frame_range=(0, 60), synthesize=(7, 13), pool_factor=1, crops_per_frame=2, cache_dir=tmp_path)
    cal, hold = select_frames([src], 6, 48, 64, holdout=2, **kw)
    assert cal.blurry.shape == (6, 3, 48, 64) and cal.sharp.shape == (6, 3, 48, 64)
    assert hold.blurry.shape == (2, 3, 48, 64) and hold.sharp is not None
    assert cal.blurry.dtype == np.float32 and 0 <= cal.blurry.min() and cal.blurry.max() <= 1
    assert all(7 <= i["frames"] <= 13 and i["first"] + i["frames"] <= 60 for i in cal.info)
    # hold-out never shares a source window with calibration
    cal_w = {(i["first"], i["frames"]) for i in cal.info}
    assert not cal_w & {(i["first"], i["frames"]) for i in hold.info}
    # blur strength spread: scores cover a range, not one stratum
    scores = sorted(i["blur_score"] for i in cal.info)
    assert scores[-1] > scores[0]
    assert len(list(tmp_path.glob("*.npy"))) >= 2
    again, _ = select_frames([src], 6, 48, 64, holdout=2, **kw)   # from the cache
    assert np.array_equal(again.blurry, cal.blurry) and again.info == cal.info


def test_select_frames_real_blurry_folder_and_small_frames(tmp_path):
    from neurmap.calibration.frames import looks_like_sharp_highfps, select_frames

    folder = shared_path("gopro_blurry_unpaired")
    assert not looks_like_sharp_highfps(folder)
    cal, _ = select_frames([folder], 4, 64, 64, seed=0, cache_dir=None, pool_factor=1)
    assert cal.blurry.shape == (4, 3, 64, 64) and cal.sharp is None
    assert len({i["first"] for i in cal.info}) >= 3                 # spread over different frames


def test_frame_reader_batches_ranges_rewind():
    from neurmap.calibration.reader import FrameReader

    r = FrameReader(np.zeros((5, 3, 8, 8), np.float32), "blurry", batch=2)
    got = []
    while (b := r.get_next()) is not None:
        got.append(b["blurry"].shape[0])
    assert got == [2, 2, 1]
    r.set_range(1, 3)
    assert len(r) == 2 and r.get_next()["blurry"].shape[0] == 2 and r.get_next() is None
    r.rewind()
    assert r.get_next() is not None


def test_ranges_from_histograms_methods():
    from neurmap.export.ort_quant import ranges_from_histograms

    rng = np.random.default_rng(0)
    x = rng.laplace(0, 1, 400_000).astype(np.float32)              # heavy tails, like conv activations
    t = float(np.abs(x).max())
    h, e = np.histogram(x, 2048, range=(-t, t))
    hists = {"a": (h, e.astype(np.float32), np.float32(x.min()), np.float32(x.max()))}
    relu = np.maximum(x, 0)
    h2, e2 = np.histogram(relu, 2048, range=(-relu.max(), relu.max()))
    hists["r"] = (h2, e2.astype(np.float32), np.float32(0.0), np.float32(relu.max()))
    mm = ranges_from_histograms(hists, "minmax")
    mse = ranges_from_histograms(hists, "mse")
    pct = ranges_from_histograms(hists, "percentile", 99.99)
    assert mm["a"][1] == pytest.approx(float(x.max()), rel=1e-4)
    assert 4.0 < mse["a"][1] < 0.9 * x.max() and 0.9 * x.min() < mse["a"][0] < -4.0   # tails clipped, not cut
    assert mse["r"][0] == 0.0 and 4.0 < mse["r"][1] < 0.9 * x.max()                   # ReLU range starts at 0
    assert pct["a"][1] < mm["a"][1] and pct["r"][0] == 0.0


class _Tiny(nn.Module):
    pad_multiple = 1

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 8, 4, stride=2, padding=1)
        self.c3 = nn.Conv2d(8, 3, 3, stride=2, padding=1)

    def forward(self, x):
        y = torch.relu(self.c1(x))
        y = self.c2(y) + y
        return self.c3(torch.relu(self.up(y))) + x


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from neurmap.export.onnx_export import export_onnx
    from neurmap.export.ort_quant import QuantConfig, collect_histograms, prepare, quantize_int8

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny")
    net = _Tiny().eval()
    f = export_onnx(net, d / "f.onnx", 16, 16, dynamic=True)
    pre = prepare(f, d / "pre.onnx")
    frames = np.random.default_rng(0).random((4, 3, 16, 16), dtype=np.float32)
    hists = collect_histograms(pre, frames)
    q = quantize_int8(f, d / "q.onnx", frames, QuantConfig(method="mse"), hists=hists)
    return net, f, pre, q.path, frames


def test_onnx_torch_runs_float_and_qdq_graphs_like_ort(tiny):
    from neurmap.calibration.onnx_torch import OnnxTorch
    from neurmap.export.onnx_export import onnx_session

    net, f, pre, q, frames = tiny
    x = torch.from_numpy(frames)
    m = OnnxTorch(q, pre).eval()
    with torch.no_grad():
        yq = m(x).numpy()
        m.quantize = False
        yf = m(x).numpy()
        ref = net(x).numpy()
    assert np.abs(yf - ref).max() < 1e-5                       # float mode = the float net (Relu restored)
    yo = onnx_session(q, opt_level="none").run(None, {"blurry": frames})[0]
    assert np.abs(yq - yo).max() < 0.02                        # fake quant = ORT's QDQ arithmetic
    assert np.abs(yq - ref).max() > 1e-4                       # and it really quantizes


def test_sensitivity_ranks_points_and_exclusions_help(tiny, tmp_path):
    from neurmap.calibration.sensitivity import choose_exclusions, linear_sensitivity, measured_mse
    from neurmap.export.ort_quant import QuantConfig, quantize_int8

    net, f, pre, q, frames = tiny
    s = linear_sensitivity(q, pre, frames[:2], n_probe=4)
    assert s.total_measured > 0 and s.total_predicted > 0
    assert all(v >= 0 for v in s.points.values()) and s.top(3)
    excl, share = choose_exclusions(s, q, budget=2)
    assert excl and 0 < share <= 1
    assert measured_mse(q, pre, frames, {p for p in s.points if s.owner.get(p) in excl}) <= s.total_measured + 1e-12


def test_with_initializers_carries_new_weights_without_saving(tiny, tmp_path):
    """QAT's write-back: the float graph with new weights runs like the net holding them (export saves it)."""
    from neurmap.calibration.onnx_torch import with_initializers
    from neurmap.export.onnx_export import onnx_session, save_onnx_atomic

    net, f, pre, q, frames = tiny
    other = _Tiny().eval()
    torch.manual_seed(1)
    for p_ in other.parameters():
        torch.nn.init.normal_(p_, std=0.1)
    init = {t.name for t in onnx.load(str(f)).graph.initializer}
    state = {k: v.detach().numpy() for k, v in other.state_dict().items() if k in init}
    assert len(state) == len(list(other.parameters()))               # names match the exported initializers
    before = sorted(tmp_path.iterdir())
    m = with_initializers(f, state)
    assert sorted(tmp_path.iterdir()) == before                       # nothing written by calibration
    out = save_onnx_atomic(m, tmp_path / "new.onnx")
    y = onnx_session(out).run(None, {"blurry": frames})[0]
    with torch.no_grad():
        assert np.abs(y - other(torch.from_numpy(frames)).numpy()).max() < 1e-4
        assert np.abs(y - net(torch.from_numpy(frames)).numpy()).max() > 1e-2


def test_parity_numbers():
    from neurmap.calibration.parity import compare

    rng = np.random.default_rng(0)
    gt = rng.random((2, 3, 32, 32), dtype=np.float32)
    ref = np.clip(gt + rng.normal(0, 0.02, gt.shape).astype(np.float32), 0, 1)
    out = np.clip(ref + rng.normal(0, 0.005, gt.shape).astype(np.float32), 0, 1)
    p = compare(out, ref, gt, with_ssim=True)
    assert 40 < p.psnr_vs_float < 50 and p.max_abs > p.p99_abs > 0
    assert p.loss_db is not None and 0 < p.loss_db < 1 and p.ssim_gt <= p.ssim_gt_float + 1e-3
    assert "vs float" in p.summary() and p.to_dict()["loss_db"] == pytest.approx(p.loss_db, abs=1e-3)
