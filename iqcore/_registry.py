"""The registries the hooks fill: which plugin provides each (method, target), Keras layer type, exporter."""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Callable
from typing import Any

from iqcore import _plugins as plugins
from iqcore._quantizer import TARGETS, InferableQuantizer

_METHOD = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class QuantizableWeight:
    """A weight of a Keras layer type that ``quantize_model`` quantizes (see the ``register_layers`` hook).

    Attributes:
        name: The weight's name (``"kernel"``; ``kernel`` and ``depthwise_kernel`` name the same weight).
        channel_axis: The axis with one quantizer channel each (the output channels), negative from the end.
        input_axis: The axis of the layer's input channels, for bias correction; None when the output shift
            cannot be derived from the input's per-channel mean (then the layer gets none).
    """

    name: str
    channel_axis: int = -1
    input_axis: int | None = None


@dataclasses.dataclass(frozen=True)
class Exporter:
    """A deployment format (see the ``register_exporters`` hook).

    Attributes:
        name: The format's name (``"tflite"``), lower case.
        export: ``export(model, path)`` writes the quantized Keras model to ``path``; raises ``ValueError``
            naming the layer that cannot be exported and why.
        suffix: The usual file suffix (``".tflite"``).
        description: One line for ``iqcore export --list``.
    """

    name: str
    export: Callable[..., Any]
    suffix: str = ""
    description: str = ""


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """A registered Keras layer type and the plugin that registered it."""

    layer_class: type
    weights: tuple[QuantizableWeight, ...]
    plugin: str
    distribution: str


@dataclasses.dataclass(frozen=True)
class ExporterInfo:
    """A registered exporter and the distribution that provides it."""

    exporter: Exporter
    plugin: str
    distribution: str


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
_cache: dict[str, Any] = {}  # each registry, built from the hooks on first use
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
    _conflicts.clear()
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


def _cached(key: str, build):
    """``build()``'s result, built once (thread-safe) and kept until :func:`refresh`."""
    value = _cache.get(key)
    if value is None:
        with _lock:
            value = _cache.get(key)
            if value is None:
                value = _cache[key] = build()
    return value


def entries() -> dict[tuple[str, str], QuantizerInfo]:
    return _cached("quantizers", _build)


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


def _collect(hook: str, make_register) -> None:
    """Call every implementation of ``hook`` with ``register=make_register(distribution)``; a plugin whose hook
    raises is reported (a warning, or an error in strict mode) and the others still count."""
    pm = plugins.get_plugin_manager()
    for impl in getattr(pm.hook, hook).get_hookimpls():  # registration order: iqcore's own first
        dist = plugins.distribution(impl.plugin_name)
        try:
            impl.function(register=make_register(dist))
        except Exception as e:  # noqa: BLE001 - a plugin's bad hook must not break the others
            plugins.report_failure(impl.plugin_name, dist.name, f"{hook} failed: {type(e).__name__}: {e}")


def _build_layers() -> dict[type, LayerInfo]:
    found: dict[type, LayerInfo] = {}

    def make_register(dist):
        def register(layer_class, *weights):
            if not isinstance(layer_class, type):
                raise TypeError(f"register() was given {layer_class!r}; allowed: a Keras layer class")
            if not weights or not all(isinstance(w, QuantizableWeight) for w in weights):
                raise TypeError(f"register({layer_class.__name__}, ...) needs one or more "
                                f"iqcore.plugin.QuantizableWeight; got {weights!r}")
            found[layer_class] = LayerInfo(layer_class, tuple(weights), dist.plugin, dist.name)
        return register

    _collect("register_layers", make_register)
    return found


def layers() -> dict[type, LayerInfo]:
    """Every registered Keras layer type (plugins' entries replace iqcore's own for the same class)."""
    return _cached("layers", _build_layers)


def layer_info(layer) -> LayerInfo | None:
    """The registered entry for ``layer``'s class or its nearest registered base class, or None."""
    table = layers()
    for cls in type(layer).__mro__:
        if cls in table:
            return table[cls]
    return None


def _build_exporters() -> dict[str, ExporterInfo]:
    found: dict[str, ExporterInfo] = {}

    def make_register(dist):
        def register(exporter):
            if not isinstance(exporter, Exporter):
                raise TypeError(f"register() was given {exporter!r}; allowed: an iqcore.plugin.Exporter")
            if not isinstance(exporter.name, str) or not _METHOD.match(exporter.name) or not callable(exporter.export):
                raise TypeError(f"exporter {exporter.name!r}: allowed: a lower-case name and a callable export")
            if exporter.name in found:
                other = found[exporter.name]
                raise ValueError(f"exporter {exporter.name!r} is already registered by {other.plugin} "
                                 f"({other.distribution})")
            found[exporter.name] = ExporterInfo(exporter, dist.plugin, dist.name)
        return register

    _collect("register_exporters", make_register)
    return found


def exporters() -> dict[str, ExporterInfo]:
    """Every registered exporter by format name."""
    return _cached("exporters", _build_exporters)


def get_exporter(name: str) -> Exporter:
    """The exporter registered as ``name``.

    Raises:
        ValueError: For an unknown format (the message lists the installed ones).
    """
    found = exporters()
    if name not in found:
        raise ValueError(f"format is {name!r}; allowed: {', '.join(sorted(found)) or 'none installed'}")
    return found[name].exporter


def refresh() -> None:
    """Rebuild the registries from the hooks on next use, keeping the loaded plugins (after registering a
    plugin object by hand, as tests do)."""
    with _lock:
        _cache.clear()
        _conflicts.clear()


def reset() -> None:
    """Forget the registries and the plugins (for tests)."""
    with _lock:
        refresh()
        plugins.reset()
