"""Quantized Keras models: layers, a one-call model quantizer, loading, and int8 TFLite export.

Works with ``tf.keras`` on Keras 3 (TensorFlow >= 2.16) and on Keras 2 (TensorFlow 2.15, or ``tf-keras`` with
``TF_USE_LEGACY_KERAS=1``)::

    import iqcore
    from iqcore.keras import quantize_model, to_tflite

    qmodel = quantize_model(model, weights_method="symmetric", activation_method="uniform",
                            representative_data=calibration_batches)
    qmodel.save("m.keras")
    same = iqcore.load_model("m.keras")          # discovers the plugins first
    tflite_bytes = to_tflite(qmodel)             # int8, with the quantizers' own scales

Design (see docs/keras.md):

* :class:`QuantizationWrapper` quantizes the wrapped layer's named weights **once**, in place, when it is built
  (and again after :meth:`QuantizationWrapper.set_weights`). The layer then runs on its own code at float
  speed with weights on the quantizer's grid: the same numbers as re-quantizing on every call, since a
  quantizer maps grid values to themselves.
* Quantizers are stored in a layer's config as ``{"method", "target", "distribution", "config"}`` and rebuilt
  through :func:`iqcore.registry.get_class`, so a missing plugin is reported by name and the quantizer's own
  validation refuses tampered values.
* For TFLite the wrappers switch to an export form that puts TensorFlow's FakeQuant ops (8-bit, narrow range,
  scale equal to the quantizer's) on the already-quantized weights; a per-channel Dense is expressed as a
  1x1 convolution, a form the converter accepts.
"""

from __future__ import annotations

import os

import tensorflow as tf

from iqcore import registry
from iqcore.keras_export import export_weight, symmetric_bound
from iqcore.keras_layers import (
    KERAS_3,
    ActivationQuantizationHolder,
    QuantizationWrapper,
    deserialize_quantizer,
    find_weight,
    serialize_quantizer,
)
from iqcore.keras_quantize import (
    AVERAGING,
    FIXED_OUTPUT_RANGES,
    FUSED_ACTIVATIONS,
    KERNEL_AXES,
    PASS_THROUGH,
    RELU_FUSING,
    calibrate_activation,
    calibrate_weights,
    fixed_range_activation,
    power_of_two_ceil,
    quantize_model,
    split_activations,
)
from iqcore.keras_tflite import (
    TFLITE_LAYERS,
    UNSUPPORTED_TFLITE,
    check_tflite,
    export_problem,
    flatten_layers,
    restore_scales,
    tflite_weight_tensors,
    to_tflite,
)

keras = tf.keras

__all__ = [
    "AVERAGING", "FIXED_OUTPUT_RANGES", "FUSED_ACTIVATIONS", "KERAS_3", "KERNEL_AXES", "PASS_THROUGH",
    "RELU_FUSING", "TFLITE_LAYERS", "UNSUPPORTED_TFLITE", "ActivationQuantizationHolder", "QuantizationWrapper",
    "calibrate_activation", "calibrate_weights", "check_tflite", "deserialize_quantizer", "export_problem",
    "export_weight", "find_weight", "fixed_range_activation", "flatten_layers", "load_model", "power_of_two_ceil",
    "quantize_model", "restore_scales", "serialize_quantizer", "split_activations", "symmetric_bound",
    "tflite_weight_tensors", "to_tflite",
]


def load_model(path, *args, **kwargs):
    """``keras.models.load_model`` for models holding iqcore layers (same arguments, ``safe_mode`` included).

    Discovers the installed plugins and registers iqcore's layers first: Keras 3 does not import a registered
    class's module by itself.

    Raises:
        ValueError: If a quantizer's method has no installed plugin (naming the method and the distribution
            to install) or a stored quantizer config is invalid (naming the parameter).
    """
    registry.entries()
    try:
        return keras.models.load_model(os.fspath(path) if isinstance(path, os.PathLike) else path, *args, **kwargs)
    except TypeError as e:
        # Keras 3 re-raises a TypeError from a layer's from_config as a generic "could not be deserialized"
        # TypeError carrying the whole model config; the error that names the parameter is its context.
        root = e
        while "could not be deserialized" in str(root) and isinstance(root.__context__, (TypeError, ValueError)):
            root = root.__context__
        if root is e:
            raise
        raise root from None
