"""The ``optkit`` command line (click): ``run``, ``validate``, ``passes``, ``schema``, ``info``,
``sweep`` and ``report``."""

from optkit.cli.commands import cli

__all__ = ["cli", "main"]


def main() -> None:
    """The ``optkit`` console script."""
    cli(prog_name="optkit")
