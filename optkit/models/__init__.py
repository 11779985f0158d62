"""Models: sources (``scheme:target``), checkpoints read safely, weights paired and loaded,
freezing, classifier heads, small facts about layers, BatchNorm folding and module rules (what a
library's module computes, for fusion, pruning, MAC counting, drift and export).

Internal: import from the modules; what plugins need is re-exported by :mod:`optkit`.
"""

__all__: list[str] = []
