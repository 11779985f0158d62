"""A typed registry of named things (passes, model sources) that remembers who registered each."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from optkit.errors import PluginError, closest
from optkit.host.manager import DISABLE_ENV, PluginRecord

__all__ = ["Registered", "Registry"]

T = TypeVar("T")


@dataclass(frozen=True)
class Registered(Generic[T]):
    """One registry entry: the object and the plugin that registered it."""

    name: str
    obj: T
    plugin: PluginRecord


class Registry(Generic[T]):
    """Names to objects, with conflicts kept (not overwritten) and reported on use.

    Args:
        kind: what is registered, for messages ("pass", "model source").
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Registered[T]] = {}
        self.conflicts: dict[str, list[Registered[T]]] = {}

    def add(self, name: str, obj: T, plugin: PluginRecord) -> None:
        """Register ``obj`` as ``name``; a second, different object under that name is a conflict."""
        entry = Registered(name, obj, plugin)
        if name in self._entries and self._entries[name].obj is obj:
            return  # the very same object again (e.g. a class also passed in-process): no conflict
        if name in self.conflicts:
            self.conflicts[name].append(entry)
        elif name in self._entries:
            self.conflicts[name] = [self._entries.pop(name), entry]
        else:
            self._entries[name] = entry

    def get(self, name: str) -> Registered[T]:
        """The entry for ``name``; a name two plugins claim raises :class:`PluginError`."""
        if name in self.conflicts:
            raise PluginError(self.conflict_message(name))
        return self._entries[name]

    def conflict_message(self, name: str) -> str:
        """Who claims ``name``, and for each claimant the setting that drops exactly its plugin
        (``distribution:entry-point``, never a whole distribution such as optkit's own) with
        what else that plugin registered."""
        claims = self.conflicts[name]
        who = " and ".join(f"{e.plugin.origin} (plugin {e.plugin.name!r})" for e in claims)
        fixes = []
        for entry in claims:
            also = sorted(self._names_of(entry.plugin) - {name})
            cost = f"; it also registers {', '.join(repr(n) for n in also)}" if also else ""
            owner = entry.plugin.distribution or "this process"
            fixes.append(f"{DISABLE_ENV}={entry.plugin.disable_key} (only that plugin of {owner}{cost})")
        return (
            f"the {self.kind} {name!r} is registered by more than one plugin: {who}; "
            f"disable one of them: {', or '.join(fixes)}; or uninstall one"
        )

    def _names_of(self, plugin: PluginRecord) -> set[str]:
        """Every name ``plugin`` registered here, conflicting ones included."""
        names = {e.name for e in self._entries.values() if e.plugin.name == plugin.name}
        return names | {n for n, claims in self.conflicts.items() if any(e.plugin.name == plugin.name for e in claims)}

    def closest(self, name: str, n: int = 3) -> list[str]:
        """Registered names that look like ``name`` (for "did you mean")."""
        return closest(name, self.names(), n=n, cutoff=0.5)

    def names(self) -> list[str]:
        return sorted([*self._entries, *self.conflicts])

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self.conflicts

    def __iter__(self) -> Iterator[Registered[T]]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def __len__(self) -> int:
        return len(self._entries) + len(self.conflicts)
