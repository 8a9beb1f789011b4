"""`neurmap demo`: a tiny synthetic clip end to end (files, summary, backend choice), the CLI, --input."""
from __future__ import annotations

import json

import pytest
import torch

from neurmap.demo import prepare_runner, run_demo, synthetic_clip


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURMAP_CACHE", str(tmp_path / "cache"))


def test_synthetic_clip_has_known_truth():
    blurry, sharp = synthetic_clip(frames=3, size=(48, 64))
    assert blurry.shape == sharp.shape == (3, 3, 48, 64)
    assert not torch.equal(blurry, sharp)


def test_demo_tiny_end_to_end(tmp_path):
    out = tmp_path / "demo"
    s = run_demo(out_dir=out, frames=3, size=(64, 96), progress=False)
    for name in ("summary.json", "comparison.png"):
        assert (out / name).stat().st_size > 0
    assert (out / s["files"]["video"]).stat().st_size > 0
    saved = json.loads((out / "summary.json").read_text())
    assert saved["backend"] in ("onnxruntime-int8", "onnxruntime-fp32", "pytorch")
    assert saved["frames"] == 3 and saved["size"] == [64, 96]
    assert saved["fps"] > 0
    assert {"psnr_blurry_db", "psnr_deblurred_db"} <= set(saved)
    assert saved["model"]["architecture"] == "compact"


def test_demo_backends_agree(tmp_path):
    from neurmap.core import load_weights

    model, meta = load_weights("default")
    x = synthetic_clip(frames=1, size=(48, 64))[0].numpy()
    torch_out = prepare_runner(model, meta, 48, 64, x, backend="torch").infer(x)
    ort_out = prepare_runner(model, meta, 48, 64, x, backend="ort-fp32", cache=tmp_path).infer(x)
    assert abs(torch_out - ort_out).max() < 1e-3


def test_demo_int8_uses_the_shipped_recipe_and_keys_the_cache_on_calibration_frames(tmp_path):
    """The demo's INT8 is `neurmap export`'s default for the net (percentile ranges; for the compact default no conv
    in float: bench/results/int8_budget.json), and a clip with other frames never reuses ranges calibrated on
    different ones (issue 14 item 4)."""
    import json as _json

    import onnx

    from neurmap.core import load_weights
    from neurmap.export.ort_quant import quantizable_nodes

    model, meta = load_weights("default")
    a = synthetic_clip(frames=2, size=(48, 64), seed=0)[0].numpy()
    b = synthetic_clip(frames=2, size=(48, 64), seed=1)[0].numpy()
    r = prepare_runner(model, meta, 48, 64, a, backend="ort-int8", cache=tmp_path)
    int8 = sorted(tmp_path.glob("*_int8_*.onnx"))
    assert r.name == "onnxruntime-int8" and len(int8) == 1
    md = {p.key: p.value for p in onnx.load(str(int8[0]), load_external_data=False).metadata_props}
    assert md["neurmap.quant.method"] == "percentile"
    convs = set(quantizable_nodes(next(tmp_path.glob("*_fp32.onnx"))))
    kept = [n for n in _json.loads(md["neurmap.quant.excluded"]) if n in convs]
    assert len(convs) > 12 and kept == []                 # the compact nets' measured budget: 0 convs in float
    assert any("recipe" in n for n in r.notes)
    stamp = int8[0].stat().st_mtime_ns
    prepare_runner(model, meta, 48, 64, a.copy(), backend="ort-int8", cache=tmp_path)     # same frames: cached
    assert sorted(tmp_path.glob("*_int8_*.onnx")) == int8 and int8[0].stat().st_mtime_ns == stamp
    prepare_runner(model, meta, 48, 64, b, backend="ort-int8", cache=tmp_path)            # other frames: new key
    assert len(list(tmp_path.glob("*_int8_*.onnx"))) == 2


def test_demo_on_user_frames_and_cli(tmp_path):
    from typer.testing import CliRunner

    from neurmap.cli import app
    from neurmap.core.data import write_image

    blurry, _ = synthetic_clip(frames=2, size=(40, 56))
    frames = tmp_path / "frames"
    for i, f in enumerate(blurry):
        write_image(frames / f"{i:03d}.png", f)
    out = tmp_path / "cli"
    res = CliRunner().invoke(app, ["demo", "--input", str(frames), "--out", str(out), "--backend", "torch",
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    saved = json.loads((out / "summary.json").read_text())
    assert saved["backend"] == "pytorch" and saved["frames"] == 2
    assert "psnr_blurry_db" not in saved
