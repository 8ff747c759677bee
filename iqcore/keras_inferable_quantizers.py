"""The seed's six class names, resolved from the registered plugins::

    import iqcore as qi
    q = qi.keras_inferable_quantizers.WeightsSymmetricInferableQuantizer(num_bits=8, threshold=[1.0])

Any class a plugin registers is reachable here by its class name.
"""

from iqcore import _registry as registry


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    try:
        return registry.class_by_name(name)
    except AttributeError:
        names = sorted(i.cls.__name__ for i in registry.list_quantizers())
        raise AttributeError(
            f"no registered quantizer class named {name!r}; available: {names or 'none (no plugin installed)'}"
        ) from None


def __dir__():
    return sorted(i.cls.__name__ for i in registry.list_quantizers())
