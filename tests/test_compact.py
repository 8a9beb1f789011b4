"""CompactDeblur (issue 7): compute budget, any-size I/O, export-friendly ops, the shipped default model."""
from __future__ import annotations

import io

import pytest
import torch

from neurmap.core import build_model, load_motion, load_weights
from neurmap.core.checkpoint import read_metadata, shipped_models
from neurmap.core.models import build_network
from neurmap.core.models.compact import CompactDeblur
from neurmap.core.profile import network_cost

from conftest import shared_path

#: what the compact backbone may contain after ONNX export (static shape, opset 17): convolutions, ReLU,
#: add/mul/concat, the depth<->space reshuffles (pixel_unshuffle exports as Reshape/Transpose/Reshape) and
#: the exporter's own constant plumbing (Identity = a deduplicated initializer)
ALLOWED_OPS = {"Conv", "Relu", "Add", "Mul", "Concat", "DepthToSpace", "SpaceToDepth", "Reshape", "Transpose",
               "Constant", "Identity"}


def test_gmac_budget_at_720p():
    c = network_cost("compact", 720, 1280)
    dmphn = network_cost("dmphn_1_2_4", 720, 1280)
    assert c.gmacs <= 40.0
    assert c.gmacs <= dmphn.gmacs / 15
    assert 0.5e6 < c.params < 2e6


def test_registered_with_pad_multiple():
    net = build_network("compact")
    assert isinstance(net, CompactDeblur)
    assert net.pad_multiple == 8


@pytest.mark.parametrize("shape", [(1, 3, 37, 53), (2, 3, 64, 96), (1, 3, 8, 8)])
def test_any_size_io(shape):
    torch.manual_seed(0)
    model = build_model("compact").eval()
    x = torch.rand(*shape)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


def test_identity_init_returns_input():
    net = build_network("compact").init_identity().eval()
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(net(x), x)


@pytest.mark.parametrize("name", ["compact", "compact_deep"])
def test_onnx_export_uses_only_allowed_ops(name):
    import onnx

    net = build_network(name).eval()
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(net, (torch.rand(1, 3, 64, 96),), buf, input_names=["blurry"], output_names=["sharp"],
                          opset_version=17, dynamo=False)
    ops = {n.op_type for n in onnx.load_from_string(buf.getvalue()).graph.node}
    assert ops - ALLOWED_OPS == set(), f"ops outside the allow-list: {sorted(ops - ALLOWED_OPS)}"
    assert "Conv" in ops and "DepthToSpace" in ops


# --- the grown net (a fourth, 1/16 level) --------------------------------------------------------------

def test_deep_variant_within_budget_and_pads_to_16():
    c = network_cost("compact_deep", 720, 1280)
    assert network_cost("compact", 720, 1280).gmacs < c.gmacs <= 40.0
    net = build_network("compact_deep")
    assert net.pad_multiple == 16
    y = build_model("compact_deep").eval()(torch.rand(1, 3, 40, 56))   # padded to 48x64 inside, cropped back
    assert y.shape == (1, 3, 40, 56)


def test_grown_net_starts_as_the_smaller_net_and_its_branch_is_live():
    torch.manual_seed(0)
    small = build_network("compact").eval()
    deep = build_network("compact_deep").eval()
    assert deep.grow_from(small)
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(deep(x), small(x), atol=1e-5, rtol=0)
        torch.nn.init.normal_(deep.up3.weight, std=0.05)     # the branch, once trained, changes the output
        assert (deep(x) - small(x)).abs().max() > 1e-3
    assert not build_network("compact_deep").grow_from(CompactDeblur((16, 32, 64)))   # other widths
    assert not build_network("compact_deep").grow_from(build_network("compact_deep"))  # already deep


def test_trainer_grows_init_weights_into_the_deeper_backbone(tmp_path):
    from neurmap.core.checkpoint import save_weights
    from neurmap.core.errors import NeurmapError
    from neurmap.core.train import TrainConfig, build_nets

    torch.manual_seed(0)
    small = build_model("compact").eval()
    path = save_weights(tmp_path / "small.safetensors", small)
    G, _, _ = build_nets(TrainConfig(backbone="compact_deep", init_weights=str(path), paired_only=True))
    assert G.name == "compact_deep" and G.net.deep == 256
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(G.eval()(x), small(x), atol=1e-5, rtol=0)
    with pytest.raises(NeurmapError, match="backbone to match"):
        build_nets(TrainConfig(backbone="compact_gated", init_weights=str(path), paired_only=True))


# --- the shipped default ------------------------------------------------------------------------------

def test_default_is_shipped_and_small():
    assert "default" in shipped_models()
    path = shipped_models()["default"]
    assert path.stat().st_size < 10e6
    meta = read_metadata(path)
    assert meta["architecture"] == "compact"
    assert meta["input_range"] == "0,1"
    prov = meta["provenance"]
    # the last of the recipe's runs wrote the file: configs/motion_prior.yaml (M only; G carried from stage 2)
    assert prov["trained_by"] == "neurmap train" and prov["config"]["motion_only"] is True
    assert prov["config"]["backbone"] == "compact"
    assert meta.get("motion_architecture") == "motion"      # G + the NeurMAP motion net, nothing else


def test_default_loads_by_name_in_fp32_with_motion_net():
    model, meta = load_weights("default")
    assert meta["architecture"] == "compact"
    assert all(p.dtype == torch.float32 for p in model.parameters())
    motion = load_motion("default")
    with torch.no_grad():
        m = motion(torch.rand(1, 3, 40, 56))
    assert m.shape == (1, 2, 40, 56) and torch.isfinite(m).all()


def test_default_deblurs_heldout_gopro_crops_significantly_and_leaves_static_ones_alone():
    """Over 30 held-out 192x192 crops (3 GoPro-protocol windows of 11 frames from frames 80-119, which
    training never sees): where the crop is blurred (blurry PSNR < 40 dB) the PSNR gain is positive by a
    one-sided Wilcoxon signed-rank test at p < 0.01 with a median of at least 0.2 dB; where nothing moved
    (>= 40 dB) no crop loses more than 0.5 dB. An identity net fails the first, a broken one the second."""
    import numpy as np
    from scipy import stats

    from neurmap.core.data import gopro_pairs_from_folder
    from neurmap.core.metrics import psnr

    seq = shared_path("gopro240", "GOPR0477_11_00")
    pairs = gopro_pairs_from_folder(seq, n_frames=11, frame_range=(80, 120))
    model, _ = load_weights("default")
    blurred, static = [], []
    for blurry, sharp in pairs:
        for top in (0, 320):
            for left in range(0, 1280 - 191, 256):
                b = blurry[None, :, top:top + 192, left:left + 192]
                s = sharp[None, :, top:top + 192, left:left + 192]
                with torch.no_grad():
                    out = model(b).clamp(0, 1)
                before = float(psnr(b, s))
                (blurred if before < 40.0 else static).append(float(psnr(out, s)) - before)
    assert len(pairs) == 3 and len(blurred) >= 10 and len(static) >= 10, (len(blurred), len(static))
    gains = np.array(blurred)
    p = stats.wilcoxon(gains, alternative="greater").pvalue
    assert p < 0.01 and np.median(gains) >= 0.2, f"gains {np.round(gains, 2)} (p = {p:.4f})"
    assert min(static) > -0.5, f"static crops: {np.round(static, 2)}"
