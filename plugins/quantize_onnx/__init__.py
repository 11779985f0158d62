"""The ``quantize_onnx`` pass: the exported ONNX model in int8 (static, calibrated on data; or
dynamic) or float16, measured under onnxruntime and held to a similarity tolerance.

Modules: :mod:`~optkit_plugins.quantize_onnx.plugin` (the pass and its options),
:mod:`~optkit_plugins.quantize_onnx.quantizers` (onnxruntime's quantization tools),
:mod:`~optkit_plugins.quantize_onnx.calibration` (calibration batches from data or random),
:mod:`~optkit_plugins.quantize_onnx.graph` (graph input, exclusions, what the result computes in).
"""

from optkit_plugins.quantize_onnx.plugin import QuantizeOnnx, optkit_register_passes

__all__ = ["QuantizeOnnx", "optkit_register_passes"]
