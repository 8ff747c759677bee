"""The Keras layers (:class:`QuantizationWrapper`, :class:`ActivationQuantizationHolder`) and how quantizers are
stored in their configs. Public names are re-exported by :mod:`iqcore.keras`."""

from __future__ import annotations

import contextlib
from typing import Any

import tensorflow as tf

from iqcore import _registry as registry
from iqcore._quantizer import InferableQuantizer
from iqcore.keras import _metadata
from iqcore.keras._export import conv1d_as_conv2d, dense_as_conv, export_weight, is_plain_conv1d
from iqcore.keras._metadata import METADATA_KEY

keras = tf.keras


#: True on Keras 3 (``tf.keras`` of TensorFlow >= 2.16 without ``TF_USE_LEGACY_KERAS``).
KERAS_3 = hasattr(keras, "StatelessScope")


PACKAGE = "iqcore"


QUANTIZER_KEYS = ("method", "target", "distribution", "config")


# Weight names that mean the same weight on Keras 2 and Keras 3 (DepthwiseConv2D's kernel).
_ALIASES = {"kernel": ("depthwise_kernel",), "depthwise_kernel": ("kernel",)}


def serialize_quantizer(quantizer: InferableQuantizer) -> dict[str, Any]:
    """``{"method", "target", "distribution", "config"}`` for a quantizer, as JSON-able data.

    Raises:
        TypeError: If ``quantizer`` is not an :class:`iqcore.InferableQuantizer`.
    """
    if not isinstance(quantizer, InferableQuantizer):
        raise TypeError(
            f"quantizer must be an iqcore.InferableQuantizer; got {quantizer!r} ({type(quantizer).__name__})"
        )
    info = registry.entries().get((quantizer.method, quantizer.target))
    distribution = info.distribution if info is not None and info.cls is type(quantizer) else "unknown"
    return {
        "method": quantizer.method,
        "target": quantizer.target,
        "distribution": distribution,
        "config": quantizer.get_config(),
    }


def deserialize_quantizer(data, where: str = "quantizer", target: str | None = None) -> InferableQuantizer:
    """Rebuild a quantizer from :func:`serialize_quantizer`'s output, validating every key and value.

    Args:
        data: The stored dict.
        where: Which parameter this is (e.g. ``"dense/weights_quantizers['kernel']"``), used in errors.
        target: The target the caller needs (``"weights"`` or ``"activation"``), or None.

    Raises:
        ValueError: For unknown/missing keys, a method with no installed plugin (naming the distribution to
            install), a wrong target, or any value the quantizer's own validation refuses.
        TypeError: For values of the wrong type.
    """
    if isinstance(data, InferableQuantizer):
        return _check_target(data, where, target)
    if not isinstance(data, dict):
        raise TypeError(f"{where} must be a dict with keys {list(QUANTIZER_KEYS)}; got {type(data).__name__}")
    unknown = sorted(set(data) - set(QUANTIZER_KEYS))
    missing = [k for k in ("method", "target", "config") if k not in data]
    if unknown or missing:
        raise ValueError(
            f"{where} has unknown keys {unknown} and missing keys {missing}; allowed keys: {list(QUANTIZER_KEYS)}"
        )
    method, stored_target, distribution = data["method"], data["target"], data.get("distribution", "unknown")
    for key, value in (("method", method), ("target", stored_target), ("distribution", distribution)):
        if not isinstance(value, str):
            raise TypeError(f"{where}['{key}'] must be a str; got {value!r} ({type(value).__name__})")
    if target is not None and stored_target != target:
        raise ValueError(f"{where}['target'] is {stored_target!r}; allowed here: {target!r}")
    try:
        cls = registry.get_class(method, stored_target)
    except ValueError as e:
        if (method.lower(), stored_target) in registry.entries():
            raise
        hint = f"pip install {distribution}" if distribution != "unknown" else "install the plugin that provides it"
        raise ValueError(
            f"{where} uses quantizer method {method!r} (target {stored_target!r}) from the distribution "
            f"{distribution!r}, which is not installed or is blocked: {hint}. ({e})"
        ) from None
    try:
        return cls.from_config(data["config"])
    except (TypeError, ValueError) as e:
        raise type(e)(f"{where}['config']: {e}") from None


