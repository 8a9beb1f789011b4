"""Weight swaps beside each backend: the TensorRT refit (what is kept beside the engine, its dtypes, a failed
refit that keeps serving), the ONNX Runtime TensorRT-EP cache key, Core ML re-export like the served package
and EnumeratedShapes. The GPU and macOS tests run the product's own artifacts (`neurmap export`)."""
from __future__ import annotations

import json
import platform
import tempfile
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from neurmap.core import build_model, save_weights
from neurmap.core.errors import NeurmapError
from neurmap.edge_runtime.backends.base import InputSpec

from conftest import shared_path

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    G = build_model("compact")
    with torch.no_grad():   # non-zero biases, as trained (no exporter de-duplication of zero tensors)
        for n, p in G.net.named_parameters():
            if n.endswith(".bias"):
                p.normal_(0, 0.01)
    return G.eval()


def perturbed(G, seed=3):
    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.02 * torch.randn(v.shape, generator=g) if k.endswith("weight") else v.clone()
            for k, v in G.net.state_dict().items()}


def torch_out(G, state, x):
    import copy
    m = copy.deepcopy(G)
    m.net.load_state_dict(state)
    with torch.no_grad():
        return m(torch.from_numpy(x)).numpy()


def streaming(backend, x):
    """Frames through ``backend.infer`` in a thread until ``stop`` is set: (outputs, stop, thread)."""
    outs, stop = [], threading.Event()

    def stream():
        while not stop.is_set():
            outs.append(backend.infer(x))
    t = threading.Thread(target=stream)
    t.start()
    while not outs:
        pass
    return outs, stop, t


@pytest.fixture(scope="module")
def onnx_file(net, tmp_path_factory):
    from neurmap.export.onnx_export import export_onnx
    return export_onnx(net, tmp_path_factory.mktemp("swap") / "g.onnx", 32, 32, dynamic=True)


def fake_engine_dir(tmp_path, onnx_file, precision="fp16", refit="true", keep=True):
    """An engine folder as `neurmap export --target trt` leaves it (the plan's bytes do not matter here)."""
    from neurmap.export.ort_quant import convert_fp16
    from neurmap.export.trt import ShapeProfile, engine_sidecar, refit_onnx_path

    eng = tmp_path / "m.engine"
    eng.write_bytes(b"plan")
    if keep:
        src = convert_fp16(onnx_file, tmp_path / "cast.onnx") if precision == "fp16" else onnx_file
        refit_onnx_path(eng).write_bytes(Path(src).read_bytes())
    side = engine_sidecar({"architecture": "compact"}, precision, "10.9", {"name": "Orin", "compute_capability": "8.7"},
                          refit == "true", "model.onnx", refit_onnx_path(eng).name if keep else None,
                          ShapeProfile.static(1, 32, 32))
    (tmp_path / "m.engine.json").write_text(json.dumps(side))
    return eng


def float_types(proto):
    return {i.data_type for i in proto.graph.initializer if i.data_type in (1, 10)}   # FLOAT, FLOAT16


# ---- TensorRT: what a refit needs, beside the engine ------------------------------------------------------
def test_engine_sidecar_names_files_beside_the_engine_not_a_temp_folder(tmp_path):
    from neurmap.export.trt import ShapeProfile, engine_sidecar, refit_onnx_path

    with tempfile.TemporaryDirectory() as d:     # build_trt exports the ONNX into a folder deleted after the build
        src = Path(d) / "model.onnx"
        side = engine_sidecar({"architecture": "compact"}, "fp16", "10.9", {}, True, src.name,
                              refit_onnx_path(tmp_path / "m.engine").name, ShapeProfile.static(1, 32, 32))
    assert not any(tempfile.gettempdir() in str(v) for v in side.values()), side
    assert side["refit_onnx"] == "m.engine.refit.onnx" and side["source_onnx_name"] == "model.onnx"
    assert refit_onnx_path(tmp_path / "m.engine") == tmp_path / "m.engine.refit.onnx"
    assert "refit_onnx" not in engine_sidecar({}, "int8", "10.9", {}, True, "m.onnx", None, None)


