"""From a float Keras model to a quantized one: calibration from weights and data, and the model rebuild that
inserts wrappers and holders where an int8 TFLite model rounds. Public names are re-exported by
:mod:`iqcore.keras`."""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from iqcore import registry
from iqcore.keras_layers import (
    KERAS_3,
    ActivationQuantizationHolder,
    QuantizationWrapper,
    deserialize_quantizer,
    find_weight,
)
from iqcore.quantizer import InferableQuantizer

keras = tf.keras


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


def power_of_two_ceil(values) -> np.ndarray:
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