def _check_target(q: InferableQuantizer, where: str, target: str | None) -> InferableQuantizer:
    if target is not None and q.target != target:
        article = "an" if target[0] in "aeiou" else "a"
        raise ValueError(
            f"{where} is a {q.target} quantizer ({type(q).__name__}); allowed here: {article} {target} quantizer"
        )
    return q


def _base_name(variable) -> str:
    name = getattr(variable, "name", "")
    return name.split("/")[-1].split(":")[0]


def find_weight(layer, name: str):
    """The variable of ``layer`` called ``name`` (``kernel`` and ``depthwise_kernel`` are aliases).

    Raises:
        ValueError: If the layer has no such weight (the message lists the ones it has).
    """
    for candidate in (name, *_ALIASES.get(name, ())):
        for w in layer.weights:
            if _base_name(w) == candidate:
                return w
    names = [_base_name(w) for w in layer.weights]
    raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) has no weight {name!r}; allowed: {names}")


def _attribute_of(layer, variable) -> str | None:
    """The attribute of ``layer`` that holds ``variable`` (for Keras 2 export), or None."""
    for attr, value in vars(layer).items():
        if value is variable:
            return attr
    return None


@keras.utils.register_keras_serializable(package=PACKAGE)
class QuantizationWrapper(keras.layers.Layer):  # type: ignore[name-defined]
    """Runs ``layer`` with its named weights on the quantizers' grids.

    The weights are quantized once, in place, when the wrapper is built (``layer``'s variables then hold grid
    values; wrap a copy if you still need the float weights), and again after :meth:`set_weights`. Output is
    bit-identical to re-quantizing the weights on every call.

    Args:
        layer: A Keras layer (Conv1D, Conv2D, DepthwiseConv2D, Conv2DTranspose, Dense, or any layer whose
            named weights are given).
        weights_quantizers: ``{weight name: weights quantizer}``, e.g. ``{"kernel": q}``. ``kernel`` and
            ``depthwise_kernel`` name the same DepthwiseConv2D weight on Keras 3 and Keras 2.
        **kwargs: Keras layer arguments (``name``...). ``trainable`` defaults to False: training would move the
            weights off the grid.

    Raises:
        TypeError: If ``layer`` is not a Keras layer or a quantizer is not a weights quantizer.
        ValueError: For an empty ``weights_quantizers``, or (at build) a weight the layer does not have or a
            quantizer whose per-channel layout does not fit the weight's shape.
    """

    def __init__(self, layer, weights_quantizers=None, **kwargs):
        kwargs.setdefault("trainable", False)
        if not isinstance(layer, keras.layers.Layer):
            raise TypeError(f"layer must be a Keras layer; got {layer!r} ({type(layer).__name__})")
        kwargs.setdefault("name", f"quantized_{layer.name}")
        super().__init__(**kwargs)
        if not isinstance(weights_quantizers, dict) or not weights_quantizers:
            raise ValueError(
                f"weights_quantizers is {weights_quantizers!r}; allowed: a non-empty dict "
                "{weight name: weights quantizer}, e.g. {'kernel': q}"
            )
        quantizers = {}
        for name, q in weights_quantizers.items():
            if not isinstance(name, str):
                raise TypeError(f"weights_quantizers keys must be weight names (str); got {name!r}")
            quantizers[name] = deserialize_quantizer(q, f"{self.name}: weights_quantizers[{name!r}]", "weights")
        self.layer = layer
        self.trainable = kwargs["trainable"]  # Keras 3 passes it on to the wrapped layer only when set here
        self._quantizers = quantizers
        self._export = False
        if layer.built:
            self._bind()

    @property
    def weights_quantizers(self) -> dict[str, InferableQuantizer]:
        """``{weight name: quantizer}`` (a copy)."""
        return dict(self._quantizers)

    def quantized_variables(self) -> dict:
        """``{weight name: the wrapped layer's variable}`` for each quantized weight (empty before the build)."""
        return dict(getattr(self, "_variables_by_name", {}))

    # -- building -------------------------------------------------------------------------------------
    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        if not hasattr(self, "_variables_by_name"):
            with tf.init_scope():  # quantize once, eagerly, even when first built inside a tf.function
                self._bind()
        self.built = True

    def _bind(self) -> None:
        """Find each named weight, check it fits its quantizer, and quantize it in place."""
        variables = {}
        for name, q in self._quantizers.items():
            var = find_weight(self.layer, name)
            _check_fits(q, var, f"{self.name}: weights_quantizers[{name!r}]")
            variables[name] = var
        self._variables_by_name = variables
        self.requantize()

    def requantize(self) -> None:
        """Quantize the wrapped layer's weights in place (after assigning new float weights to it directly)."""
        if not self.layer.built:
            return
        for name, q in self._quantizers.items():
            var = self._variables_by_name[name]
            stored = getattr(var, "_variable", var)  # Keras 2 mixed precision: read past the AutoCastVariable
            var.assign(tf.cast(q(tf.convert_to_tensor(stored)), stored.dtype))

    def set_weights(self, weights):
        """Set the wrapped layer's weights (float values are fine) and quantize them."""
        self.layer.set_weights(weights)
        self.requantize()

    def get_weights(self):
        return self.layer.get_weights()

    # -- computing ----------------------------------------------------------------------------------
    def call(self, inputs, *args, **kwargs):
        if self._export:
            return self._export_call(inputs, *args, **kwargs)
        return self.layer(inputs, *args, **kwargs)

    def compute_output_shape(self, input_shape):
        try:
            return self.layer.compute_output_shape(input_shape)
        except NotImplementedError:  # a custom layer without it: Keras 3 traces its call instead
            if not KERAS_3:
                raise
            return self.layer.compute_output_spec(keras.KerasTensor(input_shape)).shape

    def _export_call(self, inputs, *args, **kwargs):
        if isinstance(self.layer, keras.layers.Dense) and set(self._quantizers) == {"kernel"} and \
                self._quantizers["kernel"].grid.axis is not None and not args and set(kwargs) <= {"training"}:
            kernel = tf.convert_to_tensor(self._variables_by_name["kernel"])
            kernel = tf.reshape(kernel, [1, 1, *kernel.shape])
            kernel = export_weight(kernel, self._quantizers["kernel"], f"iqcore_{self.name}_kernel", axis=3)
            return dense_as_conv(self.layer, inputs, kernel)
        if is_plain_conv1d(self.layer) and set(self._quantizers) == {"kernel"} and not args and \
                set(kwargs) <= {"training"}:
            kernel = tf.convert_to_tensor(self._variables_by_name["kernel"])
            kernel = tf.reshape(kernel, [1, *kernel.shape])
            q = self._quantizers["kernel"]
            axis = None if q.grid.axis is None else q.grid.axis + 1
            kernel = export_weight(kernel, q, f"iqcore_{self.name}_kernel", axis=axis)
            return conv1d_as_conv2d(self.layer, inputs, kernel)
        fq = {name: export_weight(self._variables_by_name[name], q, f"iqcore_{self.name}_{name}")
              for name, q in self._quantizers.items()}
        mapping = [(self._variables_by_name[name], value) for name, value in fq.items()]
        if KERAS_3:
            with keras.StatelessScope(state_mapping=mapping):
                return self.layer(inputs, *args, **kwargs)
        saved = []
        try:
            for var, value in mapping:
                attr = _attribute_of(self.layer, var)
                if attr is None:
                    raise ValueError(f"{self.name}: cannot find the attribute holding {var.name} for TFLite export")
                saved.append((attr, var))
                object.__setattr__(self.layer, attr, value)
            return self.layer(inputs, *args, **kwargs)
        finally:
            for attr, var in saved:
                object.__setattr__(self.layer, attr, var)

    # -- saving ---------------------------------------------------------------------------------------
    def get_config(self):
        config = super().get_config()
        config["layer"] = keras.layers.serialize(self.layer)
        config["weights_quantizers"] = {name: serialize_quantizer(q) for name, q in self._quantizers.items()}
        config.update(_metadata.config_entry(self))
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        name = config.get("name", "QuantizationWrapper")
        if "layer" not in config or "weights_quantizers" not in config:
            raise ValueError(f"{name}: config needs the keys 'layer' and 'weights_quantizers'")
        quantizers = config.pop("weights_quantizers")
        if not isinstance(quantizers, dict) or not quantizers:
            raise ValueError(f"{name}: weights_quantizers is {quantizers!r}; allowed: a non-empty dict")
        layer = keras.layers.deserialize(config.pop("layer"), custom_objects=custom_objects)
        rebuilt = {k: deserialize_quantizer(v, f"{name}: weights_quantizers[{k!r}]", "weights")
                   for k, v in quantizers.items()}
        metadata = config.pop(METADATA_KEY, None)
        wrapper = cls(layer, rebuilt, **config)
        if metadata is not None:
            _metadata.attach(wrapper, metadata, where=f"{name}: {METADATA_KEY}")
        return wrapper


