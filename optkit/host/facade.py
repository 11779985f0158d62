"""The one typed facade through which core code talks to plugins (no ``pm.hook`` elsewhere)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from functools import cached_property
from typing import TYPE_CHECKING, Any

from optkit.errors import PipelineError, PluginError, plain_text
from optkit.host.manager import OptkitPluginManager, PluginRecord, get_plugin_manager
from optkit.host.registry import Registered, Registry
from optkit.passes import Pass, Progress, check_pass_class

if TYPE_CHECKING:
    from pathlib import Path

    from optkit.config.data import DataSpec
    from optkit.config.pipeline import ModelSpec
    from optkit.data.loaders import PipelineData
    from optkit.data.sources import DatasetLoader
    from optkit.models.importance import Importance
    from optkit.models.rules import ModuleRule, ModuleRules
    from optkit.models.sources import SourceLoader
    from optkit.results import RunInfo, StageResult

__all__ = ["Host"]

log = logging.getLogger(__name__)


def _validate_scheme(scheme: object, loader: object, record: PluginRecord) -> tuple[str, Callable[..., Any]]:
    """``register(scheme, loader)`` of a source hook: a scheme name and a callable."""
    if not isinstance(scheme, str) or not scheme.isidentifier() or not callable(loader):
        raise PluginError(f"{record.origin}: register(scheme, loader) needs a name and a callable")
    return scheme, loader


def _validate_criterion(name: object, criterion: object, record: PluginRecord) -> tuple[str, Callable[..., Any]]:
    """``register(name, criterion)`` of ``optkit_register_importances``: a lower_snake_case name and a callable."""
    if not isinstance(name, str) or not name.isidentifier() or name != name.lower() or not callable(criterion):
        raise PluginError(f"{record.origin}: register(name, criterion) needs a lower_snake_case name and a callable")
    return name, criterion


def _conflicting(message: str) -> Callable[..., Any]:
    def criterion(*args: object) -> Any:
        raise PluginError(message)

    return criterion


class Host:
    """Plugins as the runner, the pipeline loader and the CLI see them.

    Args:
        pm: a plugin manager; by default a fresh one from :func:`get_plugin_manager`.

    Example:
        >>> host = Host()
        >>> [entry.name for entry in host.passes]  # doctest: +SKIP
        ['export_onnx', 'fuse_bn', 'prune_l1', 'reclassify', 'tta']
    """

    def __init__(self, pm: OptkitPluginManager | None = None) -> None:
        self.pm = pm if pm is not None else get_plugin_manager()

    @classmethod
    def with_plugins(cls, *plugins: object, disabled: Iterable[str] | None = None) -> Host:
        """A host with the installed plugins plus in-process ``plugins`` (tests, notebooks)."""
        return cls(get_plugin_manager(disabled=disabled, extra_plugins=plugins))

    @property
    def broken(self) -> list[PluginRecord]:
        """Plugins that failed to load or to register, in load order."""
        self.passes, self.sources, self.datasets, self.module_rules, self.importances  # noqa: B018 - registration failures are found by collecting
        return self.pm.broken

    @cached_property
    def passes(self) -> Registry[type[Pass]]:
        """Every registered pass class, by its ``name``."""

        def validate(obj: object, record: PluginRecord) -> tuple[str, type[Pass]]:
            return check_pass_class(obj, record.origin), obj  # type: ignore[return-value]

        return self._collect("pass", "optkit_register_passes", validate)

    @cached_property
    def sources(self) -> Registry[SourceLoader]:
        """Every registered model-source loader, by scheme."""
        return self._collect("model source", "optkit_register_sources", _validate_scheme)

    @cached_property
    def datasets(self) -> Registry[DatasetLoader]:
        """Every registered dataset loader, by scheme."""
        return self._collect("dataset source", "optkit_register_datasets", _validate_scheme)

    @cached_property
    def module_rules(self) -> Registry[ModuleRule]:
        """Every registered module rule, by the class path it describes."""
        from optkit.models.rules import ModuleRule

        def validate(rule: object, record: PluginRecord) -> tuple[str, ModuleRule]:
            if not isinstance(rule, ModuleRule):
                raise PluginError(f"{record.origin}: register(rule) takes an optkit.ModuleRule, got {rule!r}")
            return rule.class_path, rule

        return self._collect("module rule", "optkit_register_module_rules", validate)

    @cached_property
    def importances(self) -> Registry[Importance]:
        """Every registered channel-importance criterion (``prune_channels``' ``importance``), by name."""
        return self._collect("importance criterion", "optkit_register_importances", _validate_criterion)

    def importance_table(self) -> dict[str, Importance]:
        """The criteria as passes get them (``ctx.importances``): name -> criterion. A name two
        plugins register maps to a criterion that raises :class:`PluginError` naming both, so the
        error appears only in a pipeline that uses it."""
        registry = self.importances
        table = {entry.name: entry.obj for entry in registry}
        for name in registry.conflicts:
            table[name] = _conflicting(registry.conflict_message(name))
        return table

    def rule_table(self) -> ModuleRules:
        """The module rules as passes get them (``ctx.module_rules``): a class path two plugins
        describe raises :class:`PluginError` where it is looked up, naming both."""
        from optkit.models.rules import ModuleRules

        registry = self.module_rules
        conflicts = {name: registry.conflict_message(name) for name in registry.conflicts}
        origins = {entry.name: entry.plugin.description for entry in registry}
        return ModuleRules({entry.name: entry.obj for entry in registry}, conflicts, origins)

    def _collect(self, kind: str, hook_name: str, validate: Callable[..., tuple[str, object]]) -> Registry:
        # The hook is called once per plugin (pluggy's subset caller, every other plugin left out),
        # each time with its own ``register``, so that every entry knows which plugin (and so
        # which distribution) registered it, and a failure breaks that plugin only.
        registry: Registry = Registry(kind)
        plugins = list(dict.fromkeys(impl.plugin for impl in getattr(self.pm.hook, hook_name).get_hookimpls()))
        for plugin in plugins:
            record = self.pm.record_of(self.pm.get_name(plugin) or "")
            staged: list[tuple[str, object]] = []

            def register(*args: object, _record: PluginRecord = record, _staged: list = staged) -> None:
                _staged.append(validate(*args, _record))

            call = self.pm.subset_hook_caller(hook_name, remove_plugins=[p for p in plugins if p is not plugin])
            try:
                call(register=register)
            except PluginError as exc:
                self._mark_broken(record, str(exc))
                continue
            # A plugin's registration hook is third-party code: any failure marks that plugin
            # broken and names it, rather than breaking every command.
            except Exception as exc:
                log.debug("plugin %s failed in %s", record.name, hook_name, exc_info=True)
                self._mark_broken(record, f"{hook_name} raised {type(exc).__name__}: {plain_text(str(exc))}")
                continue
            # Only a hook that finished registers anything: a plugin that fails half-way is
            # broken as a whole, and none of its entries run.
            for name, obj in staged:
                registry.add(name, obj, record)
        return registry

    def _mark_broken(self, record: PluginRecord, error: str) -> None:
        earlier = self.pm.records.get(record.name)
        if earlier is not None and earlier.error:
            error = f"{earlier.error}; {error}"  # it failed in another hook too
        self.pm.records[record.name] = PluginRecord(record.name, record.value, record.distribution, record.version, error=error)

    def get_pass(self, name: str) -> type[Pass]:
        """The pass class registered as ``name``.

        Raises:
            PipelineError: unknown name, with the closest registered names and any broken plugin
                that may have provided it.
            PluginError: two plugins claim the name.
        """
        if name in self.passes:
            return self.passes.get(name).obj
        raise PipelineError(self.unknown_message("pass", name, self.passes))

    def passes_producing(self, kind: type) -> list[str]:
        """The names of the registered passes that make an artifact of ``kind`` from the module
        (``Pass.produces``, consuming none), for the fix a pipeline missing its input artifact is told."""
        return [
            entry.name
            for entry in self.passes
            if entry.obj.produces is not None and issubclass(entry.obj.produces, kind) and entry.obj.consumes is None
        ]

    def get_source(self, scheme: str) -> Registered[SourceLoader]:
        """The source loader registered for ``scheme``, with the plugin that registered it.

        Raises:
            PipelineError: unknown scheme, with the closest registered ones.
            PluginError: two plugins claim the scheme.
        """
        return self._scheme(self.sources, scheme, "model source scheme")

    def get_dataset(self, scheme: str) -> Registered[DatasetLoader]:
        """The dataset loader registered for ``scheme``, with the plugin that registered it.

        Raises:
            PipelineError: unknown scheme, with the closest registered ones.
            PluginError: two plugins claim the scheme.
        """
        return self._scheme(self.datasets, scheme, "dataset source scheme")

    def _scheme(self, registry: Registry, scheme: str, kind: str) -> Registered:
        # The message names no option: the caller knows which entry gave the scheme.
        if scheme in registry:
            return registry.get(scheme)
        raise PipelineError(self.unknown_message(kind, scheme, registry))

    def load_data(self, spec: DataSpec, base_dir: Path, *, seed: int = 0) -> PipelineData:
        """Load the data sets of a ``data:`` section through the loaders registered for their
        schemes (see :func:`optkit.data.loaders.build_data`)."""
        from optkit.data.loaders import build_data

        def lookup(scheme: str) -> tuple[DatasetLoader, str]:
            entry = self.get_dataset(scheme)
            return entry.obj, entry.plugin.description

        return build_data(spec, lookup, base_dir, seed=seed)

    def load_model(self, spec: ModelSpec, base_dir: Path, *, with_inputs: bool = False) -> Any:
        """Build the model ``spec`` describes through the source registered for its scheme
        (see :func:`optkit.models.loading.load_model`): ``(model, details)``, with ``with_inputs``
        ``(model, details, example_inputs or None)``."""
        from optkit.models.loading import load_model

        try:
            entry = self.get_source(spec.scheme)
        except PipelineError as exc:
            raise PipelineError(f"model.source: {exc.message}") from None
        return load_model(spec, entry.obj, base_dir, plugin=entry.plugin.description, with_inputs=with_inputs)

    def unknown_message(self, kind: str, name: str, registry: Registry) -> str:
        message = f"unknown {kind} {name!r}"
        close = registry.closest(name)
        if close:
            message += f"; did you mean {' or '.join(repr(c) for c in close)}?"
        else:
            message += f"; registered: {', '.join(registry.names()) or 'none'}"
        suspects = [r for r in self.broken if r.name == name] or self.broken
        for record in suspects:
            message += (
                f"\n  plugin {record.name!r} from {record.origin} failed to load and may provide it: "
                f"{record.error}\n  fix or reinstall it, or disable it with {record.disable_hint}"
            )
        return message

    def check_plugins(self) -> None:
        """Raise when any plugin failed to load or register (strict plugin mode).

        Raises:
            PluginError: naming every broken plugin, its error and how to disable it.
        """
        broken = self.broken
        if broken:
            lines = [f"{len(broken)} plugin(s) failed to load, and strict plugin mode is on:"]
            lines += [f"  plugin {r.name!r} from {r.origin}: {r.error}; disable it with {r.disable_hint}" for r in broken]
            raise PluginError("\n".join(lines))

    def stage_started(self, stage: str, index: int, run: RunInfo) -> None:
        """Call ``optkit_stage_started`` (observers that raise are logged and skipped: :mod:`optkit.host.hookcalls`)."""
        self.pm.hook.optkit_stage_started(stage=stage, index=index, run=run)

    def stage_progress(self, stage: str, index: int, progress: Progress, run: RunInfo) -> None:
        """Call ``optkit_stage_progress``."""
        self.pm.hook.optkit_stage_progress(stage=stage, index=index, progress=progress, run=run)

    def stage_finished(self, result: StageResult, run: RunInfo) -> None:
        """Call ``optkit_stage_finished``."""
        self.pm.hook.optkit_stage_finished(result=result, run=run)
