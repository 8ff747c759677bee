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
  through :func:`iqcore._registry.get_class`, so a missing plugin is reported by name and the quantizer's own
  validation refuses tampered values.
* For TFLite the wrappers switch to an export form that puts TensorFlow's FakeQuant ops (8-bit, narrow range,
  scale equal to the quantizer's) on the already-quantized weights; a per-channel Dense is expressed as a
  1x1 convolution, a form the converter accepts.
"""

from __future__ import annotations

import os

import tensorflow as tf

from iqcore import _registry as registry
from iqcore.keras import _seed_models
from iqcore.keras._compare import LayerAgreement, compare
from iqcore.keras._integer import (
    IntegerActivation,
    IntegerAdd,
    IntegerAveragePooling2D,
    IntegerConcatenate,
    IntegerConstantOperation,
    IntegerMultiply,
    IntegerSimulation,
)
from iqcore.keras._layers import (
    KERAS_3,
    ActivationQuantizationHolder,
    QuantizationWrapper,
    find_weight,
)
from iqcore.keras._metadata import ModelMetadata, add_metadata, add_tflite_metadata, get_metadata, tflite_metadata
from iqcore.keras._quantize import calibrate_activation, calibrate_weights, quantize_model, split_activations
from iqcore.keras._seed_models import load_seed_model, narrow_weights
from iqcore.keras._tf_ops import TFOperation
from iqcore.keras._tflite import deployment_form, flatten_layers, run_tflite, tflite_weight_tensors, to_tflite

keras = tf.keras

__all__ = [
    "KERAS_3",
    "ActivationQuantizationHolder",
    "IntegerActivation",
    "IntegerAdd",
    "IntegerAveragePooling2D",
    "IntegerConcatenate",
    "IntegerConstantOperation",
    "IntegerMultiply",
    "IntegerSimulation",
    "LayerAgreement",
    "ModelMetadata",
    "QuantizationWrapper",
    "TFOperation",
    "add_metadata",
    "add_tflite_metadata",
    "calibrate_activation",
    "calibrate_weights",
    "compare",
    "deployment_form",
    "export",
    "find_weight",
    "flatten_layers",
    "get_metadata",
    "load_model",
    "load_seed_model",
    "narrow_weights",
    "quantize_model",
    "run_tflite",
    "split_activations",
    "tflite_metadata",
    "tflite_weight_tensors",
    "to_tflite",
]


def export(model, path, format: str | None = None) -> str:
    """Write a quantized model in a deployment format registered through the ``register_exporters`` hook.

    Args:
        model: A quantized Keras model (or the path of a saved one).
        path: The file to write.
        format: The format's name (``"tflite"``, or one a plugin adds); None picks the format whose suffix
            ``path`` ends with.

    Returns:
        The format's name.

    Raises:
        ValueError: For an unknown format (the message lists the installed ones), or a model the exporter
            refuses (the message names the layer and the reason).
    """
    path = os.fspath(path)
    if format is None:
        by_suffix = [info.exporter.name for info in registry.exporters().values()
                     if info.exporter.suffix and path.endswith(info.exporter.suffix)]
        if len(by_suffix) != 1:
            raise ValueError(f"format is None and the suffix of {path!r} names {len(by_suffix)} installed formats; "
                             f"allowed: one of {', '.join(sorted(registry.exporters())) or 'none installed'}")
        format = by_suffix[0]
    exporter = registry.get_exporter(format)
    if isinstance(model, (str, os.PathLike)):
        model = load_model(model)
    exporter.export(model, path)
    return format


def load_model(path, *args, **kwargs):
    """``keras.models.load_model`` for models holding iqcore layers (same arguments, ``safe_mode`` included).

    Discovers the installed plugins and registers iqcore's layers first: Keras 3 does not import a registered
    class's module by itself. A ``.keras``/``.h5`` file written with the seed's layers (mct-quantizers) is
    mapped to iqcore's layers (:func:`load_seed_model`; the other arguments do not apply to it).

    Raises:
        ValueError: If a quantizer's method has no installed plugin (naming the method and the distribution
            to install) or a stored quantizer config is invalid (naming the parameter).
    """
    registry.entries()
    if isinstance(path, (str, os.PathLike)) and os.path.isfile(path) and _seed_models.is_seed_model(path, strict=True):
        return _seed_models.load_seed_model(path)[0]  # written by the seed's toolchain: mapped to iqcore's layers
    try:
        return keras.models.load_model(os.fspath(path) if isinstance(path, os.PathLike) else path, *args, **kwargs)
    except KeyError as e:  # a damaged archive: Keras looks up a member the zip directory does not name
        raise _seed_models.DamagedFile(f"{os.fspath(path)}: not a readable .keras file: {e}") from None
    except TypeError as e:
        # Keras 3 re-raises a TypeError from a layer's from_config as a generic "could not be deserialized"
        # TypeError carrying the whole model config; the error that names the parameter is its context.
        root: BaseException = e
        while "could not be deserialized" in str(root) and isinstance(root.__context__, (TypeError, ValueError)):
            root = root.__context__
        if root is e:
            unknown = _unknown_classes(path, kwargs.get("custom_objects") or {})
            if not unknown:
                raise
            # Keras 2 reports a class it cannot find as "'str' object is not callable".
            raise TypeError(f"{os.fspath(path)}: the model config names classes Keras cannot find: {unknown}; "
                            "allowed: Keras layers and registered classes (or custom_objects=...)") from e
        raise root from None


def _unknown_classes(path, custom_objects) -> list[str]:
    """The class names of a saved model's layer entries (wrapped layers included) that Keras cannot resolve."""
    try:
        config = _seed_models.read_config(path)
    except (ValueError, OSError):
        return []
    unknown, entries = [], list(_seed_models._walk_layers(config))
    while entries:
        entry = entries.pop()
        name = entry.get("class_name")
        if not isinstance(name, str):
            continue
        known = isinstance(getattr(keras.layers, name, None), type) or name in custom_objects or \
            keras.utils.get_registered_object(entry.get("registered_name") or name) is not None
        if not known:
            unknown.append(name)
        inner = entry.get("config", {}).get("layer") if isinstance(entry.get("config"), dict) else None
        if isinstance(inner, dict):
            entries.append(inner)
    return sorted(set(unknown))