@keras.utils.register_keras_serializable(package=PACKAGE)
class ActivationQuantizationHolder(keras.layers.Layer):  # type: ignore[name-defined]
    """Fake-quantizes its input with an activation quantizer (per tensor).

    float16/bfloat16 inputs (mixed precision) are quantized in float32 and cast back.

    Args:
        quantizer: An activation quantizer (``iqcore.get_quantizer(method, "activation", ...)``).
        activation_holder_quantizer: The seed's name for ``quantizer`` (give one of the two).
        **kwargs: Keras layer arguments.

    Raises:
        TypeError: If ``quantizer`` is not an activation quantizer, or both or neither of ``quantizer`` and
            ``activation_holder_quantizer`` are given.
    """

    def __init__(self, quantizer=None, activation_holder_quantizer=None, **kwargs):
        if (quantizer is None) == (activation_holder_quantizer is None):
            raise TypeError(
                "ActivationQuantizationHolder takes one activation quantizer: give quantizer= or its seed alias "
                f"activation_holder_quantizer=, not {'both' if quantizer is not None else 'neither'}"
            )
        metadata = kwargs.pop(METADATA_KEY, None)
        super().__init__(**kwargs)
        chosen = quantizer if quantizer is not None else activation_holder_quantizer
        self.quantizer = deserialize_quantizer(chosen, f"{self.name}: quantizer", "activation")
        if metadata is not None:
            _metadata.attach(self, metadata, where=f"{self.name}: {METADATA_KEY}")

    @property
    def activation_holder_quantizer(self) -> InferableQuantizer:
        """The seed's name for :attr:`quantizer`."""
        return self.quantizer

    def call(self, inputs):
        return self.quantizer(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config["quantizer"] = serialize_quantizer(self.quantizer)
        config.update(_metadata.config_entry(self))
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        name = config.get("name", "ActivationQuantizationHolder")
        if "quantizer" not in config:
            raise ValueError(f"{name}: config needs the key 'quantizer'")
        quantizer = deserialize_quantizer(config.pop("quantizer"), f"{name}: quantizer", "activation")
        return cls(quantizer, **config)


@contextlib.contextmanager
def export_form(wrappers):
    """Within the block, ``wrappers`` compute in their TFLite export form: TensorFlow FakeQuant ops on the
    already-quantized weights, with the quantizers' scales, that the converter turns into int8 weights."""
    wrappers = list(wrappers)
    for w in wrappers:
        w._export = True
    try:
        yield
    finally:
        for w in wrappers:
            w._export = False


def _check_fits(q: InferableQuantizer, var, where: str) -> None:
    grid = q.grid
    if grid.axis is None:
        return
    shape = tuple(var.shape)
    if len(shape) != grid.rank or shape[grid.axis] != grid.channels:
        raise ValueError(
            f"{where} is per-channel for rank {grid.rank} with {grid.channels} channels on axis {grid.axis}, "
            f"but the weight {_base_name(var)!r} has shape {shape}; allowed: input_rank={len(shape)} and one "
            "threshold per channel of the chosen axis"
        )