def test_refit_source_is_the_kept_graph_in_the_engine_dtypes(tmp_path, onnx_file):
    from neurmap.export.trt import refit_source

    eng = fake_engine_dir(tmp_path, onnx_file, "fp16")
    assert float_types(refit_source(eng)) == {10}                 # the fp16-cast graph the engine was parsed from
    assert float_types(refit_source(eng, onnx_file)) == {10}      # a given fp32 ONNX is cast like the build did
    (tmp_path / "m.engine.refit.onnx").unlink()
    (tmp_path / "m.onnx").write_bytes(onnx_file.read_bytes())     # a same-stem fp32 ONNX is never guessed
    with pytest.raises(NeurmapError, match=r"m\.engine\.refit\.onnx.*--adapt-opts onnx=PATH"):
        refit_source(eng)
    (tmp_path / "a").mkdir()
    fp32 = fake_engine_dir(tmp_path / "a", onnx_file, "fp32")
    assert float_types(refit_source(fp32)) == {1}
    for prec, refit, match in (("int8", "true", "re-quantization"), ("fp16", "false", "without REFIT")):
        d = tmp_path / f"{prec}{refit}"
        d.mkdir()
        with pytest.raises(NeurmapError, match=match):
            refit_source(fake_engine_dir(d, onnx_file, prec, refit))
    (tmp_path / "m.engine.json").unlink()
    with pytest.raises(NeurmapError, match="m.engine.json"):
        refit_source(eng)


class _FakeTRT:
    """TensorRT's refit surface (Refitter, OnnxParserRefitter) for the pure logic around it: what the engine holds
    after a commit, and after a commit that fails. Only this library boundary is faked (no GPU here)."""

    class Engine:
        def __init__(self, weights):
            self.weights, self.fail = weights, 0

    class Refitter:
        def __init__(self, engine, logger):
            self.engine, self.staged = engine, None

        def get_missing_weights(self):
            return []

        def refit_cuda_engine(self):
            if self.engine.fail:
                self.engine.fail -= 1
                self.engine.weights = b"half-written"
                return False
            self.engine.weights = self.staged
            return True

    class OnnxParserRefitter:
        num_errors = 0

        def __init__(self, refitter, logger):
            self.refitter = refitter

        def refit_from_bytes(self, data):
            onnx.load_from_string(data)            # parses, as the real one does
            self.refitter.staged = data
            return True


def test_engine_refit_casts_to_the_engine_dtype_and_restores_after_a_failed_commit(tmp_path, onnx_file, net):
    from onnx import numpy_helper

    from neurmap.export.trt import EngineRefit, refit_source

    proto = refit_source(fake_engine_dir(tmp_path, onnx_file, "fp16"))
    engine = _FakeTRT.Engine(proto.SerializeToString())
    refit = EngineRefit(engine, _FakeTRT, None, proto, reference=net.net.state_dict())
    new = perturbed(net)
    data = refit.prepare(new)
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load_from_string(data).graph.initializer}
    w = next(k for k in new if k.endswith("weight"))
    assert inits["net." + w].dtype == np.float16
    np.testing.assert_array_equal(inits["net." + w], new[w].numpy().astype(np.float16))
    refit.commit(refit.stage(data))
    assert engine.weights == data
    engine.fail = 1                                          # the GPU update fails once: the old weights go back
    with pytest.raises(NeurmapError, match="keeps its previous weights"):
        refit.commit(refit.stage(refit.prepare(perturbed(net, seed=4))))
    assert engine.weights == data
    with pytest.raises(NeurmapError, match="exact graph"):   # a changed tensor the graph does not hold
        refit.prepare({**new, "extra.weight": torch.ones(2)})


# ---- a failed swap never ends the stream (the ONNX Runtime CPU backend, real) ------------------------------
def test_failed_swap_keeps_serving_the_old_weights_and_reports(net, onnx_file):
    from neurmap.edge_runtime.backends import load_backend

    backend = load_backend(onnx_file)
    swap = backend.swapper(onnx_file)                 # no PyTorch model: no re-export fallback
    events = []
    swap.on_event = events.append
    x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    y_old = backend.infer(x)
    outs, stop, t = streaming(backend, x)
    bad = {**perturbed(net), "no.such.weight": torch.ones(3)}
    assert swap.submit(bad) is False                  # reported, not raised
    good = perturbed(net, seed=5)
    assert swap.submit(good) is True
    while swap.swaps == 0 or len(outs) < 3:
        pass
    stop.set()
    t.join()
    assert swap.failures == 1 and "serving the previous weights" in events[0] and swap.stats()["last_error"]
    ref = torch_out(net, good, x)
    scale = float(np.abs(ref).max())
    kinds = ["old" if np.array_equal(o, y_old) else "new" if np.abs(o - ref).max() <= 1e-4 * scale else "mixed"
             for o in outs]
    assert "mixed" not in kinds and kinds[-1] == "new", kinds
    swap.detach()


