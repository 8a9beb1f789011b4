"""Networks: official parameter layout, any-size I/O, export-friendly patching, bad-input messages."""
from __future__ import annotations

import pytest
import torch

from neurmap.core import InputError, build_model
from neurmap.core.models import build_network
from neurmap.core.models.dmphn import DMPHN, from_patches, to_patches
from neurmap.core.profile import network_cost

from conftest import REPO

REFERENCE = REPO.parent / "shared" / "reference" / "official_state_dict_keys.txt"

EXPECTED = {  # name -> (params, state-dict tensors, reference section)
    "dmphn_1_2_4": (5_424_393, 180, None),
    "dmphn_1_2_4_8": (7_232_524, 240, "DMPHN_deblur"),
    "mprnet": (20_127_073, 316, "MPRNet"),
    "motion": (1_128_002, 74, "OffsetNet"),
    "discriminator": (5_529_474, 20, "MultiscaleDiscriminator"),
}


def reference_sections() -> dict[str, dict[str, tuple]]:
    if not REFERENCE.exists():
        pytest.skip(f"{REFERENCE} absent")
    out, cur = {}, None
    for line in REFERENCE.read_text().splitlines():
        if line.startswith("##"):
            cur = line[3:].split()[0].rstrip(":")
            out[cur] = {}
        elif line.strip():
            k, shape = line.split("\t")
            out[cur][k] = tuple(int(v) for v in shape.strip("()").split(",") if v.strip())
    return out


@pytest.mark.parametrize("name", list(EXPECTED))
def test_parameter_layout_matches_official(name):
    params, tensors, section = EXPECTED[name]
    with torch.device("meta"):
        net = build_network(name)
    assert sum(p.numel() for p in net.parameters()) == params
    sd = net.state_dict()
    # our one addition to the official motion net: the closed-form prior's scale (official weights load with it 0)
    extra = {"prior_scale"} if name == "motion" else set()
    assert extra <= set(sd)
    sd = {k: v for k, v in sd.items() if k not in extra}
    assert len(sd) == tensors
    if section:
        ref = reference_sections()[section]
        assert {k: tuple(v.shape) for k, v in sd.items()} == ref


def test_dmphn_1_2_4_is_the_first_three_levels_of_1_2_4_8():
    with torch.device("meta"):
        small, big = build_network("dmphn_1_2_4").state_dict(), build_network("dmphn_1_2_4_8").state_dict()
    assert set(small) == {k for k in big if "lv4" not in k}


def test_patches_roundtrip_and_order():
    x = torch.arange(2 * 1 * 8 * 4, dtype=torch.float32).view(2, 1, 8, 4)
    p = to_patches(x, 4, 2)
    assert p.shape == (16, 1, 2, 2)
    assert torch.equal(from_patches(p, 4, 2), x)
    # first patch of image 0 is its top-left corner
    assert torch.equal(p[0, 0], x[0, 0, :2, :2])


def _official_style_dmphn_1_2_4(net: DMPHN, x: torch.Tensor) -> torch.Tensor:
    """The official per-patch forward of DMPHN 1-2-4 (Python slicing), to prove the batched one equal."""
    H, W = x.shape[-2:]
    e1, e2, e3 = net.encoder_lv1, net.encoder_lv2, net.encoder_lv3
    d1, d2, d3 = net.decoder_lv1, net.decoder_lv2, net.decoder_lv3
    l2_1, l2_2 = x[:, :, : H // 2], x[:, :, H // 2:]
    l3 = [l2_1[..., : W // 2], l2_1[..., W // 2:], l2_2[..., : W // 2], l2_2[..., W // 2:]]
    f3 = [e3(p) for p in l3]
    f3_top, f3_bot = torch.cat(f3[:2], 3), torch.cat(f3[2:], 3)
    f3_all = torch.cat((f3_top, f3_bot), 2)
    r3_top, r3_bot = d3(f3_top), d3(f3_bot)
    f2 = torch.cat((e2(l2_1 + r3_top), e2(l2_2 + r3_bot)), 2) + f3_all
    r2 = d2(f2)
    return d1(e1(x + r2) + f2)


def test_batched_patch_forward_equals_official_forward():
    torch.manual_seed(0)
    net = build_network("dmphn_1_2_4").eval()
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        assert torch.allclose(net(x), _official_style_dmphn_1_2_4(net, x), atol=1e-5)


@pytest.mark.parametrize("name", ["dmphn_1_2_4", "dmphn_1_2_4_8", "motion"])
@pytest.mark.parametrize("hw", [(37, 53), (16, 16), (64, 48)])
def test_any_size_in_same_size_out(name, hw):
    model = build_model(name).eval()
    with torch.no_grad():
        y = model(torch.rand(1, 3, *hw))
    assert y.shape[-2:] == hw


def test_discriminator_two_scales():
    d = build_model("discriminator")
    out = d(torch.rand(2, 3, 64, 64))
    assert len(out) == 2 and out[0].shape[-1] > out[1].shape[-1]


@pytest.mark.parametrize("bad, msg", [
    (torch.rand(1, 1, 32, 32), "colour channels"),
    (torch.rand(1, 4, 32, 32), "colour channels"),
    (torch.randint(0, 255, (1, 3, 32, 32), dtype=torch.uint8), "float"),
    (torch.rand(3, 32, 32), "batch"),
    (torch.full((1, 3, 32, 32), float("nan")), "NaN"),
    (torch.rand(1, 3, 8, 64), "smaller than"),
])
def test_bad_input_gets_a_clear_error(bad, msg):
    model = build_model("dmphn_1_2_4_8")
    with pytest.raises(InputError, match=msg):
        model(bad)


def test_macs_match_the_official_counts():
    # ANCHORS.md: DMPHN 1-2-4 687 GMAC at 720p, 172 at 360p; motion net 46 at 720p
    assert network_cost("dmphn_1_2_4", 720, 1280).gmacs == pytest.approx(687, rel=0.01)
    assert network_cost("dmphn_1_2_4", 360, 640).gmacs == pytest.approx(172, rel=0.01)
    assert network_cost("dmphn_1_2_4_8", 720, 1280).gmacs == pytest.approx(916, rel=0.01)
    assert network_cost("motion", 720, 1280).gmacs == pytest.approx(46, rel=0.02)
    assert network_cost("mprnet", 720, 1280).gmacs == pytest.approx(10_679, rel=0.01)
