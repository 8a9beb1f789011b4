"""`neurmap export / check / bench`: per-target validation, aliases, suggestions, one-line results."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from neurmap.cli import app
from neurmap.core.errors import NeurmapError

from conftest import shared_path

runner = CliRunner()


def _err(args) -> str:
    r = runner.invoke(app, args)
    assert r.exit_code != 0
    if isinstance(r.exception, NeurmapError):
        return str(r.exception)
    return r.output


@pytest.fixture(scope="module")
def weights():
    return str(shared_path("pretrained", "dmphn_1_2_4"))


def test_target_aliases_and_suggestions():
    from neurmap.export.targets import resolve_target

    assert resolve_target("tensorrt").name == resolve_target("engine").name == "trt"
    assert resolve_target("ios").name == resolve_target("mlpackage").name == "coreml"
    assert resolve_target("onnxruntime").name == "ort"
    with pytest.raises(NeurmapError, match="did you mean 'coreml'"):
        resolve_target("corml")


def test_unknown_target_suggests_via_cli():
    assert "did you mean 'tensorrt'" in _err(["export", "--target", "tensorrtt", "--weights", "x"])


def test_option_a_target_does_not_take(weights):
    msg = _err(["export", "-t", "coreml", "-w", weights, "--dynamic", "--workspace", "2"])
    assert "--target coreml does not take --dynamic (only for onnx, ort, trt), --workspace (only for trt)" in msg
    assert "--image-io" in _err(["export", "-t", "onnx", "-w", weights, "--image-io"])


def test_precision_and_calibration_rules(weights):
    assert "does not do --precision int8" in _err(["export", "-t", "onnx", "-w", weights, "-p", "int8"])
    assert "needs --calib" in _err(["export", "-t", "ort", "-w", weights, "-p", "int8"])
    assert "--calib is only used for int8" in _err(["export", "-t", "ort", "-w", weights, "-p", "fp32", "--calib", "."])
    assert "not both" in _err(["export", "-t", "coreml", "-w", weights, "--shape", "64x64", "--shapes", "64x64,96x96"])
    assert "is not one of" in _err(["export", "-t", "ort", "-w", weights, "--method", "kl", "--calib", "."])


def test_shape_must_fit_pad_multiple(weights):
    msg = _err(["export", "-t", "onnx", "-w", weights, "--shape", "60x90", "--no-parity"])
    assert "pad multiple 8" in msg and "64x96" in msg
    assert "HxW" in _err(["export", "-t", "onnx", "-w", weights, "--shape", "big"])


def test_trt_without_gpu_is_one_line(weights):
    from neurmap.export.trt import gpu_info

    if gpu_info() is not None:
        pytest.skip("a GPU is present")
    msg = _err(["export", "-t", "engine", "-w", weights, "--shape", "64x64"])
    assert msg.startswith("TensorRT needs an NVIDIA GPU") and "--target onnx" in msg


def test_export_onnx_then_check(weights, tmp_path):
    out = tmp_path / "m.onnx"
    r = runner.invoke(app, ["export", "-t", "onnx", "-w", weights, "--shape", "64x96", "-o", str(out),
                            "--parity-frames", "1"])
    assert r.exit_code == 0, r.output
    assert str(out) in r.output and "onnx fp32" in r.output and "dB vs float" in r.output
    data = str(shared_path("gopro240", "GOPR0477_11_00"))
    r = runner.invoke(app, ["check", str(out), "--data", data, "--frames", "1", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["ok"] and res["psnr_vs_float"] > 50 and res["psnr_gt"] is not None and res["size"] == "64x96"
    # an impossible threshold fails with exit code 1
    r = runner.invoke(app, ["check", str(out), "--data", data, "--frames", "1", "--min-psnr", "200"])
    assert r.exit_code == 1 and "FAIL" in r.output


def test_bench_rows(weights, tmp_path):
    js = tmp_path / "b.json"
    r = runner.invoke(app, ["bench", "-w", weights, "--size", "32x48", "--runs", "1", "--json", str(js)])
    assert r.exit_code == 0, r.output
    rows = json.loads(js.read_text())["rows"]
    names = [x["name"] for x in rows]
    assert names[0] == "pytorch eager" and "onnx fp32" in names
    assert all("status" in x for x in rows)
    assert next(x for x in rows if x["name"] == "onnx fp32")["p50_ms"] > 0


def test_export_says_when_its_int8_artifact_fails_the_parity_gate(tmp_path):
    """Two calibration frames give an INT8 net below check's 35 dB vs float: export writes it, but never silently."""
    import torch.nn.functional as F

    from neurmap.core.data import gopro_pairs_from_folder, write_image

    gopro = shared_path("gopro240", "GOPR0477_11_00")
    pairs = gopro_pairs_from_folder(gopro, n_frames=7, stride=30, frame_range=(80, 120), seed=0)
    for i in range(2):
        for side, t in zip(("blur", "sharp"), pairs[i]):
            write_image(tmp_path / "few" / side / f"{i:03d}.png", F.interpolate(t[None], size=(256, 448), mode="area")[0])
    args = ["export", "-t", "ort", "-w", "default", "-p", "int8", "--shape", "256x448", "--json"]
    few = runner.invoke(app, [*args, "--calib", str(tmp_path / "few"), "-o", str(tmp_path / "few.onnx")])
    assert few.exit_code == 0 and (tmp_path / "few.onnx").exists()
    out = json.loads(few.stdout[few.stdout.index("{"):])
    assert out["parity"]["psnr_vs_float"] < 35.0 and out["gate_failures"]
    assert "fails the parity gate" in few.output and "got 2 of the 32 asked" in few.output
    good = runner.invoke(app, [*args, "--calib", str(gopro), "-o", str(tmp_path / "good.onnx")])
    res = json.loads(good.stdout[good.stdout.index("{"):])
    assert good.exit_code == 0 and res["parity"]["psnr_vs_float"] >= 35.0 and "gate_failures" not in res
