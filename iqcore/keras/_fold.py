"""Float rewrites :func:`iqcore.keras.quantize_model` makes before calibrating, so that the quantized model
rounds where an int8 TFLite model rounds and its weights are the weights the file holds:

* :func:`split_separable`: a ``SeparableConv2D`` becomes its ``DepthwiseConv2D`` and a 1x1 ``Conv2D`` (TFLite
  runs and requantizes them as two ops);
* :func:`fold_batch_norms`: a ``BatchNormalization`` that alone consumes the linear output of a convolution or
  Dense layer is folded into that layer's kernel and bias, as the TFLite converter, tfmot and MCT do.

Both leave every output unchanged up to float rounding.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from iqcore.keras._graph import Rewrite, graph
from iqcore.keras._layers import find_weight

keras = tf.keras
layers = keras.layers


def _linear(layer) -> bool:
    fn = getattr(layer, "activation", None)
    return fn is None or getattr(fn, "__name__", "") == "linear"


def _channels_last(layer) -> bool:
    return layer.get_config().get("data_format", "channels_last") in (None, "channels_last")


def split_separable(model):
    """``model`` with each channels-last ``SeparableConv2D`` ``s`` replaced by a ``DepthwiseConv2D`` named ``s``
    and a 1x1 ``Conv2D`` named ``s_pointwise`` (bias and activation); ``model`` itself if there is none."""
    rewrite = Rewrite()
    for layer in model.layers:
        if isinstance(layer, layers.SeparableConv2D) and _channels_last(layer):
            c = layer.get_config()
            rewrite.replace[layer.name] = lambda old, c=c: layers.DepthwiseConv2D(
                c["kernel_size"], strides=c["strides"], padding=c["padding"], depth_multiplier=c["depth_multiplier"],
                dilation_rate=c["dilation_rate"], use_bias=False, name=old.name, dtype=c.get("dtype"))
            rewrite.after[layer.name] = [lambda c=c: layers.Conv2D(
                c["filters"], 1, use_bias=c["use_bias"], activation=c["activation"], name=f"{c['name']}_pointwise",
                dtype=c.get("dtype"))]
            rewrite.weights[layer.name] = lambda old, new, name=layer.name: _split_weights(old, new, name)
    return rewrite.apply(model)


def _split_weights(old, new, name: str) -> None:
    layer = old.get_layer(name)
    new.get_layer(name).set_weights([find_weight(layer, "depthwise_kernel").numpy()])
    weights = [find_weight(layer, "pointwise_kernel").numpy()]
    if layer.get_config()["use_bias"]:
        weights.append(find_weight(layer, "bias").numpy())
    new.get_layer(f"{name}_pointwise").set_weights(weights)


#: Layers a following batch normalization folds into, with the kernel it scales and that kernel's output
#: channel axis (DepthwiseConv2D: its last two axes, input channel times multiplier).
FOLDS_INTO = (
    (layers.DepthwiseConv2D, "depthwise_kernel", None),
    (layers.Conv2DTranspose, "kernel", -2),
    (layers.Conv1D, "kernel", -1),
    (layers.Conv2D, "kernel", -1),
    (layers.Conv3D, "kernel", -1),
    (layers.Dense, "kernel", -1),
)


def _fold_target(layer):
    for cls, weight, axis in FOLDS_INTO:
        if isinstance(layer, cls):
            return weight, axis
    return None


def foldable(model) -> dict[str, str]:
    """``{batch-norm layer name: the layer it folds into}``: each channels-last ``BatchNormalization`` whose
    single input is the linear output of a layer in :data:`FOLDS_INTO` that feeds nothing else."""
    producers, consumers = graph(model)
    by_name = {layer.name: layer for layer in model.layers}
    outputs = {t._keras_history[0].name for t in model.outputs}
    pairs = {}
    for layer in model.layers:
        if not isinstance(layer, layers.BatchNormalization):
            continue
        axis = layer.get_config().get("axis", -1)
        axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
        rank = len(layer.input.shape) if hasattr(layer, "input") else None
        if not isinstance(axis, int) or rank is None or axis % rank != rank - 1:
            continue
        feeding = producers.get(layer.name, [])
        if len(feeding) != 1 or feeding[0] not in by_name:
            continue
        prev = by_name[feeding[0]]
        if _fold_target(prev) is None or not _linear(prev) or not _channels_last(prev):
            continue
        if consumers.get(prev.name) != [layer.name] or prev.name in outputs:
            continue
        pairs[layer.name] = prev.name
    return pairs


def _bn_scale_shift(bn) -> tuple[np.ndarray, np.ndarray]:
    """``(s, t)`` with ``bn(x) == s * x + t`` per channel at inference, in float64."""
    config = bn.get_config()
    mean = find_weight(bn, "moving_mean").numpy().astype(np.float64)
    var = find_weight(bn, "moving_variance").numpy().astype(np.float64)
    gamma = find_weight(bn, "gamma").numpy().astype(np.float64) if config.get("scale", True) else 1.0
    beta = find_weight(bn, "beta").numpy().astype(np.float64) if config.get("center", True) else 0.0
    s = gamma / np.sqrt(var + float(config.get("epsilon", 1e-3)))
    return s * np.ones_like(mean), beta - s * mean


def _folded_weights(layer, bn) -> tuple[np.ndarray, np.ndarray]:
    """The kernel and bias of ``layer`` followed by ``bn``, as one layer."""
    weight, axis = _fold_target(layer)
    kernel = find_weight(layer, weight).numpy().astype(np.float64)
    s, t = _bn_scale_shift(bn)
    if axis is None:  # depthwise: output channel c * multiplier + m
        shaped = s.reshape(kernel.shape[-2], kernel.shape[-1])
        kernel = kernel * shaped
    else:
        layout = [1] * kernel.ndim
        layout[axis] = -1
        kernel = kernel * s.reshape(layout)
    bias = find_weight(layer, "bias").numpy().astype(np.float64) if layer.get_config().get("use_bias") else 0.0
    return kernel, s * bias + t


def fold_batch_norms(model):
    """``(folded model, {batch-norm name: layer it was folded into})``; ``model`` itself if nothing folds.

    Each folded layer keeps its name and gains a bias; the batch normalization disappears from the graph.
    """
    pairs = foldable(model)
    return fold_rewrite(model, pairs).apply(model), pairs


def fold_rewrite(model, pairs: dict[str, str]) -> Rewrite:
    """The :class:`Rewrite` that folds each batch normalization of ``pairs`` (:func:`foldable`) into its layer."""
    rewrite = Rewrite(drop=frozenset(pairs))
    for bn, prev in pairs.items():
        rewrite.replace[prev] = _with_bias
        rewrite.weights[prev] = lambda old, new, prev=prev, bn=bn: _set_folded(old, new, prev, bn)
    return rewrite


def _with_bias(layer):
    config = layer.get_config()
    config["use_bias"] = True
    return layer.__class__.from_config(config)


def _set_folded(old, new, prev: str, bn: str) -> None:
    layer = old.get_layer(prev)
    kernel, bias = _folded_weights(layer, old.get_layer(bn))
    target = new.get_layer(prev)
    weight, _ = _fold_target(layer)
    find_weight(target, weight).assign(kernel.astype(np.float32))
    find_weight(target, "bias").assign(bias.astype(np.float32))


def _per_channel(values, channels: int) -> np.ndarray | None:
    values = np.asarray(values, np.float64).reshape(-1)
    return np.broadcast_to(values, (channels,)) if values.size in (1, channels) else None


def _affine(layer) -> tuple[np.ndarray, np.ndarray] | None:
    """``(s, t)`` with ``layer(x) == s * x + t`` per channel of a channels-last image, or None."""
    shape = getattr(layer, "input", None)
    shape = None if shape is None or isinstance(shape, (list, tuple)) else shape.shape
    if shape is None or len(shape) != 4 or shape[-1] is None:
        return None
    channels = int(shape[-1])
    config = layer.get_config()
    if isinstance(layer, layers.BatchNormalization):
        axis = config.get("axis", -1)
        axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
        return _bn_scale_shift(layer) if isinstance(axis, int) and axis % 4 == 3 else None
    if isinstance(layer, layers.Rescaling):
        s, t = _per_channel(config["scale"], channels), _per_channel(config["offset"], channels)
        return None if s is None or t is None else (s, t)
    if isinstance(layer, layers.Normalization):
        axis = tuple(config.get("axis") or ())
        if axis not in ((-1,), (3,)) or getattr(layer, "mean", None) is None:
            return None
        mean = _per_channel(np.asarray(layer.mean), channels)
        std = _per_channel(np.maximum(np.sqrt(np.asarray(layer.variance, np.float64)), 1e-7), channels)
        if mean is None or std is None:
            return None
        return (std, mean) if config.get("invert") else (1.0 / std, -mean / std)
    return None


def affine_as_depthwise(model, batch_norm: bool = True):
    """``model`` with each per-channel affine layer on images (a ``Rescaling``, a ``Normalization`` and, with
    ``batch_norm``, a ``BatchNormalization`` left after folding) replaced by a 1x1 ``DepthwiseConv2D`` of the
    same name computing the same ``s * x + t``: one int8 TFLite op with per-channel weights, where the layer
    itself becomes a MUL and an ADD whose intermediate result has no grid (and stays float)."""
    return affine_rewrite(model, batch_norm).apply(model)


def affine_rewrite(model, batch_norm: bool = True, skip=frozenset()) -> Rewrite:
    """The :class:`Rewrite` of :func:`affine_as_depthwise`, leaving out the layers named in ``skip``."""
    kinds = (layers.Rescaling, layers.Normalization) + ((layers.BatchNormalization,) if batch_norm else ())
    rewrite = Rewrite()
    for layer in model.layers:
        if isinstance(layer, kinds) and layer.name not in skip and (a := _affine(layer)) is not None:
            rewrite.replace[layer.name] = lambda old: layers.DepthwiseConv2D(1, use_bias=True, name=old.name)
            rewrite.weights[layer.name] = lambda old, new, name=layer.name, a=a: new.get_layer(name).set_weights(
                [np.asarray(a[0], np.float32).reshape(1, 1, -1, 1), np.asarray(a[1], np.float32)])
    return rewrite
