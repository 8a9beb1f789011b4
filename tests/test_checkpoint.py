"""Weight import/export: official DMPHN folders, our safetensors checkpoints, and refusing unsafe files."""
from __future__ import annotations

import os
import pickle

import pytest
import torch

from neurmap.core import CheckpointError, build_model, load_motion, load_weights, save_weights
from neurmap.core.checkpoint import read_metadata
from neurmap.core.data.synthesis import gopro_pairs_from_folder
from neurmap.core.metrics.psnr import psnr

from conftest import shared_path


@pytest.mark.parametrize("folder, arch, params", [("dmphn_1_2_4", "dmphn_1_2_4", 5_424_393),
                                                  ("dmphn_1_2_4_8", "dmphn_1_2_4_8", 7_232_524)])
def test_official_dmphn_folder_loads_strict_and_detects_architecture(folder, arch, params):
    model, meta = load_weights(shared_path("pretrained", folder))
    assert meta["architecture"] == arch and meta["input_range"] == "-0.5,0.5"
    assert sum(p.numel() for p in model.parameters()) == params


@pytest.mark.parametrize("folder", ["dmphn_1_2_4", "dmphn_1_2_4_8"])
def test_official_weights_deblur_real_gopro_pairs(folder):
    """A real trained model: PSNR rises on GoPro-protocol pairs (mean of 7-13 frames vs the middle one)."""
    torch.manual_seed(0)
    model, _ = load_weights(shared_path("pretrained", folder))
    pairs = gopro_pairs_from_folder(shared_path("gopro240", "GOPR0477_11_00"), n_frames=(7, 13), count=3,
                                    start=20, seed=1, crop=(200, 400, 192, 256))
    before, after = [], []
    with torch.inference_mode():
        for blurry, sharp in pairs:
            out = model(blurry[None]).clamp(0, 1)
            before.append(psnr(blurry[None], sharp[None]))
            after.append(psnr(out, sharp[None]))
    gain = float(sum(after) / len(after) - sum(before) / len(before))
    assert gain > 0.5, f"official {folder} weights gained only {gain:.2f} dB"


def test_range_belongs_to_the_checkpoint(tmp_path):
    """The same official weights fed [0,1] without the recorded -0.5 offset do clearly worse."""
    model, _ = load_weights(shared_path("pretrained", "dmphn_1_2_4"))
    pairs = gopro_pairs_from_folder(shared_path("gopro240", "GOPR0477_11_00"), n_frames=9, count=1, start=40,
                                    crop=(300, 500, 128, 128))
    blurry, sharp = pairs[0]
    with torch.inference_mode():
        right = psnr(model(blurry[None]).clamp(0, 1), sharp[None])
        wrong = psnr(model.net(blurry[None]).clamp(0, 1), sharp[None])
    assert right > wrong + 1.0


def test_safetensors_roundtrip_with_motion_and_metadata(tmp_path):
    torch.manual_seed(0)
    g, m = build_model("dmphn_1_2_4"), build_model("motion")
    path = save_weights(tmp_path / "ck.safetensors", g, m, provenance={"run": "test"})
    meta = read_metadata(path)
    assert meta["architecture"] == "dmphn_1_2_4" and meta["input_range"] == "0,1" and meta["pad_multiple"] == 8
    assert meta["provenance"]["run"] == "test" and len(meta["weights_hash"]) == 16
    g2, meta2 = load_weights(path)
    m2 = load_motion(path)
    x = torch.rand(1, 3, 40, 40)
    assert all(torch.equal(a, b) for a, b in zip(g.state_dict().values(), g2.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))
    with torch.no_grad():  # loaded models run channels-last: same weights, kernel rounding only
        assert torch.allclose(g(x), g2(x), atol=1e-4, rtol=1e-4) and torch.allclose(m(x), m2(x), atol=1e-4, rtol=1e-4)
    assert not list(tmp_path.glob("*.tmp")), "atomic write left a temp file"


def test_wrong_architecture_names_expected_and_found_keys(tmp_path):
    sd = build_model("motion").net.state_dict()
    torch.save(sd, tmp_path / "motion.pth")
    with pytest.raises(CheckpointError, match="expected keys missing.*unexpected keys found"):
        load_weights(tmp_path / "motion.pth", arch="dmphn_1_2_4")
    # and without an explicit architecture the keys match no deblur net
    g = build_model("dmphn_1_2_4").net.state_dict()
    g.pop("encoder_lv1.layer1.weight")
    torch.save(g, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="match no known deblur net"):
        load_weights(tmp_path / "partial.pth")


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {_Payload.marker}",))


def test_pickle_with_code_is_refused_never_executed(tmp_path):
    _Payload.marker = str(tmp_path / "pwned")
    bad = tmp_path / "evil.pth"
    with open(bad, "wb") as f:
        pickle.dump({"encoder_lv1.layer1.weight": _Payload()}, f)
    with pytest.raises(CheckpointError, match="refused"):
        load_weights(bad)
    assert not (tmp_path / "pwned").exists()


def test_corrupt_and_missing_files_are_reported(tmp_path):
    g = build_model("dmphn_1_2_4")
    path = save_weights(tmp_path / "ck.safetensors", g)
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt|truncated|readable"):
        load_weights(tmp_path / "cut.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        load_weights(tmp_path / "nope.safetensors")
    (tmp_path / "junk.pth").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError):
        load_weights(tmp_path / "junk.pth")