# ---- ONNX Runtime with the TensorRT EP: the engine cache follows the weights ------------------------------
def test_ort_trt_engine_cache_path_changes_with_the_weights(net, onnx_file, tmp_path):
    from neurmap.edge_runtime.backends.onnxruntime import provider_args, weights_key
    from neurmap.export.onnx_weights import patch_onnx_initializers

    proto = onnx.load(str(onnx_file))
    old_key = weights_key(onnx_file.read_bytes())
    new_bytes = patch_onnx_initializers(proto, perturbed(net), net.net.state_dict()).SerializeToString()
    same = patch_onnx_initializers(proto, perturbed(net), net.net.state_dict()).SerializeToString()
    assert weights_key(new_bytes) != old_key and weights_key(same) == weights_key(new_bytes)
    art = tmp_path / "g.onnx"
    provs = ["TensorrtExecutionProvider", "CPUExecutionProvider"]
    opts = {"TensorrtExecutionProvider": {"trt_fp16_enable": "1", "trt_engine_cache_path": str(tmp_path / "old")}}
    a = provider_args(provs, opts, art, old_key)
    b = provider_args(provs, opts, art, weights_key(new_bytes))
    pa, pb = a[0][1]["trt_engine_cache_path"], b[0][1]["trt_engine_cache_path"]
    assert pa != pb and Path(pa) == tmp_path / "g.trtcache" / old_key and Path(pb).is_dir()
    assert a[0][1]["trt_fp16_enable"] == "1" and a[0][1]["trt_engine_cache_enable"] is True
    assert a[1] == "CPUExecutionProvider"


# ---- Core ML: enumerated shapes, re-export like the served package ----------------------------------------
def test_input_spec_picks_the_smallest_enumerated_shape_that_holds_the_frame():
    from neurmap.edge_runtime.pipeline import plan_shape

    spec = InputSpec(fixed_hw=(32, 32), shapes=((32, 32), (64, 96), (128, 128)))
    assert spec.fit(40, 50) == (64, 96) and spec.fit(20, 20) == (32, 32) and spec.fit(100, 100) == (128, 128)
    assert spec.fit(200, 100) == (32, 32)                       # none holds it: the default, tiled
    assert plan_shape(40, 50, spec) == ((64, 96), None)          # padded into 64x96, not tiled to 32x32
    assert plan_shape(200, 100, spec) == ((200, 100), (32, 32))
    assert InputSpec(fixed_hw=(32, 32)).fit(40, 50) == (32, 32)


def test_coreml_target_missing_from_an_older_coremltools_is_one_line():
    from neurmap.export.coreml import deployment_target

    ct8 = SimpleNamespace(__version__="8.3.0", target=SimpleNamespace(iOS15=15, iOS16=16, iOS17=17, iOS18=18))
    assert deployment_target(ct8, "macOS14") == 17
    with pytest.raises(NeurmapError, match=r"iOS26 needs a newer coremltools than 8\.3\.0.*iOS18"):
        deployment_target(ct8, "iOS26")


def test_enumerated_shape_tracing_touches_no_global():
    from neurmap.core.models import dmphn
    from neurmap.export.coreml import _slicing_patches

    torch.manual_seed(0)
    G = build_model("dmphn_1_2_4").eval()
    saved = (dmphn.to_patches, dmphn.from_patches)
    copy = _slicing_patches(G)
    assert (dmphn.to_patches, dmphn.from_patches) == saved and "forward" not in G.net.__dict__
    assert "forward" in copy.net.__dict__
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(copy(x), G(x))


@pytest.fixture(scope="module")
def enumerated_package(net, tmp_path_factory):
    pytest.importorskip("coremltools")
    from neurmap.cli import app

    d = tmp_path_factory.mktemp("coreml")
    w = save_weights(d / "g.safetensors", net)
    out = d / "g.mlpackage"
    r = CliRunner().invoke(app, ["export", "--target", "coreml", "--weights", str(w), "--shapes", "32x32,32x64",
                                 "--image-io", "--out", str(out), "--no-parity"])
    assert r.exit_code == 0, r.output
    return out


