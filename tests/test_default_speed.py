"""bench/default_speed.py's INT8 ceiling: the conv model builds, is quantized by the shipped recipe (U8
activations, S8 per-channel weights, QDQ, nothing kept in float) and runs through ONNX Runtime."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from default_speed import build_ceiling, ceiling_net, float_mac_share, gmacs  # noqa: E402

from neurmap.export.onnx_export import onnx_session  # noqa: E402
from neurmap.export.ort_quant import QuantConfig, quantize_int8  # noqa: E402


def _run(path, x):
    sess = onnx_session(path, threads=1)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_ceiling_conv_builds_quantizes_u8s8_per_channel_and_runs(tmp_path):
    c, h, w = 8, 16, 24
    net = ceiling_net(c)
    assert gmacs(net, h, w) * 1e9 == h * w * (3 * c + c * c * 9 + c * 3)      # the 3x3 is the bulk
    calib = np.random.default_rng(0).random((2, 3, h, w), dtype=np.float32)
    fp32, int8 = build_ceiling(net, h, w, calib, tmp_path)

    m = onnx.load(str(int8))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    dq = {n.output[0]: n for n in m.graph.node if n.op_type == "DequantizeLinear"}
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    assert len(convs) == 3                                                        # none kept in float
    for conv in convs:
        x_dq, w_dq = dq[conv.input[0]], dq[conv.input[1]]
        assert inits[w_dq.input[0]].dtype == np.int8                              # S8 weights ...
        assert inits[w_dq.input[1]].shape == (inits[w_dq.input[0]].shape[0],)     # ... one scale per out channel
        assert inits[x_dq.input[2]].dtype == np.uint8                             # U8 activations
    assert [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim] == [1, 3, h, w]   # frozen static

    x = np.random.default_rng(1).random((1, 3, h, w), dtype=np.float32)
    ref = net(torch.from_numpy(x)).detach().numpy()
    y32, y8 = _run(fp32, x), _run(int8, x)
    assert y8.shape == (1, 3, h, w)
    np.testing.assert_allclose(y32, ref, atol=1e-5)
    assert np.abs(y8 - ref).max() < 0.05 * np.abs(ref).max()                     # 8-bit error, not garbage


def test_float_mac_share_counts_the_convs_kept_in_float(tmp_path):
    """0 for the ceiling as quantized; keeping its 3x3 in float leaves that conv's share of the MACs in float."""
    c, h, w = 8, 16, 16
    net = ceiling_net(c)
    calib = np.random.default_rng(0).random((2, 3, h, w), dtype=np.float32)
    fp32, int8 = build_ceiling(net, h, w, calib, tmp_path)
    assert float_mac_share(int8) == 0.0
    big = [n.name for n in onnx.load(str(fp32)).graph.node if n.op_type == "Conv"][1]
    part = quantize_int8(fp32, tmp_path / "part.onnx", calib, QuantConfig(method="percentile", exclude=[big]))
    assert abs(float_mac_share(part.path) - 9 * c * c / (3 * c + 9 * c * c + c * 3)) < 1e-9
