"""The ``prune_l1`` pass: L1-magnitude pruning, unstructured or whole channels.

Modules: :mod:`~optkit_plugins.prune_l1.plugin` (the pass), :mod:`~optkit_plugins.prune_l1.unstructured`,
:mod:`~optkit_plugins.prune_l1.channels` (the procedure), :mod:`~optkit_plugins.prune_l1.dependency`
(which channels must go together) and :mod:`~optkit_plugins.prune_l1.surgery` (shrinking layers).
"""

from optkit_plugins.prune_l1.plugin import PruneL1, optkit_register_passes

__all__ = ["PruneL1", "optkit_register_passes"]
