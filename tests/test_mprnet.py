"""MPRNet: official parameter layout, shapes, batched-patch forward == per-patch forward, export."""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import pytest
import torch

from neurmap.core.models import build_network
from neurmap.core.models.mprnet import MPRNet

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "official_state_dict_keys.txt"
SECTION = "## MPRNet (models/MPRNet.py)"


def tiny_net() -> MPRNet:
    """Same topology, few channels: for the slower export checks."""
    torch.manual_seed(0)
    return MPRNet(n_feat=8, scale_unetfeats=4, scale_orsnetfeats=4, num_cab=1).eval()


@pytest.fixture(scope="module")
def net() -> MPRNet:
    torch.manual_seed(0)
    return build_network("mprnet").eval()


def reference_keys() -> list[tuple[str, tuple[int, ...]]]:
    if not REFERENCE.exists():
        pytest.skip(f"reference key list {REFERENCE} is absent (it lives in ../shared/reference beside the checkout)")
    rows, inside = [], False
    for line in REFERENCE.read_text().splitlines():
        if line.startswith("## "):
            if inside:
                break
            inside = line.startswith(SECTION)
            continue
        if inside and line.strip():
            name, shape = line.split("\t")
            rows.append((name, tuple(int(v) for v in shape.strip("()").split(",") if v.strip())))
    assert rows, f"no {SECTION!r} section in {REFERENCE}"
    return rows


def test_parameter_count(net):
    # the one PReLU shared by all CABs counts once, as in the official net
    assert sum(p.numel() for p in net.parameters()) == 20127073
    assert len(net.state_dict()) == 316


def test_state_dict_matches_official(net):
    ref = reference_keys()
    assert len(ref) == 316
    mine = [(k, tuple(v.shape)) for k, v in net.state_dict().items()]
    assert mine == ref


def test_official_state_dict_loads():
    """A state dict in the official layout (names and shapes from the reference list, seeded values) loads
    strictly, and every official tensor lands where its name says."""
    g = torch.Generator().manual_seed(1)
    official = {k: torch.randn(shape, generator=g) for k, shape in reference_keys()}
    prelu = [k for k, v in official.items() if k.endswith("body.1.weight") and v.shape == (1,)]
    assert len(prelu) == 55                    # the one PReLU all CABs share: one value under 55 names
    for k in prelu:
        official[k] = torch.tensor([0.3])
    fresh = MPRNet()
    fresh.load_state_dict(official, strict=True)
    got = fresh.state_dict()
    assert got.keys() == official.keys()
    assert all(torch.equal(got[k], v) for k, v in official.items())


def test_output_shape(net):
    x = torch.rand(1, 3, 16, 24)
    with torch.no_grad():
        y = net(x)
        stages = net.forward_stages(x)
    assert y.shape == x.shape
    assert len(stages) == 3 and all(s.shape == x.shape for s in stages)
    assert torch.equal(stages[0], y)


def test_pad_multiple():
    assert MPRNet.pad_multiple == 8
    net = tiny_net()
    with torch.no_grad():
        assert net(torch.rand(1, 3, 8, 16)).shape == (1, 3, 8, 16)
        for h, w in [(12, 16), (16, 20)]:  # multiples of 4 but not of 8 break the U-Net skips
            with pytest.raises(RuntimeError):
                net(torch.rand(1, 3, h, w))


def per_patch_forward(net: MPRNet, x3: torch.Tensor) -> list[torch.Tensor]:
    """The official forward, patch by patch with integer slicing: the reference for the batched one."""
    H, W = x3.shape[2], x3.shape[3]
    h, w = H // 2, W // 2
    top, bot = x3[:, :, :h, :], x3[:, :, h:, :]
    quads = [top[..., :w], top[..., w:], bot[..., :w], bot[..., w:]]  # ltop, rtop, lbot, rbot

    feats = [net.stage1_encoder(net.shallow_feat1(q)) for q in quads]
    f1_top = [torch.cat((a, b), 3) for a, b in zip(feats[0], feats[1])]
    f1_bot = [torch.cat((a, b), 3) for a, b in zip(feats[2], feats[3])]
    r1_top, r1_bot = net.stage1_decoder(f1_top), net.stage1_decoder(f1_bot)
    s_top, img_top = net.sam12(r1_top[0], top)
    s_bot, img_bot = net.sam12(r1_bot[0], bot)
    stage1 = torch.cat([img_top, img_bot], 2)

    c_top = net.concat12(torch.cat([net.shallow_feat2(top), s_top], 1))
    c_bot = net.concat12(torch.cat([net.shallow_feat2(bot), s_bot], 1))
    f2_top = net.stage2_encoder(c_top, f1_top, r1_top)
    f2_bot = net.stage2_encoder(c_bot, f1_bot, r1_bot)
    f2 = [torch.cat((a, b), 2) for a, b in zip(f2_top, f2_bot)]
    r2 = net.stage2_decoder(f2)
    s3, stage2 = net.sam23(r2[0], x3)

    c3 = net.concat23(torch.cat([net.shallow_feat3(x3), s3], 1))
    stage3 = net.tail(net.stage3_orsnet(c3, f2, r2)) + x3
    return [stage3, stage2, stage1]


def test_batched_patches_equal_per_patch_forward(net):
    torch.manual_seed(1)
    x = torch.rand(2, 3, 16, 24)  # batch > 1 and H != W catch any mix-up of patch order or axes
    with torch.no_grad():
        # non-default PReLU slope so the shared activation matters
        net.shallow_feat1[1].body[1].weight.fill_(0.1)
        got = net.forward_stages(x)
        want = per_patch_forward(net, x)
    for g, r in zip(got, want):
        assert g.shape == r.shape == x.shape
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)


def test_jit_trace_has_no_baked_sizes():
    net = tiny_net()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = torch.jit.trace(net, torch.rand(1, 3, 16, 16))
    tracer = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    assert not tracer, [str(w.message) for w in tracer]
    x = torch.rand(2, 3, 24, 32)  # other batch and size than traced with
    with torch.no_grad():
        torch.testing.assert_close(traced(x), net(x), atol=1e-6, rtol=1e-6)


def test_onnx_export():
    pytest.importorskip("onnx")
    net = tiny_net()
    buf = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.onnx.export(net, (torch.rand(1, 3, 16, 16),), buf, dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["deblurred"])
    assert buf.getbuffer().nbytes > 0
    tracer = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    assert not tracer, [str(w.message) for w in tracer]
