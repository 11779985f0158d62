"""Hook specifications: the whole contract between optkit and its plugins.

Every hook is prefixed ``optkit_``. Plugins implement them with :data:`optkit.hookimpl`::

    from optkit import Pass, hookimpl

    @hookimpl
    def optkit_register_passes(register):
        register(MyPass)

Every hook is called through pluggy. The observers (``optkit_stage_*``) may be wrappers
(``@hookimpl(wrapper=True)``, or old-style ``hookwrapper=True``) that run around the other
observers; one that raises is logged, naming its plugin, and skipped. The registration hooks
(``optkit_register_*``) are called once per plugin and may not be wrappers: a plugin that declares
one is refused at load, by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from optkit.data.sources import DatasetLoader
    from optkit.models.importance import Importance
    from optkit.models.rules import ModuleRule
    from optkit.models.sources import SourceLoader
    from optkit.passes import Pass, Progress
    from optkit.results import RunInfo, StageResult

__all__ = ["PROJECT", "hookspec", "hookimpl"]

PROJECT = "optkit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def optkit_register_passes(register: Callable[[type[Pass]], None]) -> None:
    """Add pass classes to the registry.

    Call ``register(PassClass)`` once per pass. The class's ``name`` is what pipeline files use;
    two plugins registering the same name is an error that names both distributions.

    :param register: adds one :class:`optkit.Pass` subclass to the registry.

    .. versionadded:: 0.1
    """


@hookspec
def optkit_register_sources(register: Callable[[str, SourceLoader], None]) -> None:
    """Add model sources by scheme (``torchvision``, ``file``, ``python``, or your own).

    A source ``scheme:rest`` in a pipeline file is handed to the loader registered for ``scheme``
    as ``loader(request)``, an :class:`optkit.SourceRequest` with ``target`` (``rest``),
    ``spec`` (the validated :class:`optkit.config.pipeline.ModelSpec`), ``base_dir`` (relative paths
    resolve against it: ``request.resolve(path)``) and ``details`` (what to report); it returns
    an ``nn.Module``. ``model.weights`` and ``model.freeze`` are applied by optkit afterwards.
    For input it refuses the loader raises :class:`optkit.errors.PipelineError` (exit 2, the
    source named); anything else it raises is reported as a bug in the plugin (exit 1).

    :param register: ``register(scheme, loader)`` adds one scheme.

    .. versionadded:: 0.1
    """


@hookspec
def optkit_register_datasets(register: Callable[[str, DatasetLoader], None]) -> None:
    """Add dataset sources by scheme (``imagefolder``, ``python``, or your own).

    A ``data:`` entry ``source: scheme:rest`` is handed to the loader registered for ``scheme`` as
    ``loader(request)``, an :class:`optkit.DatasetRequest` with ``target`` (``rest``),
    ``spec`` (the validated entry: ``batch_size``, ``limit``, ``kwargs``, ...), ``role``
    (``eval``, ``train`` or ``calibration``), ``transform`` (the ``data.transform`` pipeline, for
    loaders that read images), ``base_dir`` (``request.resolve(path)``) and ``details``; it returns
    a map-style ``torch.utils.data.Dataset`` of ``(input, label)`` pairs or of inputs only.
    ``limit``, batching and shuffling are applied by optkit afterwards. For input it refuses the
    loader raises :class:`optkit.errors.PipelineError` (exit 2, the entry named); anything else
    it raises is reported as a bug in the plugin (exit 1).

    :param register: ``register(scheme, loader)`` adds one scheme.

    .. versionadded:: 0.1
    """


@hookspec
def optkit_register_module_rules(register: Callable[[ModuleRule], None]) -> None:
    """Describe module classes whose ``forward`` optkit cannot read, for fusion, pruning and MACs.

    Call ``register(rule)`` once per class, with an :class:`optkit.ModuleRule` naming the
    class by its path (``"my_lib.blocks.ConvBNAct"``; the class is never imported) and what it
    computes: a BatchNorm with extras that ``fuse_bn`` may fold (``bn_reference``,
    ``bn_remainder``), the library's own fused form (``fuse``), a conv-like layer that takes the
    BatchNorm after it (``fold_bn``), attention heads, attributes to
    update after channel pruning (``fixup``), a detection head, a MAC-counting rule. Passes get
    the rules as ``ctx.module_rules``; the runner counts MACs with them. Two plugins describing
    the same class path is an error where a model holds such a module.

    :param register: adds one :class:`optkit.ModuleRule`.

    .. versionadded:: 0.1
    """


@hookspec
def optkit_register_importances(register: Callable[[str, Importance], None]) -> None:
    """Add channel-importance criteria for ``prune_channels`` (``importance: NAME`` in a pipeline).

    A criterion is a callable that gets one :class:`optkit.PruningGroup` (the coupled
    channels' layers, their weights with the positions of every channel, the data loaders and
    ``gradients()``) and returns a 1-D tensor with one score per channel (``group.channels``);
    the lowest are removed first. The pass normalises each group's scores before a global
    ranking, so a criterion need not. Names are lower_snake_case; the built-in ones (``l1``,
    ``l2``, ``bn_scale``, ``taylor``, ``random``) cannot be taken.

    :param register: ``register(name, criterion)`` adds one criterion.

    .. versionadded:: 0.1
    """


@hookspec
def optkit_stage_started(stage: str, index: int, run: RunInfo) -> None:
    """Observe a stage about to run (progress displays, loggers).

    :param stage: the stage's name (``baseline`` or the pass name).
    :param index: 0 for the baseline, then 1, 2, ... in pipeline order.
    :param run: what is known about the run: pipeline, output folder, device, stage count.

    .. versionadded:: 0.1
    """


@hookspec
def optkit_stage_finished(result: StageResult, run: RunInfo) -> None:
    """Observe a finished stage (loggers, experiment trackers, progress displays).

    Called for every stage, failed ones included, after its metrics are measured and before
    the next stage starts. Observers must not change ``result``.

    :param result: the stage's status, metrics, details, artifacts and error.
    :param run: what is known about the run: pipeline, output folder, device, stage count.

    .. versionadded:: 0.1
    """


@hookspec
def optkit_stage_progress(stage: str, index: int, progress: Progress, run: RunInfo) -> None:
    """Observe how far a stage's pass is in a long task (training, calibration): progress bars, loggers.

    Called whenever the pass reports progress (:meth:`optkit.PassContext.report_progress`), between
    ``optkit_stage_started`` and ``optkit_stage_finished`` of its stage; often (every training
    step), so an observer should be quick.

    :param stage: the stage's name (the pass name).
    :param index: the stage's position: 1, 2, ... in pipeline order.
    :param progress: the task, steps done, steps in all and what to show (:class:`optkit.Progress`).
    :param run: what is known about the run: pipeline, output folder, device, stage count.

    .. versionadded:: 0.1
    """
