"""The ``export_onnx`` pass: a deployable ONNX file, checked and proven to compute what the model computes.

Modules: :mod:`~optkit_plugins.export_onnx.plugin` (the pass), :mod:`~optkit_plugins.export_onnx.selection`
(what is exported: all outputs, some, or a YOLO model's deployment output),
:mod:`~optkit_plugins.export_onnx.exporter` (routes: torch.export-based, then TorchScript),
:mod:`~optkit_plugins.export_onnx.opsets` (validity at the requested opset, the Split repair),
:mod:`~optkit_plugins.export_onnx.trace_state` (module caches made traceable),
:mod:`~optkit_plugins.export_onnx.verify` (onnx.checker and parity per output under onnxruntime),
:mod:`~optkit_plugins.export_onnx.simplify` (onnxslim).
"""

from optkit_plugins.export_onnx.plugin import ExportOnnx, optkit_register_passes

__all__ = ["ExportOnnx", "optkit_register_passes"]
