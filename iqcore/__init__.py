"""iqcore: inference-only ("inferable") quantizers for Keras and TensorFlow, extensible by plugins.

    import iqcore
    q = iqcore.get_quantizer("symmetric", target="weights", num_bits=8, threshold=[1.0])
    y = q(x)

Methods come from plugins (``iq-pot``, ``iq-symmetric``, ``iq-uniform`` and third-party ones), discovered
through entry points on first use; ``iqcore.list_quantizers()`` shows what is installed.
"""

from iqcore import keras_inferable_quantizers
from iqcore._plugins import PluginError, PluginWarning
from iqcore._quantizer import (
    InferableQuantizer,
    QuantizationParams,
    ThresholdActivationQuantizer,
    ThresholdWeightsQuantizer,
)
from iqcore._registry import QuantizerInfo, get_quantizer, list_quantizers
from iqcore.hookspecs import hookimpl

__version__ = "0.1.0"


def load_model(path, *args, **kwargs):
    """Load a Keras model holding iqcore layers; see :func:`iqcore.keras.load_model` (imported lazily)."""
    from iqcore import keras as iqkeras

    return iqkeras.load_model(path, *args, **kwargs)


def __getattr__(name):
    if name == "keras":  # lazy: importing tf.keras costs time that pure quantizer users need not pay
        import importlib

        return importlib.import_module("iqcore.keras")
    raise AttributeError(f"module 'iqcore' has no attribute {name!r}")

__all__ = [
    "InferableQuantizer",
    "PluginError",
    "PluginWarning",
    "QuantizationParams",
    "QuantizerInfo",
    "ThresholdActivationQuantizer",
    "ThresholdWeightsQuantizer",
    "get_quantizer",
    "hookimpl",
    "keras_inferable_quantizers",
    "list_quantizers",
    "load_model",
]
