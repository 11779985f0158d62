"""Data: the ``data:`` section of a pipeline as datasets and loaders, dataset sources by scheme,
the image transform, checks against the model, and the digits task that ships with optkit.

Internal: import from the modules; what plugins need is re-exported by :mod:`optkit`. One name is
public here: :func:`digits_cnn`, because pipeline files name it as ``python:optkit.data:digits_cnn``.
"""

from optkit.data.digits import digits_cnn

__all__ = ["digits_cnn"]
