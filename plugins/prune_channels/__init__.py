"""The ``prune_channels`` pass: whole channels chosen by an importance criterion (built in, or from a
plugin through ``optkit_register_importances``), allocated per group or globally, by an amount or
toward a target in MACs, parameters or latency.

Modules: :mod:`~optkit_plugins.prune_channels.plugin` (the pass),
:mod:`~optkit_plugins.prune_channels.criteria` (the built-in criteria),
:mod:`~optkit_plugins.prune_channels.groups` (the groups as criteria see them, gradients) and
:mod:`~optkit_plugins.prune_channels.search` (finding the amount for a target). Groups, cuts and
replays are :mod:`optkit_plugins.prune_l1`'s.
"""

from optkit_plugins.prune_channels.plugin import PruneChannels, Target, optkit_register_passes

__all__ = ["PruneChannels", "Target", "optkit_register_passes"]
