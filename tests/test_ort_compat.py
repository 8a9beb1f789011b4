"""The ONNX Runtime internals behind export/ort_compat.py: fails loudly when an installed ONNX Runtime changes
them (histogram layout, collector constructor, ranges cache) or leaves the range pinned in pyproject.toml; and
the quantizer's log silencing never changes the process's own logging."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from neurmap.core.errors import NeurmapError  # noqa: E402
from neurmap.export import ort_compat  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, x):
        return self.c2(torch.relu(self.c1(x))) + x


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    from neurmap.export.onnx_export import export_onnx
    from neurmap.export.ort_quant import prepare

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("compat")
    f = export_onnx(_Net().eval(), d / "f.onnx", 16, 16, dynamic=True)
    frames = np.random.default_rng(0).random((3, 3, 16, 16), dtype=np.float32)
    return f, prepare(f, d / "pre.onnx"), frames


def test_pyproject_pins_exactly_the_supported_range_and_the_installed_one_is_in_it():
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pin = next(d for d in deps if re.match(r"onnxruntime\b", d))
    assert pin.replace(" ", "") == "onnxruntime" + ",".join(ort_compat.SUPPORTED)
    ort_compat.check_version()   # raises, naming the range, when this environment's ONNX Runtime is outside it


def test_version_outside_the_range_is_one_line(monkeypatch):
    monkeypatch.setattr(ort, "__version__", "1.26.0")
    with pytest.raises(NeurmapError, match=r"pip install 'onnxruntime>=1\.27,<1\.33'"):
        ort_compat.check_version()
    monkeypatch.setattr(ort, "__version__", "1.33.0")
    with pytest.raises(NeurmapError, match="outside the tested range"):
        ort_compat.check_version()


def test_calibrator_histograms_keep_their_layout(graph):
    """create_calibrator(Percentile) -> collector.histogram_dict of 5-tuples, counting every activation value."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    from neurmap.calibration.reader import FrameReader
    from neurmap.export.ort_quant import op_types

    f, pre, frames = graph
    with ort_compat.quiet():
        cal = create_calibrator(pre, op_types(), augmented_model_path=str(pre.parent / "aug.onnx"),
                                calibrate_method=CalibrationMethod.Percentile,
                                extra_options={"symmetric": False, "num_bins": 64, "percentile": 99.99})
        cal.collect_data(FrameReader.for_model(frames, pre))
    hists = ort_compat.histograms(cal)
    assert "blurry" in hists and len(hists) >= 3
    h, e, mn, mx = hists["blurry"]
    assert h.sum() == frames.size and len(e) == len(h) + 1
    assert float(mn) == pytest.approx(frames.min()) and float(mx) == pytest.approx(frames.max())


def test_changed_histogram_layout_is_refused_not_misread():
    class Collector:                                   # what a release with 4-tuple entries would hand back
        histogram_dict = {"x": (np.ones(4), np.arange(5.0), 0.0, 1.0)}

    class Calibrator:
        collector = Collector()

    with pytest.raises(NeurmapError, match="histogram_dict entries"):
        ort_compat.histograms(Calibrator())
    with pytest.raises(NeurmapError, match="no collector.histogram_dict"):
        ort_compat.histograms(object())


def test_entropy_thresholds_through_ort_collector():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, 100_000), [40.0]])          # one far outlier
    h, e = np.histogram(x, 512, range=(-40.0, 40.0))
    lo, hi = ort_compat.entropy_thresholds({"t": (h, e, np.float64(x.min()), np.float64(40.0))})["t"]
    assert -40 <= lo < 0 < hi < 20                                    # KL search clips the outlier


def test_written_ranges_are_the_ones_quantize_static_uses(graph, tmp_path):
    """The ranges cache (save_tensors_data -> calibration_cache_path) sets the input quantizer's scale."""
    import onnx
    import onnx.numpy_helper as nh

    from neurmap.export.ort_quant import QuantConfig, quantize_int8

    f, pre, frames = graph
    from neurmap.export.ort_quant import collect_histograms, ranges_from_histograms

    ranges = ranges_from_histograms(collect_histograms(pre, frames), "minmax")
    q = quantize_int8(f, tmp_path / "q.onnx", None, QuantConfig(), ranges=ranges)
    m = onnx.load(str(q.path))
    inits = {t.name: nh.to_array(t) for t in m.graph.initializer}
    first_q = next(n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "blurry")
    assert float(inits[first_q.input[1]]) == pytest.approx(1 / 255, rel=1e-6)   # input range exactly (0, 1)
    other = [n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in ranges
             and n.input[0] != "blurry" and n.input[0] not in inits]
    assert other
    for n in other:
        lo, hi = ranges[n.input[0]]
        assert float(inits[n.input[1]]) == pytest.approx((max(hi, 0) - min(lo, 0)) / 255, rel=1e-3)


def test_quiet_touches_no_global_logging(graph, tmp_path):
    from neurmap.export.ort_quant import QuantConfig, quantize_int8

    f, pre, frames = graph
    root = logging.getLogger()
    before = (list(root.handlers), list(root.filters), root.level, logging.getLogger("onnxruntime").level)
    quantize_int8(f, tmp_path / "q.onnx", frames, QuantConfig(method="percentile"))
    assert (list(root.handlers), list(root.filters), root.level,
            logging.getLogger("onnxruntime").level) == before
    ort_file = str(Path(ort.__file__).parent / "quantization" / "quantize.py")
    mine = logging.LogRecord("root", logging.WARNING, __file__, 1, "user", None, None)
    theirs = logging.LogRecord("root", logging.WARNING, ort_file, 1, "ort", None, None)
    with ort_compat.quiet():
        assert root.filter(mine) and not root.filter(theirs)       # only ORT's own records are dropped
    assert root.filter(theirs)                                     # and only while the quantizer runs


def test_quiet_undoes_the_basicconfig_of_a_bare_root(monkeypatch):
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", logging.WARNING)
    with ort_compat.quiet():
        logging.warning("from a module-level logging call")       # what ORT's quantizer does: basicConfig()
        assert root.handlers
    assert root.handlers == [] and root.level == logging.WARNING
