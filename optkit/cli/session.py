"""One command's session: the plugins, loaded once, under the one broken-plugin policy every command follows.

The policy: a plugin that failed to load or to register is named on stderr with its error and
how to disable it, and the command goes on without it; in strict plugin mode (``--strict-plugins``
or ``OPTKIT_STRICT_PLUGINS=1``) the command stops with exit code 2 before doing anything, naming
every broken plugin.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import click

from optkit.errors import plain_text

if TYPE_CHECKING:
    from optkit.host.facade import Host

__all__ = ["STRICT_PLUGINS_ENV", "CliSession", "session"]

#: ``OPTKIT_STRICT_PLUGINS=1`` is ``--strict-plugins``: a plugin that fails to load is an error.
STRICT_PLUGINS_ENV = "OPTKIT_STRICT_PLUGINS"


class CliSession:
    """What the commands of one ``optkit`` invocation share (``ctx.obj`` of the root context)."""

    def __init__(self) -> None:
        self._host: Host | None = None

    @property
    def strict_plugins(self) -> bool:
        """``--strict-plugins`` (before or after the command name) or ``OPTKIT_STRICT_PLUGINS``."""
        flag = bool(click.get_current_context().find_root().meta.get("optkit.strict_plugins"))
        return flag or os.environ.get(STRICT_PLUGINS_ENV, "") not in ("", "0")

    @property
    def host(self) -> Host:
        """The plugins, loaded on first use, with the broken-plugin policy applied.

        Raises:
            optkit.errors.PluginError: a plugin is broken and strict plugin mode is on.
        """
        if self._host is None:
            from optkit.host.facade import Host

            host = Host()
            if self.strict_plugins:
                host.check_plugins()
            for record in host.broken:
                click.secho(
                    f"warning: plugin {record.name!r} from {record.origin} failed to load: {plain_text(record.error or '')}; "
                    f"disable it with {record.disable_hint}, or fail on it with --strict-plugins",
                    fg="yellow",
                    err=True,
                )
            self._host = host
        return self._host


def session() -> CliSession:
    """The session of the running command."""
    return click.get_current_context().find_root().ensure_object(CliSession)
