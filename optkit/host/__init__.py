"""The plugin host: hook specifications, the plugin manager, typed registries and the
:class:`Host` facade through which the rest of optkit talks to plugins.

Plugins need only :data:`hookimpl` (also exported as ``optkit.hookimpl``).
"""

from optkit.host.facade import Host
from optkit.host.hookspecs import PROJECT, hookimpl, hookspec
from optkit.host.manager import (
    DISABLE_ENV,
    ENTRY_POINT_GROUP,
    OptkitPluginManager,
    PluginRecord,
    disabled_from_env,
    get_plugin_manager,
)
from optkit.host.registry import Registered, Registry

__all__ = [
    "PROJECT",
    "hookspec",
    "hookimpl",
    "Host",
    "OptkitPluginManager",
    "PluginRecord",
    "ENTRY_POINT_GROUP",
    "DISABLE_ENV",
    "disabled_from_env",
    "get_plugin_manager",
    "Registered",
    "Registry",
]
