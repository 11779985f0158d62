"""How the host's two kinds of hooks are called through pluggy.

- **Registration hooks** (``optkit_register_*``) are called once per plugin, through
  ``pm.subset_hook_caller``, with a ``register`` bound to that plugin, so that every entry (and
  every failure) is attributed to the plugin that registered it. A wrapper there would only wrap
  its own plugin's registration, so a plugin that declares one is refused at load, by name.
- **Observer hooks** (every other hook: ``optkit_stage_started``, ...) are called once, through
  ``pm.hook``, so wrappers (``wrapper=True``, old-style ``hookwrapper=True``), tracing and
  monitoring work. An observer is third-party code that must not stop a run nor keep the other
  observers from being called: pluggy stops a call at the first implementation that raises, so
  each observer implementation is guarded when its plugin is registered (:func:`guard_observer`):
  one that raises is logged, naming its plugin, and skipped.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Generator
from typing import Any

import pluggy

from optkit.errors import plain_text

__all__ = ["REGISTRATION_PREFIX", "check_registration_impl", "guard_observer", "is_registration_hook"]

log = logging.getLogger(__name__)

#: Hooks whose name starts with this add entries to a registry, once per plugin.
REGISTRATION_PREFIX = "optkit_register_"


def is_registration_hook(hook_name: str) -> bool:
    return hook_name.startswith(REGISTRATION_PREFIX)


def check_registration_impl(impl: pluggy.HookImpl, hook_name: str) -> None:
    """Refuse a wrapper on a registration hook, naming the plugin.

    Raises:
        pluggy.PluginValidationError: ``impl`` is a wrapper.
    """
    if impl.wrapper or impl.hookwrapper:
        raise pluggy.PluginValidationError(
            impl.plugin,
            f"plugin {impl.plugin_name!r}: {hook_name} is a wrapper, but registration hooks are called once per plugin "
            "(a wrapper would only wrap its own registration); implement it with a plain @hookimpl",
        )


def _skip(impl: pluggy.HookImpl, hook_name: str, exc: BaseException) -> None:
    log.warning(
        "plugin %r raised in %s and was skipped: %s: %s",
        impl.plugin_name,
        hook_name,
        type(exc).__name__,
        plain_text(str(exc)),
        exc_info=log.isEnabledFor(logging.DEBUG),
    )


def guard_observer(impl: pluggy.HookImpl, hook_name: str) -> None:
    """Make ``impl`` (an observer's implementation) log and skip its own failure instead of raising.

    A plain implementation that raises returns ``None``; a wrapper that raises before or after
    its ``yield`` lets the call go on as if it were not there. Ctrl-C and other
    ``BaseException`` still stop the call.
    """
    function = impl.function
    if impl.wrapper or impl.hookwrapper:
        guarded: Callable[..., Any] = _guarded_wrapper(function, impl, hook_name)
    else:

        @functools.wraps(function)
        def guarded(*args: Any) -> Any:
            try:
                return function(*args)
            # An observer is third-party code: its failure must not lose the run.
            except Exception as exc:  # noqa: BLE001
                _skip(impl, hook_name, exc)
                return None

    # pluggy calls ``impl.function`` with the arguments ``impl.argnames`` names (read from the
    # plugin's own function when it was registered); the guard takes them positionally.
    impl.function = guarded  # type: ignore[misc]


def _guarded_wrapper(function: Callable[..., Any], impl: pluggy.HookImpl, hook_name: str) -> Callable[..., Any]:
    """A generator function that runs the wrapper ``function`` around the call, skipping it where it raises."""

    @functools.wraps(function)
    def guarded(*args: Any) -> Generator[None, Any, Any]:
        inner = function(*args)
        try:
            next(inner)
        # Before its yield: the wrapper is skipped and the observers inside run without it.
        except Exception as exc:  # noqa: BLE001 - StopIteration ("did not yield") included
            _skip(impl, hook_name, exc)
            return (yield)
        try:
            result = yield
        except BaseException:  # the call was interrupted (observers themselves are guarded): let the wrapper clean up
            inner.close()
            raise
        try:
            inner.send(result)
        except StopIteration as stop:
            return stop.value if impl.wrapper else None
        # After its yield: the call's result stands as the observers inside made it.
        except Exception as exc:  # noqa: BLE001
            _skip(impl, hook_name, exc)
            return result
        inner.close()
        _skip(impl, hook_name, RuntimeError("the wrapper yielded more than once"))
        return result

    return guarded
