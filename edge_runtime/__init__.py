"""neurmap.edge_runtime: run exported deblurring engines on videos, cameras and streams.

    from neurmap.edge_runtime import build_pipeline
    summary = build_pipeline("clip.mp4", "dmphn.onnx", "out.mp4").run()

Parts: :mod:`.sources` (URIs -> frames), :mod:`.backends` (one file per engine behind
:class:`~.backends.base.Backend`), :mod:`.pipeline` (threaded stages), :mod:`.tiling`, :mod:`.sinks`,
:mod:`.metrics`. Imports are lazy so ``neurmap --help`` does not pay for OpenCV or an engine.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "build_pipeline": "pipeline", "Pipeline": "pipeline", "RunConfig": "pipeline",
    "open_source": "sources", "open_sinks": "sinks", "load_backend": "backends", "Backend": "backends",
    "InputSpec": "backends", "Metrics": "metrics", "run_tiled": "tiling",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
