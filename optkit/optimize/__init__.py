"""``optkit optimize``: candidate chains built from the registered passes (:mod:`~optkit.optimize.candidates`),
computed as sweep jobs through a stage cache (:mod:`~optkit.optimize.jobs`, :mod:`~optkit.optimize.cache`),
searched by successive halving and timed side by side (:mod:`~optkit.optimize.search`), reported with
their Pareto front (:mod:`~optkit.optimize.pareto`, :mod:`~optkit.optimize.report`). The settings are
:class:`optkit.config.optimize.OptimizeSpec` (a pipeline file's ``optimize:`` section)."""

__all__: list[str] = []
