"""Configuration files: YAML read safely with line numbers, validated into pipeline and sweep specs.

Internal: import from the modules (:mod:`~optkit.config.pipeline`, ...); the public API is :mod:`optkit`.
"""

__all__: list[str] = []
