"""The ``prune_l1`` pass: L1-magnitude pruning, unstructured or whole channels.

Modules: :mod:`~optkit_plugins.prune_l1.plugin` (the pass), :mod:`~optkit_plugins.prune_l1.unstructured`,
and for whole channels, on the graph the model executes: :mod:`~optkit_plugins.prune_l1.channels`
(the procedure: trace, plan, cut, replay, back off), :mod:`~optkit_plugins.prune_l1.recorder`
(one run of a model as steps, shared by the trace and the replay), :mod:`~optkit_plugins.prune_l1.trace` (the
dispatch-level trace and its atoms), :mod:`~optkit_plugins.prune_l1.op_rules` (what each aten
operator does to channels), :mod:`~optkit_plugins.prune_l1.attention` (attention heads read from
module rules), :mod:`~optkit_plugins.prune_l1.atoms` (the union-find),
:mod:`~optkit_plugins.prune_l1.plan` (groups, importance, what is kept),
:mod:`~optkit_plugins.prune_l1.surgery` (cutting tensors, fixing attributes) and
:mod:`~optkit_plugins.prune_l1.replay` (checking the cut model runs the predicted graph).
In Python: ``from optkit_plugins.prune_l1 import prune_channels``.
"""

from optkit_plugins.prune_l1.channels import ChannelPruning, PruningRefused, prune_channels
from optkit_plugins.prune_l1.plugin import PruneL1, optkit_register_passes

__all__ = ["ChannelPruning", "PruneL1", "PruningRefused", "optkit_register_passes", "prune_channels"]
