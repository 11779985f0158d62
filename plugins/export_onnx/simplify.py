"""Graph simplification with onnxslim; optional, and never fatal: a failure keeps the model as is."""

from __future__ import annotations

import logging

import onnx

__all__ = ["simplify_onnx_model"]

log = logging.getLogger(__name__)


def simplify_onnx_model(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """Simplify ``model`` with onnxslim (constant folding, dead-node and redundant-op removal).

    Args:
        model: the exported model; left unchanged.

    Returns:
        The simplified model and ``None``, or ``model`` itself and why it could not be simplified.
    """
    try:
        import onnxslim
    except ImportError:
        return model, "onnxslim is not installed (pip install 'optkit[simplify]')"
    original = onnx.ModelProto()
    original.CopyFrom(model)  # onnxslim edits the model it is given
    try:
        simplified = onnxslim.slim(original)
    # onnxslim rewrites the graph with its own passes and may fail in any of them, with any
    # exception type; the issue asks for a warning and the unsimplified model in every such case.
    except Exception as error:  # noqa: BLE001
        log.warning("onnxslim failed, keeping the unsimplified model: %s: %s", type(error).__name__, error)
        return model, f"{type(error).__name__}: {error}"[:300]
    if simplified is None:
        return model, "onnxslim returned no model"
    return simplified, None
