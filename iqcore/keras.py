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

import math
import os
from typing import Any

import numpy as np
import tensorflow as tf

from iqcore import registry
from iqcore.quantizer import InferableQuantizer

keras = tf.keras

#: True on Keras 3 (``tf.keras`` of TensorFlow >= 2.16 without ``TF_USE_LEGACY_KERAS``).
KERAS_3 = hasattr(keras, "StatelessScope")

PACKAGE = "iqcore"
QUANTIZER_KEYS = ("method", "target", "distribution", "config")

# Weight names that mean the same weight on Keras 2 and Keras 3 (DepthwiseConv2D's kernel).
_ALIASES = {"kernel": ("depthwise_kernel",), "depthwise_kernel": ("kernel",)}


# -- quantizers inside layer configs ---------------------------------------------------------------------
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


# -- finding a layer's weights ------------------------------------------------------------------------------
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


# -- the layers -------------------------------------------------------------------------------------------
@keras.utils.register_keras_serializable(package=PACKAGE)
class QuantizationWrapper(keras.layers.Layer):
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
        return self.layer.compute_output_shape(input_shape)

    def _export_call(self, inputs, *args, **kwargs):
        if isinstance(self.layer, keras.layers.Dense) and set(self._quantizers) == {"kernel"} and \
                self._quantizers["kernel"].grid.axis is not None and not args and set(kwargs) <= {"training"}:
            kernel = tf.convert_to_tensor(self._variables_by_name["kernel"])
            kernel = tf.reshape(kernel, [1, 1, *kernel.shape])
            kernel = export_weight(kernel, self._quantizers["kernel"], f"iqcore_{self.name}_kernel", axis=3)
            return _dense_as_conv(self.layer, inputs, kernel)
        if _is_plain_conv1d(self.layer) and set(self._quantizers) == {"kernel"} and not args and \
                set(kwargs) <= {"training"}:
            kernel = tf.convert_to_tensor(self._variables_by_name["kernel"])
            kernel = tf.reshape(kernel, [1, *kernel.shape])
            q = self._quantizers["kernel"]
            axis = None if q.grid.axis is None else q.grid.axis + 1
            kernel = export_weight(kernel, q, f"iqcore_{self.name}_kernel", axis=axis)
            return _conv1d_as_conv2d(self.layer, inputs, kernel)
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
        return cls(layer, rebuilt, **config)