def test_coreml_predictor_reads_enumerated_shapes(enumerated_package):
    import coremltools as ct

    from neurmap.export.coreml import CoreMLPredictor

    p = CoreMLPredictor(enumerated_package, model=ct.models.MLModel(str(enumerated_package), skip_model_load=True))
    assert p.image_input and p.fixed_hw == (32, 32) and p.shapes == ((32, 32), (32, 64))
    assert p.metadata["pad_multiple"] == "8"


def test_coreml_swap_re_exports_at_the_served_shapes_and_io(enumerated_package, net):
    from neurmap.core.checkpoint import weights_hash
    from neurmap.edge_runtime.backends.coreml import CoreMLBackend, CoreMLSwap
    from neurmap.export.coreml import reexport_options, spec_summary

    meta = {k.removeprefix("neurmap."): v for k, v in spec_summary(enumerated_package)["metadata"].items()}
    assert reexport_options(meta) == {"shapes": [(32, 32), (32, 64)], "precision": "fp16", "image_io": True,
                                      "minimum_target": "iOS17"}
    backend = CoreMLBackend()                  # described, not loaded: loading predicts, and that needs macOS
    backend.spec = InputSpec(fixed_hw=(32, 32), metadata=meta, shapes=((32, 32), (32, 64)))
    new = perturbed(net)
    s = spec_summary(CoreMLSwap(backend, net).convert(new))
    assert s["inputs"][0]["type"] == "imageType" and s["inputs"][0]["enumerated"] == [[32, 32], [32, 64]]
    assert s["outputs"][0]["type"] == "imageType"
    assert s["metadata"]["neurmap.weights_hash"] == weights_hash(new) != meta["weights_hash"]
    with pytest.raises(NeurmapError, match="calibration frames"):
        CoreMLSwap(InputSpecBackend({**meta, "precision": "w8a8"}), net)


class InputSpecBackend:
    """A backend described by its metadata only (the swap refuses at setup, before anything runs)."""

    def __init__(self, meta):
        self.spec = InputSpec(metadata=meta)

    def infer(self, batch):
        return batch


# ---- on the hardware: the product's own artifacts ----------------------------------------------------------
def _export(args, tmp):
    from neurmap.cli import app

    r = CliRunner().invoke(app, ["export", *args, "--no-parity"])
    assert r.exit_code == 0, r.output
    return r


@pytest.mark.gpu
def test_trt_engine_from_export_runs_and_refits_between_frames(net, tmp_path):
    from neurmap.export.trt import gpu_info
    if gpu_info() is None:
        pytest.skip("needs an NVIDIA GPU")
    pytest.importorskip("tensorrt")
    from neurmap.edge_runtime.backends import load_backend
    from neurmap.edge_runtime.pipeline import Pipeline

    w = save_weights(tmp_path / "g.safetensors", net)
    eng = tmp_path / "g.engine"
    _export(["--target", "trt", "--weights", str(w), "--shapes", "32x32,64x64", "--out", str(eng)], tmp_path)
    side = json.loads((tmp_path / "g.engine.json").read_text())
    assert side["refit_onnx"] == "g.engine.refit.onnx" and (tmp_path / side["refit_onnx"]).is_file()
    backend = load_backend(eng)
    assert backend.name == "tensorrt" and backend.spec.max_hw == (64, 64)
    x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    y_old = backend.infer(x)
    ref_old = torch_out(net, net.net.state_dict(), x)
    assert np.abs(y_old - ref_old).max() <= 2e-2 * max(1.0, float(np.abs(ref_old).max()))   # fp16 engine
    swap = backend.swapper(eng, model=net)
    outs, stop, t = streaming(backend, x)
    new = perturbed(net)
    assert swap.submit(new) is True                       # refit in this thread while frames flow
    assert swap.submit({**new, "no.such.weight": torch.ones(2)}) is False   # a failed refit: reported
    n = len(outs)
    while len(outs) < n + 3:
        pass
    stop.set()
    t.join()
    ref = torch_out(net, new, x)
    assert np.abs(outs[-1] - ref).max() <= 2e-2 * max(1.0, float(np.abs(ref).max()))
    assert np.abs(outs[-1] - y_old).max() > 1e-3 and swap.failures == 1 and swap.swaps == 1
    swap.detach()
    from test_runtime import ListSink, ListSource, frame
    sink = ListSink()   # 100x150 exceeds the profile (64x64 at most): tiled at the profile's max
    Pipeline(ListSource([frame(1, 150, 100)]), backend, sink).run()
    assert sink.out[0].shape == (100, 150, 3)


