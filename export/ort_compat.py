"""The ONNX Runtime quantization internals neurmap relies on, in one place, for one pinned version range.

``export/ort_quant.py`` needs three things ONNX Runtime does not offer as public API: the calibrator's
``collector.histogram_dict`` (entries ``(hist, edges, min, max, threshold)``), the ``HistogramCollector``
constructor (to run ORT's entropy search on our own histograms) and ``save_tensors_data`` +
``quantize_static(calibration_cache_path=...)`` (to hand it explicit ranges; both new in 1.27). They change
between releases without notice, so they live here, are checked on use (a changed layout is a one-line
:class:`NeurmapError` naming the supported range, never a wrong artifact), and ``tests/test_ort_compat.py``
fails loudly when an installed ONNX Runtime breaks them. :data:`SUPPORTED` must equal the pin in
``pyproject.toml``.

ONNX Runtime's quantizer logs through the *root* logger (``logging.warning(...)`` at module level, which also
calls ``basicConfig`` when the root has no handler). :func:`quiet` drops only records emitted from inside the
onnxruntime package while it runs and restores the root logger (handlers, filters, level) afterwards: the
process's own logging is never changed.
"""
from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
from typing import Iterator

import numpy as np

from neurmap.core.errors import NeurmapError

#: the range these internals were read and tested on (1.27: calibration_cache_path / save_tensors_data appear;
#: 1.32.0 tested here); pyproject.toml pins exactly this
SUPPORTED = (">=1.27", "<1.33")
_LOW, _HIGH = (1, 27), (1, 33)


def version() -> tuple[int, int]:
    import onnxruntime

    major, minor = onnxruntime.__version__.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def _changed(what: str) -> NeurmapError:
    import onnxruntime

    return NeurmapError(f"ONNX Runtime {onnxruntime.__version__} changed {what}; neurmap's INT8 path supports "
                        f"onnxruntime{','.join(SUPPORTED)}: pip install 'onnxruntime{','.join(SUPPORTED)}'")


def check_version() -> None:
    """One line, before any work, where the installed ONNX Runtime is outside :data:`SUPPORTED`."""
    if not _LOW <= version() < _HIGH:
        raise _changed("the quantization internals (it is outside the tested range)")


@functools.lru_cache(maxsize=1)
def _ort_dir() -> str:
    import onnxruntime

    return os.path.dirname(os.path.abspath(onnxruntime.__file__))


def _not_from_ort(record: logging.LogRecord) -> bool:
    return not os.path.abspath(record.pathname or "").startswith(_ort_dir())


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence ONNX Runtime's quantizer (its prints and its log records) for the block; nothing else changes."""
    _ort_dir()
    root, ort_logger = logging.getLogger(), logging.getLogger("onnxruntime")
    handlers, level, ort_level = list(root.handlers), root.level, ort_logger.level
    root.addFilter(_not_from_ort)                   # drops only records whose source file is inside onnxruntime
    ort_logger.setLevel(logging.ERROR)              # onnxruntime.* named loggers
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.removeFilter(_not_from_ort)
        if not handlers:                            # logging.warning() ran basicConfig on a bare root: undo it
            for h in [h for h in root.handlers if h not in handlers]:
                root.removeHandler(h)
            root.setLevel(level)
        ort_logger.setLevel(ort_level)


def histograms(calibrator) -> dict[str, tuple]:
    """{tensor: (hist, edges, min, max)} from a histogram calibrator (``create_calibrator(..., Percentile)``)."""
    hd = getattr(getattr(calibrator, "collector", None), "histogram_dict", None)
    if not isinstance(hd, dict) or not hd:
        raise _changed("the calibrator (no collector.histogram_dict after collect_data)")
    out = {}
    for k, v in hd.items():
        if not (isinstance(v, tuple) and len(v) == 5 and np.ndim(v[0]) == 1 and np.ndim(v[1]) == 1
                and len(v[1]) == len(v[0]) + 1 and np.ndim(v[2]) == 0 and np.ndim(v[3]) == 0):
            raise _changed(f"histogram_dict entries (expected (hist, edges, min, max, threshold), got "
                           f"{type(v).__name__} of {len(v) if hasattr(v, '__len__') else '?'})")
        out[k] = (v[0], v[1], v[2], v[3])
    return out


def entropy_thresholds(hists: dict[str, tuple], num_bins: int = 512, num_quantized_bins: int = 128,
                       percentile: float = 99.999) -> dict[str, tuple[float, float]]:
    """ORT's KL-divergence (entropy) threshold search run on our histograms: {tensor: (lo, hi)}."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    try:
        col = HistogramCollector(method="entropy", symmetric=False, num_bins=num_bins,
                                 num_quantized_bins=num_quantized_bins, percentile=percentile, scenario="same")
    except TypeError as e:
        raise _changed(f"the HistogramCollector constructor ({e})") from None
    for k, (h, e, mn, mx) in hists.items():
        col.histogram_dict[k] = (h, e, mn, mx, max(abs(mn), abs(mx)))
    with quiet():
        res = col.compute_collection_result()
    try:
        return {k: (float(res[k][0]), float(res[k][1])) for k in hists}
    except (KeyError, TypeError, IndexError) as e:
        raise _changed(f"the entropy result layout ({type(e).__name__}: {e})") from None


def write_ranges(ranges: dict[str, tuple[float, float]], path) -> None:
    """Explicit (lo, hi) per tensor as the calibration cache ``quantize_static(calibration_cache_path=)`` reads."""
    try:
        from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData, save_tensors_data
    except ImportError as e:
        raise _changed(f"the calibration cache API ({e})") from None
    td = TensorsData(CalibrationMethod.MinMax,
                     {k: (np.array(lo, np.float32), np.array(hi, np.float32)) for k, (lo, hi) in ranges.items()})
    save_tensors_data(td, path)
