"""The seed library's lookup names, for code that switches by changing its imports::

    from iqcore.seed_names import QuantizationMethod, QuantizationTarget, get_inferable_quantizer_class

    cls = get_inferable_quantizer_class(QuantizationTarget.Weights, QuantizationMethod.POWER_OF_TWO,
                                        quantizer_base_class=iqcore.InferableQuantizer)

The classes come from the plugin registry (:func:`iqcore._registry.get_class`), not from scanning subclasses,
so a plugin's method is found by its name as well (``get_inferable_quantizer_class("weights", "lut", ...)``).
"""

from __future__ import annotations

import enum

from iqcore import _registry as registry
from iqcore._quantizer import InferableQuantizer

__all__ = ["BaseKerasInferableQuantizer", "QuantizationMethod", "QuantizationTarget",
           "get_inferable_quantizer_class"]

#: The seed's base class of its Keras inferable quantizers: every iqcore quantizer derives from it.
BaseKerasInferableQuantizer = InferableQuantizer


class QuantizationTarget(enum.Enum):
    """What a quantizer quantizes (the seed's enum); the value is iqcore's target name."""

    Weights = "weights"
    Activation = "activation"


class QuantizationMethod(enum.Enum):
    """The seed's quantization methods; the value is the iqcore method name (the LUT ones need a plugin that
    registers a method of that name)."""

    POWER_OF_TWO = "pot"
    SYMMETRIC = "symmetric"
    UNIFORM = "uniform"
    LUT_POT_QUANTIZER = "lut_pot"
    LUT_SYM_QUANTIZER = "lut_sym"


def get_inferable_quantizer_class(quant_target, quant_method, quantizer_base_class: type = InferableQuantizer
                                  ) -> type[InferableQuantizer]:
    """The registered quantizer class for a target and a method (the seed's lookup function).

    Args:
        quant_target: A :class:`QuantizationTarget` or a target name (``"weights"``, ``"activation"``).
        quant_method: A :class:`QuantizationMethod` or a method name (``"pot"``, or a plugin's).
        quantizer_base_class: The class the result must derive from.

    Raises:
        ValueError: For an unknown target or method (the message lists the installed ones), or a class that
            does not derive from ``quantizer_base_class``.
        TypeError: For a target or method that is neither an enum member nor a str.
    """
    target, method = (v.value if isinstance(v, enum.Enum) else v for v in (quant_target, quant_method))
    for name, value in (("quant_target", target), ("quant_method", method)):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a {name[6:].capitalize()} enum member or a str; got {value!r}")
    cls = registry.get_class(method, target.lower())
    if not isinstance(quantizer_base_class, type) or not issubclass(cls, quantizer_base_class):
        raise ValueError(f"quantizer_base_class is {quantizer_base_class!r}; the class for ({method!r}, {target!r}) "
                         f"is {cls.__name__}, which does not derive from it")
    return cls
