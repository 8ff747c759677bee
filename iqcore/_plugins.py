"""Plugin discovery: lazy, run once, thread-safe, and a broken plugin never takes the others down.

Plugins are the modules named by entry points in the ``iqcore`` group. Environment variables:

* ``IQCORE_BLOCK_PLUGINS``: comma-separated entry-point or distribution names never loaded.
* ``IQCORE_STRICT_PLUGINS=1``: a plugin that fails to load, registers garbage or a duplicate raises
  :class:`PluginError` instead of warning (for CI).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import os
import threading
import warnings

import pluggy

from iqcore import hookspecs

GROUP = "iqcore"
BUILTIN = "iqcore"  # the plugin name of iqcore's own hook implementations (Keras layers, TFLite export)
BLOCK_ENV = "IQCORE_BLOCK_PLUGINS"
STRICT_ENV = "IQCORE_STRICT_PLUGINS"


class PluginError(RuntimeError):
    """A plugin failed in strict mode (``IQCORE_STRICT_PLUGINS=1``)."""


class PluginWarning(UserWarning):
    """A plugin failed to load or registered something unusable; the other plugins still work."""


@dataclasses.dataclass(frozen=True)
class Distribution:
    """Where a plugin comes from."""

    plugin: str
    name: str
    version: str


@dataclasses.dataclass(frozen=True)
class PluginFailure:
    """A plugin that was skipped, and why."""

    plugin: str
    distribution: str
    error: str


_lock = threading.RLock()
_pm: pluggy.PluginManager | None = None
_distributions: dict[str, Distribution] = {}
_failures: list[PluginFailure] = []


def strict() -> bool:
    return os.environ.get(STRICT_ENV, "").strip().lower() in {"1", "true", "yes"}


def report_failure(plugin: str, distribution: str, error: str) -> None:
    """Record a plugin failure: a :class:`PluginWarning`, or a :class:`PluginError` in strict mode."""
    with _lock:
        _failures.append(PluginFailure(plugin, distribution, error))
    message = f"iqcore plugin {plugin!r} (distribution {distribution}) skipped: {error}"
    if strict():
        raise PluginError(message)
    warnings.warn(message, PluginWarning, stacklevel=3)


def _blocked() -> set[str]:
    return {name.strip() for name in os.environ.get(BLOCK_ENV, "").split(",") if name.strip()}


def _load_entry_point(pm: pluggy.PluginManager, ep: importlib.metadata.EntryPoint) -> None:
    dist = ep.dist.name if ep.dist else "unknown"
    version = ep.dist.version if ep.dist else "unknown"
    if pm.has_plugin(ep.name) or ep.name in _distributions:
        other = _distributions.get(ep.name)
        report_failure(ep.name, dist, f"the entry point name is already used by {other.name if other else 'core'}")
        return
    try:
        plugin = ep.load()
    except Exception as e:  # noqa: BLE001 - any import error of a third-party plugin must be survivable
        report_failure(ep.name, dist, f"import failed: {type(e).__name__}: {e}")
        return
    try:
        pm.register(plugin, name=ep.name)
        pm.check_pending()
    except pluggy.PluginValidationError as e:
        if pm.is_registered(plugin):
            pm.unregister(plugin)
        report_failure(ep.name, dist, f"invalid hook implementation: {e}")
        return
    _distributions[ep.name] = Distribution(ep.name, dist, version)


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def get_plugin_manager() -> pluggy.PluginManager:
    """The plugin manager, loading every ``iqcore`` entry point on first call (once per process)."""
    global _pm
    if _pm is not None:
        return _pm
    with _lock:
        if _pm is None:
            pm = pluggy.PluginManager(GROUP)
            pm.add_hookspecs(hookspecs)
            pm.register(importlib.import_module("iqcore._builtins"), name=BUILTIN)
            _distributions[BUILTIN] = Distribution(BUILTIN, "iqcore", _version("iqcore"))
            blocked = _blocked()
            for ep in sorted(importlib.metadata.entry_points(group=GROUP), key=lambda e: e.name):
                if ep.name in blocked or (ep.dist is not None and ep.dist.name in blocked):
                    pm.set_blocked(ep.name)
                    continue
                _load_entry_point(pm, ep)
            _pm = pm
    return _pm


def distribution(plugin: str) -> Distribution:
    """The distribution that provides ``plugin`` (a plugin registered by hand reports ``unknown``)."""
    return _distributions.get(plugin, Distribution(plugin, "unknown", "unknown"))


def failures() -> list[PluginFailure]:
    """Plugins that failed to load or register, in the order they failed."""
    get_plugin_manager()
    with _lock:
        return list(_failures)


def reset() -> None:
    """Forget every loaded plugin so the next call discovers them again (for tests)."""
    global _pm
    with _lock:
        _pm = None
        _distributions.clear()
        _failures.clear()
