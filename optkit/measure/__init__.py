"""Measurement: parameters, MACs/GFLOPs, latency, size, peak memory and drift of a model or artifact,
and its accuracy on data (:mod:`optkit.measure.accuracy`).

Measurement never changes what it measures: MACs are counted on a copy
(:mod:`optkit.measure.flops`), outputs and latency are taken under ``torch.inference_mode()`` in
eval mode with every submodule's ``training`` flag restored afterwards
(:func:`optkit.models.eval_mode`). :func:`measure` measures one stage's product;
:func:`time_round_robin` times several side by side, and :mod:`optkit.measure.intervals` gives
every latency figure and speed-up its confidence interval.
"""

from optkit.measure.accuracy import LOGITS_KEPT, AccuracyTracker, Evaluation, accuracy_metrics, classifier_outputs, evaluate, similarity_metrics
from optkit.measure.drift import (
    ChannelGroup,
    channel_groups_for,
    compare_outputs,
    drift_exceeds,
    output_excess,
    output_parts,
    similarity_falls_short,
    tolerance_failure,
    worst_output,
)
from optkit.measure.cpu import CpuInfo, cpu_info
from optkit.measure.flops import MacsProfile, count_macs, profile_macs
from optkit.measure.mac_rules import zero_macs
from optkit.measure.intervals import (
    CONFIDENCE,
    INDEPENDENT_SPEEDUP_METHOD,
    MEDIAN_METHOD,
    PAIRED_SPEEDUP_METHOD,
    RUN_TO_RUN_MARGIN,
    Interval,
    median_interval,
    paired_ratio_interval,
    ratio_of_medians_interval,
    speedup,
)
from optkit.measure.latency import (
    Contender,
    TimingSettings,
    configure_timing,
    flush_denormal_enabled,
    summarize_times,
    time_callable,
    time_round_robin,
)
from optkit.measure.noise import check_noise
from optkit.measure.outputs import OutputLeaf, flatten_outputs, output_leaves, resolve_output_selection, select_outputs
from optkit.measure.params import count_params
from optkit.measure.probe import meta_copy
from optkit.measure.size import file_bytes, state_dict_bytes, tensor_bytes
from optkit.measure.stage import Measurement, Runnable, latency_record, measure, runnable
from optkit.measure.thop_distribution import ThopOwner, thop_owner, thop_warning

__all__ = [
    "Measurement",
    "measure",
    "Evaluation",
    "evaluate",
    "classifier_outputs",
    "accuracy_metrics",
    "similarity_metrics",
    "LOGITS_KEPT",
    "AccuracyTracker",
    "compare_outputs",
    "drift_exceeds",
    "output_excess",
    "output_parts",
    "worst_output",
    "ChannelGroup",
    "channel_groups_for",
    "similarity_falls_short",
    "tolerance_failure",
    "flatten_outputs",
    "output_leaves",
    "OutputLeaf",
    "resolve_output_selection",
    "select_outputs",
    "count_params",
    "count_macs",
    "profile_macs",
    "MacsProfile",
    "Runnable",
    "runnable",
    "latency_record",
    "configure_timing",
    "TimingSettings",
    "flush_denormal_enabled",
    "time_callable",
    "time_round_robin",
    "Contender",
    "summarize_times",
    "check_noise",
    "CONFIDENCE",
    "MEDIAN_METHOD",
    "PAIRED_SPEEDUP_METHOD",
    "RUN_TO_RUN_MARGIN",
    "INDEPENDENT_SPEEDUP_METHOD",
    "Interval",
    "median_interval",
    "paired_ratio_interval",
    "ratio_of_medians_interval",
    "speedup",
    "state_dict_bytes",
    "file_bytes",
    "tensor_bytes",
    "meta_copy",
    "ThopOwner",
    "thop_owner",
    "thop_warning",
    "zero_macs",
    "CpuInfo",
    "cpu_info",
]
