"""The plugin manager: hook specs, then the ``optkit`` entry-point group, then ``check_pending()``.

A plugin that fails to load is recorded with its distribution, entry point and error, and
skipped: commands that do not need it keep working. ``OPTKIT_DISABLE_PLUGINS=name,...``
(entry-point names, distribution names, or ``distribution:entry-point``) keeps plugins from
loading at all.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

import pluggy

from optkit.host import hookspecs
from optkit.host.hookcalls import check_registration_impl, guard_observer, is_registration_hook

__all__ = [
    "ENTRY_POINT_GROUP",
    "DISABLE_ENV",
    "PluginRecord",
    "OptkitPluginManager",
    "get_plugin_manager",
    "disabled_from_env",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "optkit"
DISABLE_ENV = "OPTKIT_DISABLE_PLUGINS"


@dataclass(frozen=True)
class PluginRecord:
    """What is known about one plugin: where it comes from and whether it loaded.

    Attributes:
        name: the name it is registered under (the entry point's name).
        value: the entry point's target, e.g. ``optkit_plugins.fuse_bn``.
        distribution: the installed distribution that declares it (``None`` for in-process plugins).
        version: that distribution's version.
        error: why it failed to load, or ``None`` when it loaded.
        disabled: it was named in ``OPTKIT_DISABLE_PLUGINS``.
    """

    name: str
    value: str
    distribution: str | None = None
    version: str | None = None
    error: str | None = None
    disabled: bool = False

    @property
    def origin(self) -> str:
        """``distribution version`` for people, or the plugin's name when it has no distribution."""
        if self.distribution is None:
            return self.name
        return f"{self.distribution} {self.version}"

    @property
    def description(self) -> str:
        """``plugin 'name' (distribution version)`` for messages that blame the plugin."""
        return f"plugin {self.name!r}" + (f" ({self.origin})" if self.distribution is not None else "")

    @property
    def disable_hint(self) -> str:
        return f"{DISABLE_ENV}={self.name}"

    @property
    def disable_key(self) -> str:
        """``distribution:entry-point``: disables this plugin only, never another distribution's of
        the same entry-point name (the plugin's name for in-process plugins)."""
        if self.distribution is None:
            return self.name
        entry_point = self.name.removeprefix(f"{self.distribution}:")
        return f"{self.distribution}:{entry_point}"


class OptkitPluginManager(pluggy.PluginManager):
    """A :class:`pluggy.PluginManager` that remembers where each plugin came from."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}

    @property
    def broken(self) -> list[PluginRecord]:
        """Plugins that failed to load, in load order."""
        return [r for r in self.records.values() if r.error is not None]

    def record_of(self, plugin_name: str) -> PluginRecord:
        """The record for a registered plugin (a bare record for in-process plugins)."""
        return self.records.get(plugin_name) or PluginRecord(name=plugin_name, value=plugin_name)

    def register(self, plugin: object, name: str | None = None) -> str | None:
        """Register ``plugin`` as pluggy does, then refuse a wrapper on a registration hook and guard
        its observers (see :mod:`optkit.host.hookcalls`).

        Raises:
            pluggy.PluginValidationError: a registration hook is a wrapper (the plugin stays registered,
                as after pluggy's own validation errors: :meth:`add_plugin` unregisters it).
        """
        plugin_name = super().register(plugin, name)
        if plugin_name is None:  # blocked
            return None
        for hook_caller in self.get_hookcallers(plugin) or []:
            for impl in hook_caller.get_hookimpls():
                if impl.plugin is not plugin:
                    continue
                if is_registration_hook(hook_caller.name):
                    check_registration_impl(impl, hook_caller.name)
                else:
                    guard_observer(impl, hook_caller.name)
        return plugin_name

    def add_plugin(self, plugin: object, record: PluginRecord) -> None:
        """Register ``plugin``; a plugin whose hooks do not fit the specs is recorded as broken."""
        if self.is_registered(plugin):
            # The same module reached twice (two entry points, or an installed plugin also passed
            # in-process): its hooks already run once; registering again would call them twice.
            log.debug("plugin %s is already registered as %s", record.name, self.get_name(plugin))
            return
        try:
            self.register(plugin, name=record.name)
            self.check_pending()
        except pluggy.PluginValidationError as exc:
            self.unregister(name=record.name)
            self.records[record.name] = _with_error(record, f"invalid hook implementation: {exc}")
            return
        self.records[record.name] = record


def _with_error(record: PluginRecord, error: str) -> PluginRecord:
    return PluginRecord(record.name, record.value, record.distribution, record.version, error=error)


def disabled_from_env() -> set[str]:
    """Plugin names listed in ``OPTKIT_DISABLE_PLUGINS`` (comma-separated)."""
    return {name.strip() for name in os.environ.get(DISABLE_ENV, "").split(",") if name.strip()}


def get_plugin_manager(disabled: Iterable[str] | None = None, extra_plugins: Iterable[object] = ()) -> OptkitPluginManager:
    """Build a fresh plugin manager: specs, entry points (minus ``disabled``), extras, checks.

    Args:
        disabled: entry-point or distribution names to skip; defaults to ``OPTKIT_DISABLE_PLUGINS``.
        extra_plugins: objects or modules to register in-process (tests, embedding applications).

    Returns:
        A manager no other caller shares; loading it imports each plugin module once.
    """
    pm = OptkitPluginManager()
    skip = disabled_from_env() if disabled is None else set(disabled)
    for dist in importlib.metadata.distributions():
        dist_name = dist.metadata["Name"]
        for ep in dist.entry_points:
            if ep.group != ENTRY_POINT_GROUP:
                continue
            record = PluginRecord(ep.name, ep.value, dist_name, dist.version)
            existing = pm.records.get(ep.name)
            if existing is not None:
                if existing.distribution == dist_name:
                    continue  # the same distribution seen twice on sys.path
                record = PluginRecord(f"{dist_name}:{ep.name}", ep.value, dist_name, dist.version)
            if skip & {ep.name, record.name, dist_name, f"{dist_name}:{ep.name}"}:
                pm.records[record.name] = PluginRecord(record.name, record.value, dist_name, dist.version, disabled=True)
                continue
            try:
                plugin = ep.load()
            # A plugin's import can fail in any way (ImportError, SyntaxError, a raise at import);
            # it is recorded by name and skipped so that everything else keeps working.
            except Exception as exc:
                log.debug("plugin %s failed to load", record.name, exc_info=True)
                pm.records[record.name] = _with_error(record, f"{type(exc).__name__}: {exc}")
                continue
            pm.add_plugin(plugin, record)
    for plugin in extra_plugins:
        name = getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{id(plugin)}"
        pm.add_plugin(plugin, PluginRecord(name=name, value=name))
    pm.check_pending()
    return pm