@pytest.mark.gpu
def test_ort_trt_ep_swap_serves_the_new_weights(net, onnx_file, tmp_path):
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs onnxruntime-gpu with the TensorRT execution provider")
    from neurmap.edge_runtime.backends import load_backend

    art = tmp_path / "g.onnx"
    art.write_bytes(onnx_file.read_bytes())
    backend = load_backend(art, providers=["TensorrtExecutionProvider", "CPUExecutionProvider"])
    x = np.random.default_rng(1).random((1, 3, 32, 32), dtype=np.float32)
    y_old = backend.infer(x)
    swap = backend.swapper(art, model=net)
    new = perturbed(net)
    assert swap.submit(new)
    y_new = backend.infer(x)
    ref = torch_out(net, new, x)
    assert np.abs(y_new - ref).max() <= 1e-2 * max(1.0, float(np.abs(ref).max())) and np.abs(y_new - y_old).max() > 1e-3
    assert len([p for p in (tmp_path / "g.trtcache").iterdir() if p.is_dir()]) == 2


COREML_VARIANTS = {
    "tensor": ["--shape", "32x32"],
    "image_io": ["--shape", "32x32", "--image-io"],
    "enumerated": ["--shapes", "32x32,32x64"],
    "w8": ["--shape", "32x32", "--precision", "w8"],
    "w8a8": ["--shape", "32x32", "--precision", "w8a8"],
}


@pytest.mark.macos
@pytest.mark.parametrize("variant", sorted(COREML_VARIANTS))
def test_coreml_package_from_export_predicts(variant, net, tmp_path):
    if platform.system() != "Darwin":
        pytest.skip("Core ML prediction needs macOS")
    pytest.importorskip("coremltools")
    from neurmap.edge_runtime.backends import load_backend

    w = save_weights(tmp_path / "g.safetensors", net)
    out = tmp_path / "g.mlpackage"
    args = ["--target", "coreml", "--weights", str(w), "--out", str(out), *COREML_VARIANTS[variant]]
    if variant == "w8a8":
        args += ["--calib", str(shared_path("gopro240", "GOPR0477_11_00")), "--calib-frames", "4"]
    _export(args, tmp_path)
    backend = load_backend(out)
    sizes = [(32, 64), (32, 32)] if variant == "enumerated" else [(32, 32)]
    if variant == "enumerated":                    # offered as they are, not tiled to the default
        assert backend.spec.shapes == ((32, 32), (32, 64)) and backend.spec.fit(30, 60) == (32, 64)
    else:
        assert backend.spec.fixed_hw == (32, 32) and len(backend.spec.shapes) <= 1
    served = (backend.spec.fixed_hw, backend.spec.shapes, backend.image_input)
    tol = {"w8": 0.1, "w8a8": 0.2, "image_io": 2 / 255 + 0.02}.get(variant, 0.03)
    for h, wd in sizes:
        x = np.random.default_rng(0).random((1, 3, h, wd), dtype=np.float32)
        ref = np.clip(torch_out(net, net.net.state_dict(), x), 0, 1) if variant == "image_io" else \
            torch_out(net, net.net.state_dict(), x)
        y = backend.infer(x)
        assert y.shape == (1, 3, h, wd)
        assert np.abs(y - ref).mean() <= tol, (variant, h, wd)
    if variant in ("enumerated", "image_io"):      # the hot swap re-exports like this package and predicts
        swap = backend.swapper(out, model=net)
        new = perturbed(net)
        assert swap.submit(new)
        x = np.random.default_rng(2).random((1, 3, 32, 32), dtype=np.float32)
        y = backend.infer(x)
        ref = torch_out(net, new, x)
        ref = np.clip(ref, 0, 1) if variant == "image_io" else ref
        assert np.abs(y - ref).mean() <= tol and swap.swaps == 1
        assert (backend.spec.fixed_hw, backend.spec.shapes, backend.image_input) == served   # re-read, same I/O
        assert backend.spec.metadata.get("adapted") == "true"
