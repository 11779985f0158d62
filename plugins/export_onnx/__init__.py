"""The ``export_onnx`` pass: a deployable ONNX file, checked and proven to compute what the model computes.

Modules: :mod:`~optkit_plugins.export_onnx.plugin` (the pass), :mod:`~optkit_plugins.export_onnx.exporter`
(torch.export-based exporter, TorchScript fallback), :mod:`~optkit_plugins.export_onnx.verify`
(onnx.checker and parity under onnxruntime), :mod:`~optkit_plugins.export_onnx.simplify` (onnxslim).
"""

from optkit_plugins.export_onnx.plugin import ExportOnnx, optkit_register_passes

__all__ = ["ExportOnnx", "optkit_register_passes"]
