"""Measurement: parameters, MACs/GFLOPs, latency, size, peak memory and drift of a model or artifact,
and its accuracy on data (:mod:`optkit.measure.accuracy`).

Measurement never changes what it measures: MACs are counted on a copy
(:mod:`optkit.measure.flops`), outputs and latency are taken under ``torch.inference_mode()`` in
eval mode with every submodule's ``training`` flag restored afterwards
(:func:`optkit.models.layers.eval_mode`). :func:`optkit.measure.stage.measure` measures one stage's
product; :func:`optkit.measure.latency.time_round_robin` times several side by side, and
:mod:`optkit.measure.intervals` gives every latency figure and speed-up its confidence interval.

Internal: import from the modules; what plugins need is re-exported by :mod:`optkit`.
"""

__all__: list[str] = []
