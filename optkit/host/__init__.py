"""The plugin host: hook specifications, the plugin manager, typed registries and the
:class:`~optkit.host.facade.Host` facade through which the rest of optkit talks to plugins.

Internal: plugins need only ``optkit.hookimpl``.
"""

__all__: list[str] = []