@keras.utils.register_keras_serializable(package=PACKAGE)
class ActivationQuantizationHolder(keras.layers.Layer):
    """Fake-quantizes its input with an activation quantizer (per tensor).

    float16/bfloat16 inputs (mixed precision) are quantized in float32 and cast back.

    Args:
        quantizer: An activation quantizer (``iqcore.get_quantizer(method, "activation", ...)``).
        **kwargs: Keras layer arguments.

    Raises:
        TypeError: If ``quantizer`` is not an activation quantizer.
    """

    def __init__(self, quantizer, **kwargs):
        super().__init__(**kwargs)
        self.quantizer = deserialize_quantizer(quantizer, f"{self.name}: quantizer", "activation")

    def call(self, inputs):
        return self.quantizer(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config["quantizer"] = serialize_quantizer(self.quantizer)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        name = config.get("name", "ActivationQuantizationHolder")
        if "quantizer" not in config:
            raise ValueError(f"{name}: config needs the key 'quantizer'")
        quantizer = deserialize_quantizer(config.pop("quantizer"), f"{name}: quantizer", "activation")
        return cls(quantizer, **config)


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


# -- TFLite export form ---------------------------------------------------------------------------------
def export_problem(var, q: InferableQuantizer) -> str | None:
    """Why a quantized weight cannot be stored as TFLite int8 (zero point 0, codes in [-127, 127]), or None."""
    g = q.grid
    if g.num_bits > 8:
        return f"num_bits is {g.num_bits}; allowed for TFLite int8 weights: 2..8"
    if np.any(g.zero_point != 0):
        return (f"zero points are {np.unique(g.zero_point).tolist()}; TFLite int8 weights need zero point 0 "
                "(use a symmetric or power-of-two weights quantizer)")
    codes = q.to_int(tf.convert_to_tensor(var)).numpy()
    if codes.min(initial=0) < -127:
        return ("a weight sits on code -128 (the value -threshold), outside TFLite's [-127, 127]; allowed: a "
                "quantizer with narrow_range=True (quantize_model's default)")
    return None


def symmetric_bound(scale: np.ndarray) -> np.ndarray:
    """float32 ``m`` per channel such that the range ``[-m, m]`` over 254 steps has exactly ``scale`` as step.

    ``127 * scale`` is rarely a float32, and rounding it moves the step the converter derives from the range
    (``2m / 254``) by an ulp. Among the float32 neighbours of ``127 * scale`` this picks the nearest whose step,
    divided in float32 and in float64 alike, rounds back to ``scale``.
    """
    scale = np.asarray(scale, np.float32)
    flat = scale.reshape(-1)
    out = np.empty_like(flat)
    for i, s in enumerate(flat):
        centre = np.float32(127.0 * np.float64(s))
        candidates = [centre]
        up = down = centre
        for _ in range(64):
            up, down = np.nextafter(up, np.float32(np.inf)), np.nextafter(down, np.float32(0))
            candidates += [down, up]
        for m in candidates:
            twice = np.float32(2) * m
            if np.float32(twice / np.float32(254)) == s and np.float32(np.float64(twice) / 254.0) == s:
                out[i] = m
                break
        else:  # not reached for normal float32 scales; check_tflite would report the difference
            out[i] = centre
    return out.reshape(scale.shape)


def export_weight(var, q: InferableQuantizer, name: str, axis: int | None = None) -> tf.Tensor:
    """``var`` (already on ``q``'s grid) through an 8-bit narrow-range FakeQuant op whose scale is ``q``'s.

    The converter turns it into int8 weights with exactly ``q.quantization_params()``'s scales and zero point
    0. Grids below 8 bits are stored in int8 at their own scale (codes within their smaller range).
    ``axis`` overrides the quantizer's channel axis when ``var`` is a reshaped view of the weight.
    """
    g = q.grid
    high = symmetric_bound(g.scale)
    low = -high
    w = tf.convert_to_tensor(var)
    if g.axis is None:
        return tf.quantization.fake_quant_with_min_max_vars(
            w, low.reshape(()), high.reshape(()), num_bits=8, narrow_range=True, name=name)
    shape = list(w.shape)
    rank = len(shape)
    axis = g.axis if axis is None else axis
    if axis == rank - 1:
        return tf.quantization.fake_quant_with_min_max_vars_per_channel(
            w, low, high, num_bits=8, narrow_range=True, name=name)
    if axis == rank - 2 and rank == 4:
        # DepthwiseConv2D: [kh, kw, in, multiplier] -> per output channel in * multiplier.
        mult = shape[-1]
        flat = tf.reshape(w, shape[:2] + [1, shape[2] * mult])
        out = tf.quantization.fake_quant_with_min_max_vars_per_channel(
            flat, np.repeat(low, mult), np.repeat(high, mult), num_bits=8, narrow_range=True, name=name)
        return tf.reshape(out, shape)
    perm = [i for i in range(rank) if i != axis] + [axis]
    inverse = list(np.argsort(perm))
    out = tf.quantization.fake_quant_with_min_max_vars_per_channel(
        tf.transpose(w, perm), low, high, num_bits=8, narrow_range=True, name=name)
    return tf.transpose(out, inverse)


def _is_plain_conv1d(layer) -> bool:
    """A channels-last, ungrouped Conv1D (the form :func:`_conv1d_as_conv2d` rewrites)."""
    if type(layer).__name__ != "Conv1D":
        return False
    config = layer.get_config()
    return config.get("data_format", "channels_last") == "channels_last" and config.get("groups", 1) == 1


def _conv1d_as_conv2d(layer, inputs, kernel):
    """A Conv1D as a Conv2D over a height-1 image, with the FakeQuant on the 4-d kernel (TFLite rejects a
    per-channel FakeQuant followed by the ExpandDims Keras' own Conv1D inserts)."""
    config = layer.get_config()
    x = tf.expand_dims(tf.convert_to_tensor(inputs), 1)
    stride, dilation = config["strides"][0], config["dilation_rate"][0]
    padding = config["padding"].upper()
    if padding == "CAUSAL":
        x = tf.pad(x, [[0, 0], [0, 0], [dilation * (config["kernel_size"][0] - 1), 0], [0, 0]])
        padding = "VALID"
    y = tf.nn.conv2d(x, kernel, strides=[1, 1, stride, 1], padding=padding, dilations=[1, 1, dilation, 1])
    y = tf.squeeze(y, 1)
    if layer.use_bias:
        y = y + tf.convert_to_tensor(layer.bias)
    return layer.activation(y) if layer.activation is not None else y


def _dense_as_conv(layer, inputs, kernel):
    """A Dense layer as a 1x1 Conv2D: the form in which TFLite accepts per-channel Dense weights."""
    units_in, units_out = kernel.shape[2:]
    x = tf.convert_to_tensor(inputs)
    inner = x.shape[1:-1]
    if inner.rank is not None and inner.is_fully_defined():  # static: no SHAPE/CONCATENATION ops in the file
        lead = [-1, *inner.as_list()]
    else:
        lead = tf.shape(x)[:-1]
    x4 = tf.reshape(x, [-1, 1, 1, units_in])
    y = tf.nn.conv2d(x4, kernel, strides=1, padding="VALID")
    if layer.use_bias:
        y = y + tf.convert_to_tensor(layer.bias)
    y = tf.reshape(y, [*lead, units_out] if isinstance(lead, list) else tf.concat([lead, [units_out]], axis=0))
    if layer.activation is not None:
        y = layer.activation(y)
    return y


def flatten_layers(model) -> list:
    """Every layer inside ``model`` (nested models and wrappers included), depth first."""
    out = []
    stack = list(getattr(model, "layers", []))[::-1]
    while stack:
        layer = stack.pop()
        out.append(layer)
        inner = list(getattr(layer, "layers", []))
        if isinstance(layer, QuantizationWrapper):
            inner = [layer.layer]
        stack.extend(inner[::-1])
    return out


#: Wrapped layers :func:`to_tflite` exports (tested), and those it refuses.
TFLITE_LAYERS = ("Conv1D", "Conv2D", "DepthwiseConv2D", "Dense")
UNSUPPORTED_TFLITE = frozenset({"Conv2DTranspose", "Conv3D", "Conv3DTranspose", "Conv1DTranspose"})


def to_tflite(model, *, int8_io: bool = True, check: bool = True) -> bytes:
    """Convert a quantized Keras model to a fully int8 TFLite flatbuffer that keeps the quantizers' grids.

    Weights of every :class:`QuantizationWrapper` become int8 with exactly their quantizer's scales (zero point
    0, per channel where the quantizer is), activations take their :class:`ActivationQuantizationHolder`'s
    range. A Dense with per-channel weights becomes a 1x1 CONV_2D between two RESHAPEs.

    Args:
        model: A Keras model holding wrappers and holders (put a holder right after the input for int8 input).
        int8_io: Make the model's input and output int8 (else float32 with QUANTIZE/DEQUANTIZE ops).
        check: Re-open the flatbuffer and check every wrapped weight's scales and zero points against the
            quantizer's ``quantization_params()`` (RuntimeError on a difference).

    Returns:
        The TFLite model as bytes.

    Raises:
        ValueError: If a weight cannot be int8 with zero point 0 (uniform weights with a zero point, more than
            8 bits, a code at -128); the message names the layer and the fix.
        RuntimeError: If ``check`` finds a scale that differs from the quantizer's.
    """
    wrappers = [layer for layer in flatten_layers(model) if isinstance(layer, QuantizationWrapper)]
    for w in wrappers:
        if not w.built:
            raise ValueError(f"{w.name} is not built; allowed: a built model (call it once or give it an Input)")
        if type(w.layer).__name__ in UNSUPPORTED_TFLITE:
            raise ValueError(
                f"{w.name}: TFLite export of a wrapped {type(w.layer).__name__} is not supported yet; allowed: "
                f"{', '.join(TFLITE_LAYERS)} (and other layers whose weights need no per-channel FakeQuant rewrite)"
            )
        for name, q in w._quantizers.items():
            problem = export_problem(w._variables_by_name[name], q)
            if problem:
                raise ValueError(f"{w.name}: weights_quantizers[{name!r}] cannot be exported to TFLite: {problem}")
    for w in wrappers:
        w._export = True
    try:
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        flatbuffer = converter.convert()
    finally:
        for w in wrappers:
            w._export = False
    flatbuffer = restore_scales(flatbuffer, model)
    if check:
        check_tflite(flatbuffer, model)
    return flatbuffer


def _wanted_scales(wrapper, name) -> np.ndarray:
    return np.repeat(wrapper._quantizers[name].grid.scale.reshape(-1), _export_repeat(wrapper, name))


def restore_scales(flatbuffer: bytes, model) -> bytes:
    """Write the quantizers' exact scales over weight scales the converter derived one float32 ulp off.

    The converter derives each weight scale from the FakeQuant range in float32; for about one channel in a
    hundred no float32 range gives back a non-power-of-two scale exactly (:func:`symmetric_bound`). The int8
    weights are the same either way (each is ``code * scale`` to within far less than half a step); only the
    stored scale vector is replaced, where its bytes occur exactly once in the file. Anything else is left for
    :func:`check_tflite` to report.
    """
    buffer = bytearray(flatbuffer)
    tensors = tflite_weight_tensors(flatbuffer, model)
    for w in (layer for layer in flatten_layers(model) if isinstance(layer, QuantizationWrapper)):
        for name in w._quantizers:
            d = tensors.get((w.name, name))
            if d is None:
                continue
            got = d["quantization_parameters"]["scales"].astype("<f4")
            want = _wanted_scales(w, name).astype("<f4")
            if got.shape != want.shape or np.array_equal(got, want):
                continue
            if np.any(np.abs(got.astype(np.float64) / want - 1) > 2.0**-22):
                continue  # not an ulp: a real difference, reported by check_tflite
            old = got.tobytes()
            if buffer.count(old) == 1:
                start = buffer.find(old)
                buffer[start:start + len(old)] = want.tobytes()
    return bytes(buffer)


def tflite_weight_tensors(flatbuffer: bytes, model) -> dict[tuple[str, str], dict]:
    """``{(wrapper name, weight name): tensor details}`` of the wrapped weights in a :func:`to_tflite` file."""
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    details = interpreter.get_tensor_details()
    found = {}
    for w in (layer for layer in flatten_layers(model) if isinstance(layer, QuantizationWrapper)):
        for name in w._quantizers:
            tag = f"iqcore_{w.name}_{name}"
            hits = [d for d in details if tag in d["name"] and d["dtype"] == np.int8]
            if len(hits) == 1:
                d = dict(hits[0])
                try:
                    d["value"] = interpreter.get_tensor(d["index"])
                except ValueError:
                    d["value"] = None
                found[(w.name, name)] = d
    return found


def check_tflite(flatbuffer: bytes, model) -> None:
    """Check that each wrapped weight in ``flatbuffer`` has its quantizer's scales and zero point 0.

    Raises:
        RuntimeError: For a missing weight tensor or a scale/zero point that differs.
    """
    tensors = tflite_weight_tensors(flatbuffer, model)
    for w in (layer for layer in flatten_layers(model) if isinstance(layer, QuantizationWrapper)):
        for name, q in w._quantizers.items():
            d = tensors.get((w.name, name))
            if d is None:
                raise RuntimeError(f"{w.name}/{name}: no int8 weight tensor found in the TFLite model")
            params = d["quantization_parameters"]
            want = _wanted_scales(w, name)
            got = params["scales"].astype(np.float32)
            if got.shape != want.shape or not np.array_equal(got, want) or np.any(params["zero_points"] != 0):
                raise RuntimeError(
                    f"{w.name}/{name}: TFLite scales {got[:4]}... (zero points {params['zero_points'][:4]}) differ "
                    f"from the quantizer's {want[:4]}..."
                )


def _export_repeat(wrapper, name) -> int:
    """How many TFLite channels each quantizer channel becomes (a DepthwiseConv2D's depth multiplier)."""
    q = wrapper._quantizers[name]
    var = wrapper._variables_by_name[name]
    g = q.grid
    if g.axis is not None and g.rank == 4 and g.axis == 2:
        return int(var.shape[-1])
    return 1


# -- building a quantized model -----------------------------------------------------------------------------
#: Layer types :func:`quantize_model` quantizes by default, with their per-channel (output) axis of the kernel.
KERNEL_AXES = {
    "Conv1D": -1,
    "Conv2D": -1,
    "Conv3D": -1,
    "Dense": -1,
    "DepthwiseConv2D": -2,
    "Conv2DTranspose": -2,
}
#: Layers whose outputs stay on their input's grid: :func:`quantize_model` puts no holder after them. Every
#: other layer's output gets one, as TFLite requantizes every int8 op's output (an average pool included).
PASS_THROUGH = frozenset({
    "InputLayer", "Flatten", "Reshape", "Permute", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D",
    "GlobalMaxPooling3D", "Cropping1D", "Cropping2D", "Cropping3D", "ActivationQuantizationHolder",
})


def _batches(data):
    """Yield lists of numpy arrays (one per model input) from an array, a tf.data.Dataset or an iterable."""
    if isinstance(data, (np.ndarray, tf.Tensor)):
        data = [data]
    for batch in data:
        if isinstance(batch, dict):
            raise TypeError("representative_data batches must be arrays or lists of arrays; got a dict")
        if isinstance(batch, (list, tuple)):
            yield [np.asarray(b) for b in batch]
        else:
            yield [np.asarray(batch)]


def power_of_two_ceil(values: np.ndarray) -> np.ndarray:
    """Smallest power of two >= each (positive) value."""
    values = np.asarray(values, dtype=np.float64)
    return np.exp2(np.ceil(np.log2(values)))


def _positive(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    fallback = values.max() if values.size and values.max() > 0 else 1.0
    return np.where(values > 0, values, fallback)


def calibrate_weights(weight: np.ndarray, method: str, num_bits: int = 8, per_channel: bool = True,
                      axis: int = -1, narrow_range: bool = True) -> InferableQuantizer:
    """A weights quantizer whose thresholds (or ranges) come from ``weight``.

    symmetric: per-channel max |w|; pot: that, rounded up to a power of two; uniform: per-channel min and max.
    All-zero channels take the tensor's largest value (or 1.0) so that every threshold is positive.

    Raises:
        ValueError: For an unknown method or an axis outside the weight's rank.
    """
    w = np.asarray(weight, dtype=np.float64)
    rank = w.ndim
    if not -rank <= axis < rank:
        raise ValueError(f"axis is {axis} for a weight of rank {rank}; allowed: {-rank}..{rank - 1}")
    axis %= rank
    reduce_axes = tuple(i for i in range(rank) if i != axis) if per_channel else None
    layout = dict(per_channel=True, channel_axis=axis, input_rank=rank) if per_channel else {}
    if method in ("symmetric", "pot"):
        t = _positive(np.atleast_1d(np.max(np.abs(w), axis=reduce_axes)))
        if method == "pot":
            t = power_of_two_ceil(t)
        return registry.get_quantizer(method, "weights", num_bits=num_bits, threshold=t.tolist(),
                                      narrow_range=narrow_range, **layout)
    if method == "uniform":
        lo = np.atleast_1d(np.min(w, axis=reduce_axes))
        hi = np.atleast_1d(np.max(w, axis=reduce_axes))
        width = _positive(hi - lo)
        hi = np.where(hi > lo, hi, lo + width)
        return registry.get_quantizer(method, "weights", num_bits=num_bits, min_range=lo.tolist(),
                                      max_range=hi.tolist(), narrow_range=narrow_range, **layout)
    return registry.get_quantizer(method, "weights", num_bits=num_bits)  # raises, listing what exists


def calibrate_activation(low: float, high: float, method: str, num_bits: int = 8) -> InferableQuantizer:
    """An activation quantizer for observed values in ``[low, high]``.

    uniform: the range itself; symmetric: threshold max(|low|, |high|), signed when low < 0; pot: that
    threshold rounded up to a power of two.
    """
    low, high = float(low), float(high)
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"observed activation range [{low}, {high}] is not finite; check representative_data")
    if method == "uniform":
        if not low < high:  # a constant activation: widen to a unit range that keeps it
            low, high = min(low, 0.0), max(high, 0.0) + (1.0 if high >= 0 else 0.0)
            low = low if low < high else high - 1.0
        return registry.get_quantizer("uniform", "activation", num_bits=num_bits, min_range=low, max_range=high)
    if method in ("symmetric", "pot"):
        t = float(_positive(np.array([max(abs(low), abs(high))]))[0])
        if method == "pot":
            t = float(power_of_two_ceil(t))
        return registry.get_quantizer(method, "activation", num_bits=num_bits, threshold=t, signed=low < 0)
    return registry.get_quantizer(method, "activation", num_bits=num_bits)  # raises, listing what exists


#: Activations whose int8 TFLite kernels have a fixed output grid (softmax and logistic: step 1/256 from 0;
#: tanh: step 1/128 around 0). Their holders take that grid instead of a calibrated one, so that Keras and the
#: interpreter round to the same values.
FIXED_OUTPUT_RANGES = {"softmax": (0.0, 1.0), "sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0)}


def fixed_range_activation(low: float, high: float, method: str, num_bits: int = 8) -> InferableQuantizer:
    """An activation quantizer on ``[low, high)`` with step ``(high - low) / 2**num_bits`` (the last code is
    ``high - step``), as TFLite's int8 softmax/logistic/tanh outputs."""
    step = (high - low) / 2**num_bits
    if method == "uniform":
        return registry.get_quantizer("uniform", "activation", num_bits=num_bits, min_range=low,
                                      max_range=high - step)
    return registry.get_quantizer(method, "activation", num_bits=num_bits, threshold=max(abs(low), high),
                                  signed=low < 0)


#: Average pooling (AVERAGE_POOL_2D) keeps its input's grid in int8 TFLite when the output has the input's
#: scale: its holder takes the upstream holder's quantizer, so the interpreter rounds the average once, as Keras
#: does (measured: 10.8% of outputs one step off instead of 44%). Global average pooling (MEAN) is better with a
#: calibrated range of its own (measured: 0% instead of up to 3 steps off).
AVERAGING = frozenset({"AveragePooling1D", "AveragePooling2D", "AveragePooling3D"})
#: Layers whose ReLU consumer the converter fuses into them (no int8 rounding between the two).
RELU_FUSING = frozenset({"Conv1D", "Conv2D", "DepthwiseConv2D", "Dense", "Add", "Subtract", "Multiply"})


def _graph(model):
    """``(producers, consumers)``: layer name -> names of the layers feeding it / fed by it."""
    producers, consumers = {}, {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        try:
            tensors = tf.nest.flatten(layer.input)
        except (AttributeError, ValueError, RuntimeError):  # a shared layer (several inputs): no single answer
            continue
        names = [t._keras_history[0].name for t in tensors if getattr(t, "_keras_history", None)]
        producers[layer.name] = names
        for n in names:
            consumers.setdefault(n, []).append(layer.name)
    return producers, consumers


def _is_relu(layer) -> bool:
    if isinstance(layer, keras.layers.ReLU):
        config = layer.get_config()
        return not config.get("negative_slope") and not config.get("threshold") and \
            config.get("max_value") in (None, 6.0)
    return isinstance(layer, keras.layers.Activation) and _activation_name(layer.activation) in ("relu", "relu6")


def _relu_fused(layer, consumer_names, by_name) -> bool:
    """Whether TFLite fuses the ReLU that alone consumes ``layer``'s output into it (then no holder between)."""
    return (type(layer).__name__ in RELU_FUSING and len(consumer_names) == 1
            and _is_relu(by_name[consumer_names[0]]))


def _upstream_holder(name, producers, by_name, plan_a):
    """The holder quantizer planned for the tensor feeding ``name`` (through pass-through layers), or None."""
    seen = set()
    while name not in seen:
        seen.add(name)
        feeding = producers.get(name, [])
        if len(feeding) != 1:
            return None
        name = feeding[0]
        if name in plan_a:
            return plan_a[name]
        if type(by_name.get(name)).__name__ not in PASS_THROUGH:
            return None
    return None


def _clone_layer(layer):
    return layer.__class__.from_config(layer.get_config())


def quantize_model(model, weights_quantizers=None, activation_quantizers=None, *, weights_method=None,
                   weights_bits: int = 8, per_channel: bool = True, activation_method=None,
                   activation_bits: int = 8, representative_data=None, quantize_inputs: bool = True):
    """A quantized copy of a float Keras model (the float model is left untouched).

    Either give quantizers per layer, or a method and bit widths and let the data set them:

    * weights: each Conv1D/2D/3D, DepthwiseConv2D, Conv2DTranspose and Dense kernel gets a ``weights_method``
      quantizer (narrow range, per output channel unless ``per_channel=False``): thresholds are the channels'
      max |w| (``symmetric``), rounded up to a power of two (``pot``), or their min/max (``uniform``);
    * activations: an :class:`ActivationQuantizationHolder` after each model input (``quantize_inputs``) and
      after every layer except those that keep their input's grid (:data:`PASS_THROUGH`: reshapes, max
      pooling, dropout...), as an int8 TFLite model requantizes each op's output; each holder has a range
      from the float model's outputs on ``representative_data``
      (min/max for ``uniform``; max |x| for ``symmetric``, rounded up to a power of two for ``pot``).

    Args:
        model: A built Sequential or Functional model.
        weights_quantizers: ``{layer name: {weight name: quantizer}}``; overrides ``weights_method`` per layer.
        activation_quantizers: ``{layer name: quantizer}`` for the holder after that layer (an input layer's
            name for a model input); overrides ``activation_method`` per layer.
        weights_method: ``"symmetric"``, ``"pot"`` or ``"uniform"`` (any installed weights method with the
            same parameters), or None to quantize only the layers in ``weights_quantizers``.
        weights_bits: Weight bit width.
        per_channel: One threshold per output channel.
        activation_method: Activation method, or None for holders only where ``activation_quantizers`` says.
        activation_bits: Activation bit width.
        representative_data: Batches of inputs (an array, a list of batches, or a tf.data.Dataset) used when
            ``activation_method`` is set.
        quantize_inputs: With ``activation_method``, also put a holder after each model input.

    Returns:
        A new Keras model with :class:`QuantizationWrapper` and :class:`ActivationQuantizationHolder` layers.

    Raises:
        ValueError: For unknown layer names, a method without ``representative_data``, or a model type this
            helper cannot rebuild (the message says what to do).
    """
    weights_quantizers = dict(weights_quantizers or {})
    activation_quantizers = dict(activation_quantizers or {})
    if not isinstance(model, keras.Model):
        raise TypeError(f"model must be a Keras model; got {type(model).__name__}")
    if not model.built:
        raise ValueError("model is not built; allowed: a model with known input shapes (give it an Input)")
    names = {layer.name for layer in model.layers}
    input_names = [t._keras_history[0].name for t in model.inputs]
    unknown = sorted((set(weights_quantizers) | set(activation_quantizers)) - names - set(input_names))
    if unknown:
        raise ValueError(f"unknown layer names {unknown}; allowed: {sorted(names | set(input_names))}")
    if activation_method is not None and representative_data is None:
        raise ValueError("activation_method needs representative_data (batches of model inputs) for the ranges")

    if activation_method is not None:
        model = split_activations(model)
    # Weights: build the quantizers from the float weights.
    plan_w: dict[str, dict[str, InferableQuantizer]] = {}
    for layer in model.layers:
        if layer.name in weights_quantizers:
            plan_w[layer.name] = dict(weights_quantizers[layer.name])
        elif weights_method is not None and type(layer).__name__ in KERNEL_AXES and layer.weights:
            kernel = find_weight(layer, "kernel")
            plan_w[layer.name] = {"kernel": calibrate_weights(
                kernel.numpy(), weights_method, weights_bits, per_channel, KERNEL_AXES[type(layer).__name__])}

    # Activations: ranges from the float model's outputs.
    plan_a: dict[str, InferableQuantizer] = dict(activation_quantizers)
    if activation_method is not None:
        producers, consumers = _graph(model)
        by_name = {layer.name: layer for layer in model.layers}
        targets = [layer.name for layer in model.layers
                   if layer.name not in plan_a and type(layer).__name__ not in PASS_THROUGH
                   and not _relu_fused(layer, consumers.get(layer.name, []), by_name)]
        if quantize_inputs:
            targets = [n for n in input_names if n not in plan_a] + targets
        fixed = {n: FIXED_OUTPUT_RANGES[_activation_name(by_name[n].activation)] for n in targets
                 if isinstance(by_name.get(n), keras.layers.Activation)
                 and _activation_name(by_name[n].activation) in FIXED_OUTPUT_RANGES}
        averaging = [n for n in targets if type(by_name.get(n)).__name__ in AVERAGING]
        ranges = _observe(model, [n for n in targets if n not in fixed], representative_data)
        for n in targets:
            if n in fixed:
                plan_a[n] = fixed_range_activation(*fixed[n], activation_method, activation_bits)
            elif n in averaging and _upstream_holder(n, producers, by_name, plan_a) is not None:
                plan_a[n] = _upstream_holder(n, producers, by_name, plan_a)
            else:
                plan_a[n] = calibrate_activation(*ranges[n], activation_method, activation_bits)
    for n, q in plan_a.items():
        deserialize_quantizer(q, f"activation_quantizers[{n!r}]", "activation")

    def wrap(layer):
        clone = _clone_layer(layer)
        if layer.name in plan_w:
            return QuantizationWrapper(clone, plan_w[layer.name], name=f"{layer.name}_quantized")
        return clone

    def holders(name):
        return [ActivationQuantizationHolder(plan_a[name], name=f"{name}_activation")] if name in plan_a else []

    new = _rebuild(model, wrap, holders, f"{model.name}_quantized")
    _copy_weights(model, new)
    return new


#: Activations TFLite fuses into the op before them. A layer with another activation (softmax, sigmoid...) is
#: split by :func:`split_activations` so that its pre-activation output gets a holder too.
FUSED_ACTIVATIONS = frozenset({"linear", "relu", "relu6"})


def _activation_name(fn) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def split_activations(model):
    """A float copy of ``model`` in which each layer with an activation TFLite cannot fuse (anything but
    linear, relu, relu6) computes linearly and is followed by an ``Activation`` layer named
    ``"{layer}_{activation}"``; ``model`` itself if there is none. Outputs are unchanged up to float rounding.
    """
    split = {}
    for layer in model.layers:
        fn = getattr(layer, "activation", None)
        if fn is None or isinstance(layer, keras.layers.Activation) or _activation_name(fn) in FUSED_ACTIVATIONS:
            continue
        split[layer.name] = fn

    if not split:
        return model

    def replace(layer):
        if layer.name not in split:
            return _clone_layer(layer)
        config = layer.get_config()
        config["activation"] = "linear"
        return layer.__class__.from_config(config)

    def insert_after(name):
        if name not in split:
            return []
        return [keras.layers.Activation(split[name], name=f"{name}_{_activation_name(split[name])}")]

    new = _rebuild(model, replace, insert_after)
    _copy_weights(model, new)
    return new


def _rebuild(model, replace, insert_after, name=None):
    """A copy of a Sequential or Functional model with each layer replaced by ``replace(layer)`` and the layers
    ``insert_after(name)`` (fresh instances) chained after each layer or model input named ``name``."""
    input_names = [t._keras_history[0].name for t in model.inputs]
    if isinstance(model, keras.Sequential):
        inputs = keras.Input(shape=model.inputs[0].shape[1:], dtype=model.inputs[0].dtype, name=input_names[0])
        x = _chain(inputs, insert_after(input_names[0]))
        for layer in model.layers:
            x = _chain(replace(layer)(x), insert_after(layer.name))
        return keras.Model(inputs, x, name=name or model.name)
    if not KERAS_3:
        return _rebuild_functional_keras2(model, replace, insert_after, name or model.name)
    inputs = [keras.Input(shape=t.shape[1:], dtype=t.dtype, name=n) for t, n in zip(model.inputs, input_names)]
    chained = {id(t): _chain(t, insert_after(n)) for t, n in zip(inputs, input_names)}

    def call(layer, *args, **kwargs):
        args = tf.nest.map_structure(lambda t: chained.get(id(t), t), args)
        original = layer.layer.name if isinstance(layer, QuantizationWrapper) else layer.name
        return _chain(layer(*args, **kwargs), insert_after(original))

    structure = tf.nest.pack_sequence_as(model.input, inputs)
    new = keras.models.clone_model(model, input_tensors=structure, clone_function=replace, call_function=call)
    return keras.Model(new.input, new.output, name=name or model.name)


def _chain(x, layers):
    for layer in layers:
        x = layer(x)
    return x


def _rebuild_functional_keras2(model, replace, insert_after, name):
    """Keras 2: rewrite the Functional config (layer entries with ``[[name, node, tensor, kwargs], ...]``
    inbound nodes), replacing layers and inserting new ones, and rebuild it with ``Model.from_config``."""
    config = model.get_config()
    by_name = {layer.name: layer for layer in model.layers}
    entries, inserted, renames = [], set(), {}
    for entry in config["layers"]:
        name = entry["name"]
        layer = by_name[name]
        nodes = max(1, len(entry["inbound_nodes"]))
        if isinstance(layer, keras.layers.InputLayer):
            last = name
            entries.append(entry)
        else:
            new = replace(layer)
            last = new.name
            entries.append({**keras.layers.serialize(new), "name": last, "inbound_nodes": entry["inbound_nodes"]})
        for extra in insert_after(name):
            inserted.add(extra.name)
            entries.append({**keras.layers.serialize(extra), "name": extra.name,
                            "inbound_nodes": [[[last, i, 0, {}]] for i in range(nodes)]})
            last = extra.name
        if last != name:
            renames.update({(name, i): last for i in range(nodes)})

    def rename(ref):
        if not isinstance(ref, list) or len(ref) < 3 or not isinstance(ref[0], str):
            raise ValueError(f"unexpected Keras 2 inbound node {ref!r}; quantize this model with Keras 3")
        return [renames.get((ref[0], ref[1]), ref[0]), *ref[1:]]

    for entry in entries:
        if entry["name"] not in inserted:
            entry["inbound_nodes"] = [[rename(ref) for ref in node] for node in entry["inbound_nodes"]]
    config = {**config, "name": name, "layers": entries,
              "output_layers": [rename(ref) for ref in config["output_layers"]]}
    return keras.Model.from_config(config)


def _copy_weights(model, new) -> None:
    by_name = {}
    for layer in new.layers:
        if isinstance(layer, QuantizationWrapper):
            by_name[layer.layer.name] = layer
        else:
            by_name[layer.name] = layer
    for layer in model.layers:
        target = by_name.get(layer.name)
        if target is not None and layer.weights:
            target.set_weights(layer.get_weights())


def _observe(model, names, data) -> dict[str, tuple[float, float]]:
    """Min and max of the named layers' outputs (or inputs, for input layer names) over ``data``."""
    by_name = {layer.name: layer for layer in model.layers}
    input_names = [t._keras_history[0].name for t in model.inputs]
    tensors = []
    for n in names:
        if n in input_names:
            tensors.append(model.inputs[input_names.index(n)])
        else:
            tensors.append(by_name[n].output)
    probe = keras.Model(model.inputs, tensors)
    lows = np.full(len(names), np.inf)
    highs = np.full(len(names), -np.inf)
    seen = 0
    for batch in _batches(data):
        outs = probe(batch if len(batch) > 1 else batch[0], training=False)
        if not isinstance(outs, (list, tuple)):
            outs = [outs]
        for i, o in enumerate(outs):
            o = np.asarray(o, dtype=np.float64)
            lows[i] = min(lows[i], float(o.min()))
            highs[i] = max(highs[i], float(o.max()))
        seen += 1
    if not seen:
        raise ValueError("representative_data is empty; allowed: at least one batch of model inputs")
    return {n: (lows[i], highs[i]) for i, n in enumerate(names)}


# -- loading ------------------------------------------------------------------------------------------------
def load_model(path, *args, **kwargs):
    """``keras.models.load_model`` for models holding iqcore layers (same arguments, ``safe_mode`` included).

    Discovers the installed plugins and registers iqcore's layers first: Keras 3 does not import a registered
    class's module by itself.

    Raises:
        ValueError: If a quantizer's method has no installed plugin (naming the method and the distribution
            to install) or a stored quantizer config is invalid (naming the parameter).
    """
    registry.entries()
    return keras.models.load_model(os.fspath(path) if isinstance(path, os.PathLike) else path, *args, **kwargs)
