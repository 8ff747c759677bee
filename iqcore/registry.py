"""The registry behind :func:`get_quantizer`: which plugin provides each (method, target)."""

from __future__ import annotations

import dataclasses
import re
import threading

from iqcore import plugins
from iqcore.quantizer import TARGETS, InferableQuantizer

_METHOD = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class QuantizerInfo:
    """One registered quantizer class and the distribution that provides it."""

    method: str
    target: str
    cls: type[InferableQuantizer]
    plugin: str
    distribution: str
    version: str


_lock = threading.RLock()
_entries: dict[tuple[str, str], QuantizerInfo] | None = None
_conflicts: dict[tuple[str, str], list[QuantizerInfo]] = {}


def _check_class(cls) -> str | None:
    """Why ``cls`` cannot be registered, or None."""
    if not isinstance(cls, type) or not issubclass(cls, InferableQuantizer):
        return f"register() was given {cls!r}; allowed: a subclass of iqcore.InferableQuantizer"
    if getattr(cls, "__abstractmethods__", None):
        return f"{cls.__name__} is abstract (missing {sorted(cls.__abstractmethods__)})"
    if not isinstance(cls.method, str) or not _METHOD.match(cls.method):
        return f"{cls.__name__}.method is {cls.method!r}; allowed: a lower-case name like 'symmetric'"
    if cls.target not in TARGETS:
        return f"{cls.__name__}.target is {cls.target!r}; allowed: {list(TARGETS)}"
    return None


def _build() -> dict[tuple[str, str], QuantizerInfo]:
    pm = plugins.get_plugin_manager()
    found: dict[tuple[str, str], list[QuantizerInfo]] = {}
    for impl in pm.hook.register_quantizers.get_hookimpls():
        dist = plugins.distribution(impl.plugin_name)
        mine: list[QuantizerInfo] = []

        def register(cls, _dist=dist, _mine=mine):
            problem = _check_class(cls)
            if problem:
                raise TypeError(problem)
            _mine.append(QuantizerInfo(cls.method, cls.target, cls, _dist.plugin, _dist.name, _dist.version))

        try:
            impl.function(register=register)
        except Exception as e:  # noqa: BLE001 - a plugin's bad hook must not break the others
            plugins.report_failure(impl.plugin_name, dist.name, f"register_quantizers failed: {type(e).__name__}: {e}")
            continue
        for info in mine:
            found.setdefault((info.method, info.target), []).append(info)
    entries = {}
    for key, infos in found.items():
        providers = {(i.plugin, i.distribution) for i in infos}
        if len(providers) > 1:
            _conflicts[key] = infos
            names = ", ".join(sorted(f"{p} ({d})" for p, d in providers))
            plugins.report_failure(infos[-1].plugin, infos[-1].distribution,
                                   f"({key[0]!r}, {key[1]!r}) is registered by several plugins: {names}")
        else:
            entries[key] = infos[-1]
    return entries


def entries() -> dict[tuple[str, str], QuantizerInfo]:
    global _entries
    if _entries is None:
        with _lock:
            if _entries is None:
                _conflicts.clear()
                _entries = _build()
    return _entries


def list_quantizers() -> list[QuantizerInfo]:
    """Every registered (method, target), sorted, with its class and providing distribution."""
    return [entries()[key] for key in sorted(entries())]


def _available() -> str:
    rows = [f"{i.method}/{i.target} ({i.distribution})" for i in list_quantizers()]
    return ", ".join(rows) if rows else "none (install a plugin such as iq-symmetric)"


def get_class(method: str, target: str = "weights") -> type[InferableQuantizer]:
    """The class registered for (method, target).

    Raises:
        ValueError: For an unknown target or method, or one registered by several plugins.
    """
    if target not in TARGETS:
        raise ValueError(f"target is {target!r}; allowed: {list(TARGETS)}")
    if not isinstance(method, str):
        raise TypeError(f"method must be a str; got {method!r} ({type(method).__name__})")
    key = (method.lower(), target)
    info = entries().get(key)
    if info is not None:
        return info.cls
    if key in _conflicts:
        names = ", ".join(f"{i.plugin} ({i.distribution})" for i in _conflicts[key])
        raise ValueError(
            f"method {method!r} for target {target!r} is provided by several plugins: {names}; "
            f"block all but one with {plugins.BLOCK_ENV}"
        )
    raise ValueError(f"no quantizer for method {method!r}, target {target!r}; available: {_available()}")


def get_quantizer(method: str, target: str = "weights", **params) -> InferableQuantizer:
    """Build the quantizer registered for (method, target) with ``params``.

    Example:
        >>> q = get_quantizer("symmetric", target="weights", num_bits=8, threshold=[1.0])

    Raises:
        ValueError: For an unknown method or target (the message lists what is available) or bad params.
        TypeError: For parameters of the wrong type.
    """
    return get_class(method, target)(**params)


def class_by_name(name: str) -> type:
    """A registered class by its class name (``WeightsSymmetricInferableQuantizer``)."""
    for info in entries().values():
        if info.cls.__name__ == name:
            return info.cls
    raise AttributeError(name)


def reset() -> None:
    """Forget the registry and the plugins (for tests)."""
    global _entries
    with _lock:
        _entries = None
        _conflicts.clear()
        plugins.reset()
