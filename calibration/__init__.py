"""neurmap.calibration: the data and measurements behind INT8 artifacts.

- :mod:`.frames` — representative calibration frames (seeded; spread over sources, time and blur strength;
  GoPro-protocol blur synthesised from high-fps sharp folders; cached as .npy) and disjoint hold-out frames;
- :mod:`.reader` — the ONNX Runtime ``CalibrationDataReader``;
- :mod:`.onnx_torch` — ORT's QDQ graph run in PyTorch (fake quantization), for sensitivity and fine-tuning;
- :mod:`.sensitivity` — which quantization points cost the most, and which nodes to keep in float;
- :mod:`.qat` — optional quantization-aware fine-tuning by self-distillation;
- :mod:`.parity` — artifact vs float model vs ground truth (PSNR, max/p99 |difference|, SSIM).
"""
