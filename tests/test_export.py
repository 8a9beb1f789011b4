"""Export: ONNX (official DMPHN 1-2-4 weights, motion net), ORT INT8/FP16, TensorRT (GPU), Core ML spec."""
from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import pytest
import torch

from neurmap.core import build_model, load_weights
from neurmap.core.errors import NeurmapError

from conftest import shared_path

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def dmphn():
    p = shared_path("pretrained", "dmphn_1_2_4")
    return load_weights(p)


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def dyn_onnx(dmphn, onnx_dir):
    from neurmap.export.onnx_export import export_onnx

    model, _ = dmphn
    return export_onnx(model, onnx_dir / "dmphn_dyn.onnx", 64, 64, dynamic=True)


def _gopro_crops(n, size, seed=0, frame_range=(0, 60), holdout=0, tmp=None):
    from neurmap.calibration.frames import select_frames

    src = shared_path("gopro240", "GOPR0477_11_00")
    return select_frames([src], n, size, size, holdout=holdout, seed=seed, frame_range=frame_range,
                         synthesize=(7, 13), pool_factor=1, crops_per_frame=2, cache_dir=tmp)


def test_onnx_static_official_weights_match_pytorch(dmphn, onnx_dir):
    from neurmap.export.onnx_export import export_onnx, onnx_session, read_artifact_metadata

    model, meta = dmphn
    p = export_onnx(model, onnx_dir / "dmphn_64x96.onnx", 64, 96)
    m = onnx.load(str(p))
    onnx.checker.check_model(m)
    assert [i.name for i in m.graph.input] == ["blurry"] and [o.name for o in m.graph.output] == ["sharp"]
    assert m.opset_import[0].version == 17
    md = read_artifact_metadata(p)
    for k in ("architecture", "input_range", "pad_multiple", "weights_hash", "precision", "toolkit_version", "shape"):
        assert k in md, k
    assert md["architecture"] == "dmphn_1_2_4" and md["input_range"] == "0,1" and md["pad_multiple"] == "8"
    assert md["weights_hash"] == meta["weights_hash"] and md["precision"] == "fp32" and md["shape"] == "1,3,64,96"
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    y = onnx_session(p).run(None, {"blurry": x.numpy()})[0]
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(y - ref).max() < 1e-4


def test_onnx_dynamic_runs_at_two_sizes(dmphn, dyn_onnx):
    from neurmap.export.onnx_export import onnx_session, read_artifact_metadata

    model, _ = dmphn
    assert read_artifact_metadata(dyn_onnx)["shape"] == "N,3,H,W"
    s = onnx_session(dyn_onnx)
    for n, h, w in ((1, 32, 48), (2, 72, 40)):
        x = torch.rand(n, 3, h, w)
        y = s.run(None, {"blurry": x.numpy()})[0]
        with torch.no_grad():
            ref = model(x).numpy()
        assert y.shape == (n, 3, h, w) and np.abs(y - ref).max() < 1e-4


def test_motion_net_onnx(tmp_path):
    from neurmap.export.onnx_export import export_motion_onnx, onnx_session, read_artifact_metadata

    torch.manual_seed(0)
    mm = build_model("motion").eval()
    p = export_motion_onnx(mm, tmp_path / "motion.onnx", 32, 48, dynamic=True)
    g = onnx.load(str(p))
    assert [i.name for i in g.graph.input] == ["image"] and [o.name for o in g.graph.output] == ["motion"]
    assert read_artifact_metadata(p)["pad_multiple"] == "8"
    x = torch.rand(1, 3, 40, 56)
    y = onnx_session(p).run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        ref = mm(x).numpy()
    assert y.shape == (1, 2, 40, 56) and np.abs(y - ref).max() < 1e-4


def test_export_refuses_size_off_the_pad_multiple(dmphn, tmp_path):
    from neurmap.export.onnx_export import export_onnx

    with pytest.raises(NeurmapError, match="multiple of .* 8.*64x96"):
        export_onnx(dmphn[0], tmp_path / "x.onnx", 60, 90)
    assert not (tmp_path / "x.onnx").exists()


def test_fp16_onnx_keeps_float32_io(dyn_onnx, tmp_path):
    from neurmap.export.onnx_export import onnx_session, read_artifact_metadata
    from neurmap.export.ort_quant import convert_fp16
    from neurmap.calibration.parity import compare

    p = convert_fp16(dyn_onnx, tmp_path / "h.onnx")
    m = onnx.load(str(p))
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert m.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    conv_w = [t for t in m.graph.initializer if t.name.endswith("weight")]
    assert conv_w and all(t.data_type == onnx.TensorProto.FLOAT16 for t in conv_w)
    assert read_artifact_metadata(p)["precision"] == "fp16"
    x = np.random.default_rng(0).random((1, 3, 48, 64), dtype=np.float32)
    a = onnx_session(p).run(None, {"blurry": x})[0]
    b = onnx_session(dyn_onnx).run(None, {"blurry": x})[0]
    assert compare(a, b, with_ssim=False).psnr_vs_float >= 45.0


