"""edge_runtime: sources, backends, tiling, pipeline, sinks, metrics and the `neurmap run` command.

Everything runs on tiny synthetic inputs (videos and images generated in tmp_path, ONNX graphs built with
onnx.helper) so the file stays well under two minutes on 2 CPU cores. GPU (TensorRT) and macOS (Core ML)
checks are marked and skipped elsewhere.
"""
from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from neurmap.core.errors import InputError, NeurmapError
from neurmap.edge_runtime import backends as B
from neurmap.edge_runtime.backends.base import Backend, InputSpec
from neurmap.edge_runtime.backends.onnxruntime import OnnxRuntimeBackend, choose_providers
from neurmap.edge_runtime.metrics import Metrics, percentiles
from neurmap.edge_runtime.pipeline import (Pipeline, RunConfig, plan_shape, to_bgr, to_rgb_float)
from neurmap.edge_runtime.sinks import ImageFolderSink, VideoSink, WindowSink, open_sinks
from neurmap.edge_runtime.sources import (CaptureSource, Source, csi_pipeline, has_gstreamer, open_source)
from neurmap.edge_runtime.tiling import run_tiled, tile_starts

from conftest import REPO, shared_path

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


# ---- helpers -----------------------------------------------------------------------------------------------
def tiny_onnx(path: Path, fixed=None, pad_multiple=8, kernel="identity", batch=None) -> Path:
    """A depthwise 3x3 conv (identity or box blur) + clip, with neurmap.* metadata like `neurmap export` writes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    H, W = fixed if fixed else ("H", "W")
    N = batch or "N"
    k = np.zeros((3, 1, 3, 3), np.float32)
    if kernel == "identity":
        k[:, :, 1, 1] = 1
    else:
        k[:] = 1 / 9
    nodes = [helper.make_node("Conv", ["blurry", "w"], ["c"], group=3, pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c", "lo", "hi"], ["sharp"])]
    inits = [numpy_helper.from_array(k, "w"), numpy_helper.from_array(np.array(0, np.float32), "lo"),
             numpy_helper.from_array(np.array(1, np.float32), "hi")]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("blurry", TensorProto.FLOAT, [N, 3, H, W])],
                          [helper.make_tensor_value_info("sharp", TensorProto.FLOAT, [N, 3, H, W])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    for key, v in {"neurmap.architecture": "tiny", "neurmap.pad_multiple": str(pad_multiple),
                   "neurmap.input_range": "0,1"}.items():
        m.metadata_props.add(key=key, value=v)
    onnx.save(m, str(path))
    return path


def frame(i: int, w: int = 96, h: int = 64) -> np.ndarray:
    f = np.zeros((h, w, 3), np.uint8)
    f[:] = (i * 9) % 200
    cv2.circle(f, (w // 2, h // 2), max(2, h // 4), (0, 200, 255), -1)
    cv2.putText(f, str(i % 10), (2, h - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1)
    return f


def make_video(path: Path, n: int = 10, w: int = 96, h: int = 64, fps: float = 25, fourcc: str = "mp4v") -> Path:
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert vw.isOpened()
    for i in range(n):
        vw.write(frame(i, w, h))
    vw.release()
    return path


def video_info(path: Path) -> tuple[int, float, int, int]:
    """(frames decoded, fps, width, height) — counted by decoding, not from the header."""
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), f"{path} does not open"
    n = 0
    while cap.read()[0]:
        n += 1
    info = (n, cap.get(cv2.CAP_PROP_FPS), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    cap.release()
    return info


class ListSource(Source):
    """Synthetic source: frames from a list, optionally live."""

    kind = "synthetic"

    def __init__(self, frames, fps=25.0, live=False):
        super().__init__("synthetic://test")
        self.frames, self.fps, self.live, self.i = list(frames), fps, live, 0
        f0 = self.frames[0]
        self.size = (f0.shape[1], f0.shape[0])

    def read(self):
        if self.stop_event.is_set() or self.i >= len(self.frames):
            return None
        f = self.frames[self.i]
        self.i += 1
        self.stats.frames += 1
        return f, f"{self.i - 1:06d}"


class FakeBackend(Backend):
    """Identity engine with an optional delay and spec, to test the pipeline alone."""

    name = "fake"

    def __init__(self, delay=0.0, spec=None, **kw):
        super().__init__(**kw)
        self.delay, self.calls = delay, 0
        self.spec = spec or InputSpec(multiple=8, max_batch=4)

    def load(self, artifact):
        pass

    def infer(self, batch):
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        return batch.copy()


class ListSink(ImageFolderSink.__mro__[1]):  # the Sink base class
    def __init__(self):
        super().__init__()
        self.out, self.names = [], []

    def write(self, f, name):
        self.out.append(f)
        self.names.append(name)
        self.frames += 1
        return True


@pytest.fixture(scope="module")
def onnx_dyn(tmp_path_factory) -> Path:
    return tiny_onnx(tmp_path_factory.mktemp("onnx") / "tiny.onnx")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("clip") / "clip.mp4", n=10)


def cli(*args):
    from neurmap.cli import app
    return CliRunner().invoke(app, list(map(str, args)))


# ---- backends ----------------------------------------------------------------------------------------------
def test_registry_picks_backend_by_suffix_and_imports_no_engine(tmp_path):
    assert B.backend_class("m.onnx").__name__ == "OnnxRuntimeBackend"
    assert B.backend_class("m.engine").__name__ == "TensorRTBackend"
    assert B.backend_class("m.plan").__name__ == "TensorRTBackend"
    assert B.backend_class("m.mlpackage").__name__ == "CoreMLBackend"
    assert B.backend_class("m.safetensors").__name__ == "TorchBackend"
    assert B.backend_class(tmp_path).__name__ == "TorchBackend"         # official DMPHN folder
    with pytest.raises(NeurmapError, match=r"\.onnx"):
        B.backend_class("m.xyz")
    with pytest.raises(NeurmapError, match="does not exist"):
        B.load_backend(tmp_path / "missing.onnx")
    # backend modules import their engine lazily: importing them pulls in neither tensorrt nor coremltools
    code = ("import sys, neurmap.edge_runtime.backends.tensorrt, neurmap.edge_runtime.backends.coreml, "
            "neurmap.edge_runtime.backends.onnxruntime; "
            "print(sorted(m for m in ('tensorrt', 'coremltools', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def test_onnxruntime_backend_reads_shape_and_metadata(tmp_path, onnx_dyn):
    b = B.load_backend(onnx_dyn)
    assert isinstance(b, OnnxRuntimeBackend)
    assert b.spec.fixed_hw is None and b.spec.multiple == 8 and b.spec.metadata["architecture"] == "tiny"
    x = np.random.rand(2, 3, 16, 24).astype(np.float32)
    np.testing.assert_allclose(b.infer(x), x, atol=1e-6)
    fixed = B.load_backend(tiny_onnx(tmp_path / "f.onnx", fixed=(32, 48), batch=2))
    assert fixed.spec.fixed_hw == (32, 48) and fixed.spec.max_batch == 2 and fixed.spec.multiple == 1
    np.testing.assert_allclose(fixed.infer(x[:1, :, :16, :16].repeat(2, 2).repeat(3, 3)[:, :, :32, :48]).shape,
                               (1, 3, 32, 48))
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(NeurmapError, match="ONNX Runtime cannot load"):
        B.load_backend(tmp_path / "bad.onnx")


def test_onnxruntime_provider_choice():
    avail = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(avail) == avail
    assert choose_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert choose_providers(["AzureExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    with pytest.raises(NeurmapError, match="onnxruntime-gpu"):
        choose_providers(["CPUExecutionProvider"], ["CUDAExecutionProvider"])


def test_torch_backend_runs_official_folder_like_load_weights():
    import torch

    folder = shared_path("pretrained", "dmphn_1_2_4")
    b = B.load_backend(folder)
    assert b.name == "torch" and b.spec.multiple == 8 and b.spec.fixed_hw is None
    assert b.meta["architecture"] == "dmphn_1_2_4" and b.meta["format"] == "official-dmphn"
    sys.path.insert(0, str(Path(__file__).parent / "reference"))
    from dmphn_official import dmphn_1_2_4          # the official arithmetic on the raw .pkl files

    x = to_rgb_float(frame(3, 48, 32))[0][None]
    ref = dmphn_1_2_4(folder, torch.from_numpy(x)).numpy()
    y = b.infer(x)
    np.testing.assert_allclose(y, ref, atol=1e-5)
    assert np.abs(y - x).mean() < 0.05                         # official weights: a small residual on a clean image
    assert np.abs(ref - x).max() > 1e-3                        # ... but not the identity (the check has teeth)


def test_exported_dmphn_matches_torch_backend(tmp_path):
    """The export helper's artifact (no padding inside, pad multiple in metadata) through the ORT backend
    gives what the PyTorch backend gives on an odd-sized frame (the pipeline pads and crops)."""
    export = pytest.importorskip("neurmap.export.onnx_export")
    from neurmap.core import build_model, save_weights
    model = build_model("dmphn_1_2_4").eval()
    ckpt = save_weights(tmp_path / "m.safetensors", model)
    onnx_path = export.export_onnx(model, tmp_path / "m.onnx", 32, 32, dynamic=True, simplify=False)
    f = frame(3, 45, 37)
    outs = {}
    for name, art in (("onnx", onnx_path), ("torch", ckpt)):
        sink = ListSink()
        Pipeline(ListSource([f]), B.load_backend(art), sink).run()
        outs[name] = sink.out[0].astype(np.float32)
    assert outs["onnx"].shape == (37, 45, 3)
    assert np.abs(outs["onnx"] - outs["torch"]).max() <= 2  # uint8 rounding


def test_coreml_backend_refuses_clearly_off_macos(tmp_path):
    if platform.system() == "Darwin":
        pytest.skip("macOS predicts; see test_coreml_predicts_on_macos")
    pytest.importorskip("coremltools")
    (tmp_path / "m.mlpackage").mkdir()
    with pytest.raises(NeurmapError, match="only on macOS"):
        B.load_backend(tmp_path / "m.mlpackage")


# (the TensorRT and Core ML backends on their hardware, with `neurmap export`'s own artifacts: tests/test_swap.py)


# ---- frames, tiling -----------------------------------------------------------------------------------------
def test_frame_normalisation_gray_rgba_16bit_float():
    bgr = frame(1)
    x, b16 = to_rgb_float(bgr)
    assert x.shape == (3, 64, 96) and not b16
    np.testing.assert_array_equal(to_bgr(x), bgr)                       # exact round trip
    g, _ = to_rgb_float(bgr[:, :, 0])
    assert np.array_equal(g[0], g[2]) and g.shape == (3, 64, 96)
    rgba = np.dstack([bgr, np.full(bgr.shape[:2], 7, np.uint8)])
    np.testing.assert_array_equal(to_rgb_float(rgba)[0], x)
    sixteen = bgr.astype(np.uint16) * 257
    x16, b16 = to_rgb_float(sixteen)
    assert b16 and np.abs(x16 - x).max() < 1e-6
    np.testing.assert_array_equal(to_bgr(x16, bit16=True), sixteen)
    flt, _ = to_rgb_float(np.full((4, 4, 3), np.nan, np.float32))
    assert np.isfinite(flt).all()
    from neurmap.edge_runtime.pipeline import Rejected
    for bad in (np.zeros((4, 4, 5), np.uint8), np.zeros((4, 4, 3), np.int32), np.zeros((0, 4, 3), np.uint8)):
        with pytest.raises(Rejected):
            to_rgb_float(bad)


def test_plan_shape_pads_tiles_and_respects_profiles():
    dyn = InputSpec(multiple=8)
    assert plan_shape(479, 721, dyn) == ((480, 728), None)
    fixed = InputSpec(fixed_hw=(256, 256))
    assert plan_shape(100, 200, fixed) == ((256, 256), None)            # smaller: padded up
    assert plan_shape(2160, 3840, fixed) == ((2160, 3840), (256, 256))  # larger: tiled
    assert plan_shape(100, 300, fixed) == ((256, 300), (256, 256))
    prof = InputSpec(multiple=8, min_hw=(64, 64), max_hw=(512, 512))
    assert plan_shape(32, 32, prof) == ((64, 64), None)
    assert plan_shape(1080, 1920, prof) == ((1080, 1920), (512, 512))
    assert plan_shape(1080, 1920, dyn, tile=(256, 512)) == ((1080, 1920), (256, 512))


@pytest.mark.parametrize("h,w,th,tw,ov", [(300, 500, 128, 128, 32), (257, 129, 128, 128, 16), (128, 128, 128, 128, 32)])
def test_tiling_identity_is_exact_and_covers(h, w, th, tw, ov):
    img = np.random.default_rng(1).random((3, h, w), dtype=np.float32)
    calls = []

    def ident(b):
        calls.append(b.shape)
        assert b.shape[2:] == (th, tw)
        return b

    np.testing.assert_allclose(run_tiled(img, ident, (th, tw), ov, max_batch=3), img, atol=1e-6)
    assert all(s[0] <= 3 for s in calls)
    starts = tile_starts(h, th, ov)
    assert starts[0] == 0 and starts[-1] == max(0, h - th)
    # a tile-dependent bias is cross-faded: no step larger than the bias itself across a seam
    k = iter(range(1000))
    out = run_tiled(np.zeros_like(img), lambda b: b + np.array([next(k) for _ in b], np.float32)[:, None, None, None] * 0.01,
                    (th, tw), ov, max_batch=1)
    assert np.abs(np.diff(out, axis=2)).max() <= 0.01 + 1e-6


# ---- sources -----------------------------------------------------------------------------------------------
def test_source_uris_and_messages(tmp_path, clip):
    src = open_source(f"file://{clip}")
    assert src.kind == "video" and src.size == (96, 64) and src.fps == 25 and not src.live
    src.close()
    with pytest.raises(InputError, match="not found"):
        open_source(str(tmp_path / "nope.mp4"))
    with pytest.raises(InputError, match="unknown source scheme"):
        open_source("ftp://x/y")
    with pytest.raises(InputError, match="does not exist"):
        open_source("v4l2:///dev/video987")
    with pytest.raises(InputError, match="no images"):
        open_source(str(tmp_path))
    pipe = csi_pipeline(0, 1280, 720, 30)
    assert pipe.startswith("nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1")
    assert pipe.endswith("appsink drop=1 max-buffers=1")
    if not has_gstreamer():
        for uri in ("csi://0", "videotestsrc ! videoconvert ! appsink"):
            with pytest.raises(NeurmapError, match="GStreamer"):
                open_source(uri)


class FlakyCapture:
    """A cv2.VideoCapture stand-in that delivers ``n`` frames and then drops."""

    def __init__(self, n, start):
        self.n, self.i, self.start = n, 0, start

    def isOpened(self):
        return True

    def read(self):
        if self.i >= self.n:
            return False, None
        self.i += 1
        return True, frame(self.start + self.i)

    def get(self, prop):
        return {cv2.CAP_PROP_FPS: 30.0, cv2.CAP_PROP_FRAME_WIDTH: 96, cv2.CAP_PROP_FRAME_HEIGHT: 64}.get(prop, 0)

    def release(self):
        pass


def test_live_source_reconnects_with_backoff_then_gives_up():
    plan = iter([FlakyCapture(3, 0), None, None, FlakyCapture(2, 100)])
    events = []

    def opener():
        return next(plan, None)

    src = CaptureSource("rtsp://cam/1", opener, "stream", events.append, reconnect_timeout=0.6,
                        first_backoff=0.02, max_backoff=0.1).open()
    sink = ListSink()
    summary = Pipeline(src, FakeBackend(), sink, RunConfig(realtime=False)).run()
    assert summary["frames_written"] == 5 and summary["reconnects"] == 1
    text = "\n".join(events)
    assert "dropped; reconnecting in 0.02 s (attempt 1)" in text and "attempt 3" in text  # two failed re-opens
    assert "reconnected" in text and "giving up" in text
    with pytest.raises(InputError, match="cannot open stream"):
        CaptureSource("rtsp://cam/2", lambda: None, "stream").open()


def test_stop_interrupts_reconnect_wait():
    src = CaptureSource("0", iter([FlakyCapture(1, 0)]).__next__, "camera", reconnect_timeout=60,
                        first_backoff=5).open()
    pipe = Pipeline(src, FakeBackend(), ListSink(), RunConfig(realtime=True))
    threading.Timer(0.5, pipe.stop, args=("SIGTERM",)).start()
    t = time.monotonic()
    s = pipe.run()
    assert time.monotonic() - t < 4 and s["frames_written"] == 1 and s["stopped_by"] == "SIGTERM"


# ---- the pipeline --------------------------------------------------------------------------------------------
def test_offline_keeps_every_frame_in_order_and_realtime_drops_stale_ones():
    frames = [frame(i) for i in range(40)]
    sink = ListSink()
    s = Pipeline(ListSource(frames), FakeBackend(delay=0.002), sink, RunConfig(realtime=False)).run()
    assert s["frames_written"] == 40 and s["frames_dropped"] == 0
    assert sink.names == [f"{i:06d}" for i in range(40)]
    np.testing.assert_array_equal(sink.out[7], frames[7])

    sink = ListSink()
    backend = FakeBackend(delay=0.05)
    s = Pipeline(ListSource(frames, live=True), backend, sink, RunConfig(realtime=True, rate=200)).run()
    assert s["frames_dropped"] > 10
    assert s["frames_written"] + s["frames_dropped"] == 40
    idx = [int(n) for n in sink.names]
    assert idx == sorted(idx) and idx[-1] == 39                         # in order; the newest frame made it
    # bounded latency: about one inference in the engine plus at most ~one waiting, never the backlog
    assert s["latency_capture_to_sink"]["p99_ms"] < 4 * 50 + 100
    assert set(s["stages"]) == {"capture", "preprocess", "inference", "postprocess", "sink"}
    for k in ("p50_ms", "p95_ms", "p99_ms"):
        assert k in s["stages"]["inference"]


def test_rejected_frames_and_resolution_change(tmp_path):
    frames = [frame(0), np.zeros((64, 96, 5), np.uint8), frame(1, 80, 48), frame(2), np.zeros((4, 4, 3), np.int32)]
    events = []
    sink = open_sinks(str(tmp_path / "o.mp4"), 25, on_event=events.append)
    s = Pipeline(ListSource(frames), FakeBackend(), sink, RunConfig(), on_event=events.append).run()
    assert s["frames_written"] == 3 and s["frames_rejected"] == 2 and len(s["rejections"]) == 2
    assert s["resolution_changes"] == 2
    text = "\n".join(events)
    assert "rejected frame 1" in text and "resolution changed from 96x64 to 80x48" in text
    assert video_info(tmp_path / "o.mp4")[0] == 3 and video_info(tmp_path / "o.mp4")[2:] == (96, 64)
    # an image folder keeps each frame's own size
    folder = ImageFolderSink(tmp_path / "imgs")
    Pipeline(ListSource([frame(0), frame(1, 80, 48)]), FakeBackend(), folder).run()
    shapes = sorted(cv2.imread(str(p)).shape for p in (tmp_path / "imgs").iterdir())
    assert shapes == [(48, 80, 3), (64, 96, 3)]


def test_engine_failure_finalises_output_and_reports_one_line(tmp_path):
    class Breaks(FakeBackend):
        def infer(self, batch):
            if self.calls >= 4:
                raise RuntimeError("device lost")
            return super().infer(batch)

    sink = VideoSink(tmp_path / "o.mp4", 25)
    pipe = Pipeline(ListSource([frame(i) for i in range(12)]), Breaks(), sink, RunConfig(warmup=False))
    with pytest.raises(NeurmapError, match="inference failed: RuntimeError: device lost .*finalised with 4 frames") as e:
        pipe.run()
    assert "\n" not in str(e.value)                                    # one line
    assert video_info(tmp_path / "o.mp4")[0] == 4


# ---- odd frames end to end ------------------------------------------------------------------------------------
def test_image_folder_of_gray_rgba_16bit_and_odd_size(tmp_path, onnx_dyn):
    src = tmp_path / "in"
    src.mkdir()
    base = frame(5, 721, 479)
    cv2.imwrite(str(src / "a_gray.png"), base[:, :, 1])
    cv2.imwrite(str(src / "b_rgba.png"), np.dstack([base, np.full(base.shape[:2], 128, np.uint8)]))
    cv2.imwrite(str(src / "c_16bit.png"), base.astype(np.uint16) * 257)
    cv2.imwrite(str(src / "d_color.jpg"), base)
    (src / "e_broken.png").write_bytes(b"\x89PNG broken")
    r = cli("run", src, "--engine", onnx_dyn, "-o", tmp_path / "out/", "--json", tmp_path / "s.json")
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["frames_written"] == 4 and s["frames_skipped_unreadable"] == 1
    out = {p.stem: cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in (tmp_path / "out").glob("*.png")}
    assert sorted(out) == ["a_gray", "b_rgba", "c_16bit", "d_color"]
    assert all(v.shape == (479, 721, 3) for v in out.values())
    assert out["c_16bit"].dtype == np.uint16 and out["a_gray"].dtype == np.uint8
    np.testing.assert_array_equal(out["b_rgba"], base)                  # identity engine: input back
    np.testing.assert_array_equal(out["c_16bit"], base.astype(np.uint16) * 257)
    # the same odd frames into a video: even-padded by one replicated row/column, with a note
    r = cli("run", src, "--engine", onnx_dyn, "-o", tmp_path / "odd.mp4", "--fps", 12)
    assert r.exit_code == 0 and "written as 722x480" in r.output
    n, fps, w, h = video_info(tmp_path / "odd.mp4")
    assert (n, fps, w, h) == (4, 12, 722, 480)


def test_4k_frame_is_tiled_on_a_fixed_shape_engine(tmp_path):
    engine = tiny_onnx(tmp_path / "fixed.onnx", fixed=(512, 512))
    big = cv2.resize(frame(3), (3840, 2160), interpolation=cv2.INTER_NEAREST)
    small = frame(4, 200, 120)
    sink = ListSink()
    s = Pipeline(ListSource([big, small]), B.load_backend(engine), sink, RunConfig(overlap=32)).run()
    assert s["tiled_frames"] == 1 and s["frames_written"] == 2
    np.testing.assert_array_equal(sink.out[0], big)                     # identity: seamless, exact
    np.testing.assert_array_equal(sink.out[1], small)                   # smaller frame padded up and cropped


# ---- the command ---------------------------------------------------------------------------------------------
def test_run_video_keeps_fps_size_and_count_and_compare(tmp_path, clip, onnx_dyn):
    out = tmp_path / "o.mp4"
    r = cli("run", clip, "-e", onnx_dyn, "-o", out, "--json", tmp_path / "s.json")
    assert r.exit_code == 0, r.output
    assert video_info(out) == (10, 25.0, 96, 64)
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["frames_written"] == 10 and s["exit"] == "completed" and s["mode"] == "offline"
    assert s["fps"] > 0 and s["latency_capture_to_sink"]["p99_ms"] >= s["latency_capture_to_sink"]["p50_ms"]
    printed = json.loads(r.stdout[r.stdout.index("{"):])
    assert printed["frames_written"] == 10
    r = cli("run", clip, "-e", onnx_dyn, "-o", tmp_path / "cmp.avi", "--compare", "--max-frames", 4)
    assert r.exit_code == 0, r.output
    assert video_info(tmp_path / "cmp.avi")[0::2] == (4, 192)


def test_truncated_and_garbage_inputs(tmp_path, onnx_dyn):
    full = make_video(tmp_path / "full.avi", n=20, fourcc="MJPG")
    data = full.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) * 6 // 10])
    readable = video_info(cut)[0]
    assert 0 < readable < 20
    r = cli("run", cut, "-e", onnx_dyn, "-o", tmp_path / "o.mp4", "--json", tmp_path / "s.json")
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["input_truncated"] and s["frames_written"] == readable and "truncated or corrupt" in r.output
    assert video_info(tmp_path / "o.mp4")[0] == readable
    damaged = bytearray(data)                                        # garbage in the middle of the file
    damaged[len(data) // 2: len(data) // 2 + 3000] = os.urandom(3000)
    (tmp_path / "mid.avi").write_bytes(bytes(damaged))
    r = cli("run", tmp_path / "mid.avi", "-e", onnx_dyn, "-o", tmp_path / "mid.mp4", "--json", tmp_path / "m.json")
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "m.json").read_text())
    assert s["frames_written"] >= 1 and video_info(tmp_path / "mid.mp4")[0] == s["frames_written"]
    mp4 = make_video(tmp_path / "m.mp4", n=20)
    (tmp_path / "cut.mp4").write_bytes(mp4.read_bytes()[:3000])        # an .mp4 cut before its index
    (tmp_path / "junk.mp4").write_bytes(os.urandom(4096))
    r = cli("run", tmp_path / "cut.mp4", "-e", onnx_dyn)
    assert isinstance(r.exception, InputError) and "cannot open video" in str(r.exception)
    r = subprocess.run([sys.executable, "-m", "neurmap", "run", str(tmp_path / "junk.mp4"), "-e", str(onnx_dyn)],
                       capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 2 and "cannot open video" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "WARN" not in r.stderr and r.stderr.lstrip().startswith("error:")


def test_cli_errors_are_one_line(tmp_path, clip, onnx_dyn, capsys, monkeypatch):
    """Through the console-script entry point (neurmap.cli.main): everything printed is one line, `error: ...`."""
    from neurmap.cli import main

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("NEURMAP_TRACEBACK", raising=False)
    monkeypatch.setattr("neurmap.edge_runtime.sinks.platform.system", lambda: "Linux")
    for args, text in ((["nope.mp4", "-e", onnx_dyn], "not found"),
                       ([clip, "-e", tmp_path / "x.onnx"], "does not exist"),
                       ([clip, "-e", onnx_dyn, "-o", tmp_path / "o.txt"], "not a video extension"),
                       ([clip, "-e", onnx_dyn, "--show"], "--show needs")):
        monkeypatch.setattr(sys, "argv", ["neurmap", "run", *map(str, args)])
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            main()
        out, err = capsys.readouterr()
        lines = [ln for ln in (out + err).splitlines() if ln.strip()]
        assert e.value.code not in (0, None), (args, out, err)
        assert len(lines) == 1 and lines[0].startswith("error:") and text in lines[0], (args, lines)


def test_show_needs_gui_or_display(monkeypatch):
    """Both refusals on every OS: Linux without a display; an OpenCV without GUI support (headless build)."""
    import neurmap.edge_runtime.sinks as sinks

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(sinks.platform, "system", lambda: "Linux")
    with pytest.raises(NeurmapError, match="needs a display") as e:
        WindowSink()
    assert "\n" not in str(e.value) and "-o" in str(e.value)
    monkeypatch.setenv("DISPLAY", ":0")

    def headless(*a, **k):
        raise cv2.error("The function is not implemented. Rebuild the library with GTK+ support")
    monkeypatch.setattr(sinks.cv2, "namedWindow", headless)
    with pytest.raises(NeurmapError, match="GUI support.*pip install opencv-python") as e:
        WindowSink()
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_finalises_a_playable_file_with_every_processed_frame(tmp_path, onnx_dyn, sig):
    src = make_video(tmp_path / "long.avi", n=300, fourcc="MJPG")
    out, js = tmp_path / "o.mp4", tmp_path / "s.json"
    proc = subprocess.Popen([sys.executable, "-m", "neurmap", "run", str(src), "-e", str(onnx_dyn), "-o", str(out),
                             "--input-rate", "20", "--json", str(js), "-q"], stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=ENV, cwd=str(REPO))
    deadline = time.monotonic() + 60
    line = ""
    while "running" not in line and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
    assert "running" in line, proc.communicate()
    time.sleep(1.5)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, stderr
    assert "Traceback" not in stderr
    s = json.loads(js.read_text())
    assert s["exit"] == "signal" and s["stopped_by"] == signal.Signals(sig).name
    assert 5 <= s["frames_written"] < 300
    n, fps, w, h = video_info(out)
    assert n == s["frames_written"] and (fps, w, h) == (25.0, 96, 64)


def test_metrics_percentiles_and_status_line():
    p = percentiles([0.001 * i for i in range(1, 101)])
    assert p["count"] == 100 and 49 <= p["p50_ms"] <= 51 and 98 <= p["p99_ms"] <= 100
    assert percentiles([]) == {"count": 0}
    m = Metrics()
    m.start()
    m.record("inference", 0.1)
    m.wrote(m.t_start)
    assert "1 frames" in m.status_line() and m.model_fps() == pytest.approx(10.0)


def test_video_sink_falls_back_to_pyav(tmp_path, monkeypatch):
    pytest.importorskip("av")
    import neurmap.edge_runtime.sinks as sinks

    class NoWriter:
        def __init__(self, *a, **k):
            pass

        def isOpened(self):
            return False

        def release(self):
            pass

    monkeypatch.setattr(sinks.cv2, "VideoWriter", NoWriter)
    sink = VideoSink(tmp_path / "o.mp4", 15)
    for i in range(5):
        sink.write(frame(i), str(i))
    sink.close()
    monkeypatch.undo()
    assert video_info(tmp_path / "o.mp4") == (5, 15.0, 96, 64)


def test_nan_from_engine_becomes_black_not_garbage():
    out = to_bgr(np.full((3, 4, 4), np.nan, np.float32))
    assert out.dtype == np.uint8 and (out == 0).all()
