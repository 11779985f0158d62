"""The ``optkit`` command line (click): ``run``, ``validate``, ``passes``, ``schema``, ``info``,
``sweep`` and ``report`` (:mod:`optkit.cli.commands`)."""

# ``main`` is the console script's target (pyproject's [project.scripts]), not Python API.
__all__: list[str] = []


def main() -> None:
    """The ``optkit`` console script."""
    from optkit.cli.commands import cli

    cli(prog_name="optkit")
