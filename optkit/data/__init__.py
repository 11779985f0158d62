"""Data: the ``data:`` section of a pipeline as datasets and loaders, dataset sources by scheme,
the image transform, checks against the model, and the digits task that ships with optkit.

Internal: import from the modules; what plugins need is re-exported by :mod:`optkit`.
"""

__all__: list[str] = []
