"""An example third-party optkit plugin distribution, one module per extension point:

- :mod:`~optkit_example_plugin.strip_dropout`: a pass (``strip_dropout``);
- :mod:`~optkit_example_plugin.models`: a model source (``example:scaled_stem``);
- :mod:`~optkit_example_plugin.npz`: a dataset source (``npz:FILE``);
- :mod:`~optkit_example_plugin.scaled_conv`: a custom layer and its module rule (``fuse_bn`` folds
  the BatchNorm after it);
- :mod:`~optkit_example_plugin.stage_log`: an observer (``stages.jsonl`` in the run folder).
"""

__all__: list[str] = []
