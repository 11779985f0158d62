"""Running a pipeline: device and environment, run folders, the stage runner, and ``optkit info``.

The modules are imported where they are used (:mod:`~optkit.run.runner` imports torch; the run
folders of :mod:`~optkit.run.run_dirs` do not, so sweeps can use them without it)."""

__all__: list[str] = []
