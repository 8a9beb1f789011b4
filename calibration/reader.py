"""ONNX Runtime calibration data reader over an in-memory (N,3,H,W) float32 frame array."""
from __future__ import annotations

from typing import Optional

import numpy as np

try:  # the ABC is only needed for isinstance checks inside ORT; duck typing works without it
    from onnxruntime.quantization import CalibrationDataReader as _Base
except Exception:  # pragma: no cover
    _Base = object


class FrameReader(_Base):
    """Feeds frames one batch at a time as ``{input_name: array}``; supports ``rewind`` and ``set_range``
    (ORT's strided calibration), so the same reader serves several calibration passes."""

    def __init__(self, frames: np.ndarray, input_name: str = "blurry", batch: int = 1) -> None:
        a = np.asarray(frames, dtype=np.float32)
        if a.ndim != 4 or a.shape[1] != 3:
            raise ValueError(f"calibration frames must be (N,3,H,W), got {a.shape}")
        self.frames, self.input_name, self.batch = np.ascontiguousarray(a), input_name, max(1, int(batch))
        self.start, self.end = 0, len(a)
        self._pos = 0

    def __len__(self) -> int:
        return self.end - self.start

    def get_next(self) -> Optional[dict]:
        i = self.start + self._pos
        if i >= self.end:
            return None
        j = min(i + self.batch, self.end)
        self._pos += j - i
        return {self.input_name: self.frames[i:j]}

    def rewind(self) -> None:
        self._pos = 0

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end = max(0, start_index), min(len(self.frames), end_index)
        self._pos = 0

    @classmethod
    def for_model(cls, frames: np.ndarray, onnx_path, batch: int = 1) -> "FrameReader":
        """A reader whose input name is the model's first input."""
        import onnx

        m = onnx.load(str(onnx_path), load_external_data=False)
        inits = {i.name for i in m.graph.initializer}
        name = next(i.name for i in m.graph.input if i.name not in inits)
        return cls(frames, name, batch)
