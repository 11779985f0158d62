"""Sweeps: many (model × pipeline) jobs from one file, planned (:mod:`~optkit.sweep.plan`), run by an
executor (:mod:`~optkit.sweep.executors`) as child processes (:mod:`~optkit.sweep.jobs`), and
gathered into one report (:mod:`~optkit.sweep.driver`). The schema is :class:`optkit.config.sweep.SweepFile`."""

__all__: list[str] = []
