"""An example third-party optkit plugin distribution: one pass, ``strip_dropout``."""

__all__: list[str] = []
