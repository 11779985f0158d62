"""The ``optkit`` command line (click): ``run``, ``validate``, ``passes``, ``schema``, ``info``,
``sweep`` and ``report`` (:mod:`optkit.cli.commands`)."""

__all__ = ["main"]


def main() -> None:
    """The ``optkit`` console script."""
    from optkit.cli.commands import cli

    cli(prog_name="optkit")