def test_ort_int8_official_weights(dyn_onnx, tmp_path):
    """Static QDQ INT8 on the real official weights, calibrated on GoPro-protocol crops, checked on disjoint frames.
    Measured here: ~37 dB vs float with plain MSE ranges, ~40 dB with 4 sensitive nodes in float (the
    full-size acceptance numbers are in bench/export_bench.py)."""
    from neurmap.calibration.parity import compare
    from neurmap.calibration.sensitivity import choose_exclusions, linear_sensitivity
    from neurmap.export.onnx_export import onnx_session, read_artifact_metadata
    from neurmap.export.ort_quant import (QuantConfig, collect_histograms, prepare, quantize_int8,
                                          ranges_from_histograms)

    cal, _ = _gopro_crops(4, 64, tmp=tmp_path)
    ev, _ = _gopro_crops(2, 64, seed=3, frame_range=(70, 120), tmp=tmp_path)
    pre = prepare(dyn_onnx, tmp_path / "pre.onnx")
    hists = collect_histograms(pre, cal.blurry)
    ranges = ranges_from_histograms(hists, "mse")
    q = quantize_int8(dyn_onnx, tmp_path / "q.onnx", cal.blurry, QuantConfig(method="mse"), ranges=ranges,
                      static_shape=(1, 64, 64))
    g = onnx.load(str(q.path))
    ops = {n.op_type for n in g.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    md = read_artifact_metadata(q.path)
    assert md["precision"] == "int8" and md["quant.method"] == "mse" and md["shape"] == "1,3,64,64"
    assert g.graph.input[0].type.tensor_type.shape.dim[2].dim_value == 64
    wq = [t for t in g.graph.initializer if t.name.endswith("weight_quantized")]
    assert wq and all(t.data_type == onnx.TensorProto.INT8 for t in wq)
    ref = onnx_session(dyn_onnx).run(None, {"blurry": ev.blurry})[0]
    out = np.concatenate([onnx_session(q.path).run(None, {"blurry": ev.blurry[i:i + 1]})[0] for i in range(len(ev))])
    p_plain = compare(out, ref, ev.sharp, ev.blurry, with_ssim=False)
    assert p_plain.psnr_vs_float >= 32.0, p_plain
    # keeping the most sensitive nodes in float must help
    sens = linear_sensitivity(q.path, pre, cal.blurry[:2, :, :48, :48], n_probe=2)
    assert sens.total_predicted > 0 and len(sens.points) > 50
    excl, share = choose_exclusions(sens, q.path, budget=4)
    assert excl and 0 < share <= 1
    q2 = quantize_int8(dyn_onnx, tmp_path / "q2.onnx", cal.blurry, QuantConfig(method="mse", exclude=excl), ranges=ranges)
    out2 = onnx_session(q2.path).run(None, {"blurry": ev.blurry})[0]
    p_ex = compare(out2, ref, with_ssim=False)
    assert p_ex.psnr_vs_float > p_plain.psnr_vs_float + 0.5, (p_plain, p_ex)


def test_tensorrt_without_gpu_says_so(tmp_path):
    from neurmap.export.trt import TRT_MISSING, gpu_info, import_tensorrt

    if gpu_info() is not None:
        pytest.skip("a GPU is present")
    with pytest.raises(NeurmapError) as e:
        import_tensorrt()
    assert str(e.value) == TRT_MISSING and "--target onnx" in str(e.value)


@pytest.mark.gpu
def test_tensorrt_build_refit_fp16(dyn_onnx, tmp_path):
    from neurmap.export import trt as T

    if T.gpu_info() is None:
        pytest.skip("needs an NVIDIA GPU")
    pytest.importorskip("tensorrt", reason="needs TensorRT")
    eng = T.build_engine(dyn_onnx, tmp_path / "m.engine", "fp16", T.ShapeProfile.from_sizes([(32, 32), (64, 96)]),
                         workspace_gb=1, timing_cache=tmp_path / "tc.cache")
    assert eng.exists() and (tmp_path / "m.engine.json").exists() and (tmp_path / "tc.cache").exists()
    side = T.check_engine_compat(eng)
    assert side["precision"] == "fp16" and side["refit"] == "true"
    kept = tmp_path / side["refit_onnx"]                     # the fp16-cast graph it was parsed from, beside it
    assert kept == T.refit_onnx_path(eng) and kept.is_file()
    assert {i.data_type for i in onnx.load(str(kept)).graph.initializer} & {1, 10} == {10}
    run = T.TRTRunner(eng)
    x = np.random.default_rng(0).random((1, 3, 64, 96), dtype=np.float32)
    from neurmap.export.onnx_export import onnx_session
    ref = onnx_session(dyn_onnx).run(None, {"blurry": x})[0]
    from neurmap.calibration.parity import compare
    assert compare(run(x), ref, with_ssim=False).psnr_vs_float > 40
    T.refit_engine(eng, dyn_onnx)                              # fp32 weights into the fp16 engine: cast, not refused
    assert compare(T.TRTRunner(eng)(x), ref, with_ssim=False).psnr_vs_float > 40


@pytest.fixture(scope="module")
def coreml_fp16(dmphn, tmp_path_factory):
    pytest.importorskip("coremltools")
    from neurmap.export.coreml import export_coreml

    path = tmp_path_factory.mktemp("coreml") / "dmphn.mlpackage"
    ml = export_coreml(dmphn[0], path, shapes=[(64, 96)], precision="fp16")
    return path, ml


def test_coreml_spec_dmphn_124(coreml_fp16):
    """ANCHORS: the official DMPHN forward broke coremltools (Python int(H/2) casts); ours cuts patches with
    torch.chunk (and slices for EnumeratedShapes), so every level converts."""
    from neurmap.export.coreml import spec_summary

    path, ml = coreml_fp16
    s = spec_summary(path)
    assert [i["name"] for i in s["inputs"]] == ["blurry"] and [o["name"] for o in s["outputs"]] == ["sharp"]
    assert s["inputs"][0]["type"] == "multiArrayType" and s["inputs"][0]["shape"] == [1, 3, 64, 96]
    assert s["outputs"][0]["shape"] == [1, 3, 64, 96]
    assert s["ops"]["conv"] == 84 and s["ops"]["conv_transpose"] == 6
    assert s["const_dtypes"].get("FLOAT16", 0) >= 180          # every conv weight and bias in fp16
    assert s["metadata"]["neurmap.pad_multiple"] == "8" and s["metadata"]["neurmap.precision"] == "fp16"
    assert (path.parent / "dmphn.mlpackage.json").exists()


def test_coreml_w8_weights_are_int8(coreml_fp16, tmp_path):
    from neurmap.export.coreml import quantize_weights_w8, spec_summary

    ml = quantize_weights_w8(coreml_fp16[1])
    s = spec_summary(ml)
    deq = s["ops"].get("constexpr_affine_dequantize", 0) + s["ops"].get("constexpr_blockwise_shift_scale", 0)
    assert deq == 90                                             # 84 conv + 6 transposed-conv weights
    assert s["const_dtypes"].get("INT8", 0) == 90 and s["const_dtypes"].get("FLOAT16", 0) < 100


@pytest.mark.slow
def test_coreml_enumerated_shapes_and_image_io(dmphn, tmp_path):
    pytest.importorskip("coremltools")
    from neurmap.export.coreml import export_coreml, spec_summary

    ml = export_coreml(dmphn[0], tmp_path / "e.mlpackage", shapes=[(64, 64), (96, 128)], image_io=True)
    s = spec_summary(ml)
    assert s["inputs"][0]["type"] == "imageType" and s["inputs"][0]["enumerated"] == [[64, 64], [96, 128]]
    assert s["outputs"][0]["type"] == "imageType"


@pytest.mark.macos
def test_coreml_predicts_on_macos(coreml_fp16):
    if platform.system() != "Darwin":
        pytest.skip("Core ML prediction needs macOS")
    from neurmap.export.runners import raw_runner  # pragma: no cover

    run = raw_runner(coreml_fp16[0])  # pragma: no cover
    y = run(np.random.default_rng(0).random((1, 3, 64, 96), dtype=np.float32))  # pragma: no cover
    assert y.shape == (1, 3, 64, 96)  # pragma: no cover


def test_int8_float_budget_defaults_per_network_and_an_explicit_one_wins():
    from neurmap.export.targets import ExportRequest

    def req(name, **kw):
        return ExportRequest(model=build_model(name), weights_meta={}, out=Path("x.onnx"), precision="int8",
                             shapes=[(64, 64)], **kw)

    assert req("dmphn_1_2_4").exclude_budget == 12        # measured on DMPHN: 12 of 90 convs, 0.09 dB
    assert req("compact").exclude_budget == 0             # measured on the compact net: 0, 0.01-0.03 dB
    assert req("compact", exclude_budget=3).exclude_budget == 3
