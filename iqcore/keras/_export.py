"""The TFLite export form of quantized weights: TensorFlow FakeQuant ops the converter turns into int8 weights
with exactly the quantizer's scales, and the layer rewrites the converter accepts (see docs/tflite.md)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from iqcore._quantizer import InferableQuantizer


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


def is_plain_conv1d(layer) -> bool:
    """A channels-last, ungrouped Conv1D (the form :func:`conv1d_as_conv2d` rewrites)."""
    if type(layer).__name__ != "Conv1D":
        return False
    config = layer.get_config()
    return config.get("data_format", "channels_last") == "channels_last" and config.get("groups", 1) == 1


def conv1d_as_conv2d(layer, inputs, kernel):
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


def dense_as_conv(layer, inputs, kernel):
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


#: Keras layers exported as TFLite's int8 TRANSPOSE_CONV (a Conv1DTranspose as a height-1 one).
TRANSPOSED_CONVS = ("Conv1DTranspose", "Conv2DTranspose")


def is_transposed_conv(layer) -> bool:
    """A layer :func:`transposed_conv_form` exports (a Conv1DTranspose or Conv2DTranspose)."""
    return type(layer).__name__ in TRANSPOSED_CONVS


def transposed_conv_problem(layer, quantizers: dict) -> str | None:
    """Why a wrapped transposed convolution has no int8 TRANSPOSE_CONV form, or None."""
    config = layer.get_config()
    if config.get("data_format", "channels_last") != "channels_last":
        return f"data_format is {config['data_format']!r}; allowed: 'channels_last'"
    dilation = np.atleast_1d(config.get("dilation_rate", 1))
    if np.any(dilation != 1):
        return (f"dilation_rate is {tuple(dilation.tolist())}; TFLite's TRANSPOSE_CONV has no dilation, allowed: "
                "dilation_rate=1")
    if set(quantizers) != {"kernel"}:
        return f"weights_quantizers has {sorted(quantizers)}; allowed: only 'kernel' (the bias is stored in int32)"
    g = quantizers["kernel"].grid
    if g.axis is not None and g.axis != g.rank - 2:
        return (f"the kernel quantizer is per channel on axis {g.axis}; TFLite stores a TRANSPOSE_CONV filter per "
                f"output channel, allowed: axis {g.rank - 2} (-2, the output channels) or per tensor")
    return None


def transposed_conv_form(layer, inputs, tag: str, *args, **kwargs):
    """A transposed convolution computed by the layer itself, with no FakeQuant on its kernel.

    The converter legalizes the convolution with a transpose of the filter from ``[..., out, in]`` to
    ``[out, ..., in]``, and refuses a per-channel FakeQuant before it ("'tfl.transpose' op has mismatched
    quantized axes"). Without one, it stores the (already quantized) kernel as int8 per output channel on
    scales of its own; :func:`iqcore.keras._tflite.write_transposed_weights` then writes the quantizer's codes and
    scales over them, finding the filter by the name scope ``tag``.
    """
    activation = getattr(layer, "activation", None)
    with tf.name_scope(tag):
        if activation is None or getattr(activation, "__name__", "") == "linear":
            return layer(inputs, *args, **kwargs)
        # The converter fuses an activation into TRANSPOSE_CONV only through a bias ADD, and drops an ADD of
        # zeros (no bias, or a zero one): then the activation stays apart and the convolution's output float.
        # An added bias far below one int32 step keeps the ADD, and is stored as 0.
        object.__setattr__(layer, "activation", _linear)
        try:
            y = layer(inputs, *args, **kwargs)
        finally:
            object.__setattr__(layer, "activation", activation)
        return activation(y + tf.constant(NEGLIGIBLE_BIAS, y.dtype, [int(y.shape[-1])]))


#: A bias value that keeps the converter's bias ADD and rounds to int32 0 on any TFLite bias step.
NEGLIGIBLE_BIAS = 1e-30


def _linear(x):
    return x
