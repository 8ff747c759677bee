"""From a float Keras model to a quantized one: observe, calibrate (each method calibrates itself), rebuild
with wrappers and holders where an int8 TFLite model rounds, and optionally correct the biases."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from iqcore import _registry as registry
from iqcore import calibration
from iqcore._quantizer import InferableQuantizer
from iqcore.keras._fold import affine_rewrite, fold_rewrite, foldable, split_separable
from iqcore.keras._graph import (
    Rewrite,
    clone_layer,
    copy_weights,
    graph,
    input_names,
    nodes,
    operation_arguments,
    operation_names,
    rebuild,
)
from iqcore.keras._integer import (
    INTEGER_ACTIVATIONS,
    RUNTIMES,
    IntegerActivation,
    IntegerAdd,
    IntegerAveragePooling2D,
    IntegerConcatenate,
    IntegerConstantOperation,
    IntegerMultiply,
    IntegerSimulation,
    check_convertible,
    is_simulated,
)
from iqcore.keras._layers import (
    KERAS_3,
    ActivationQuantizationHolder,
    QuantizationWrapper,
    deferred_quantization,
    deserialize_quantizer,
    find_weight,
)
from iqcore.keras._observe import observe
from iqcore.keras._tflite import output_channel_scales

keras = tf.keras
layers = keras.layers

#: Layers whose outputs stay on their input's grid: no holder after them. Every other layer's output gets one,
#: as TFLite requantizes every int8 op's output (an average pool included).
PASS_THROUGH = (
    layers.InputLayer, layers.Flatten, layers.Reshape, layers.Permute, layers.Dropout, layers.SpatialDropout1D,
    layers.SpatialDropout2D, layers.MaxPooling1D, layers.MaxPooling2D, layers.MaxPooling3D,
    layers.GlobalMaxPooling1D, layers.GlobalMaxPooling2D, layers.GlobalMaxPooling3D, layers.Cropping1D,
    layers.Cropping2D, layers.Cropping3D, layers.Identity, layers.ZeroPadding1D, layers.ZeroPadding2D,
    layers.ZeroPadding3D, ActivationQuantizationHolder,
)

#: ``keras.ops`` operations (nodes of a Keras 3 Functional model) whose outputs stay on their input's grid.
PASS_THROUGH_OPS = frozenset({"Reshape", "Transpose", "ExpandDims", "Squeeze", "MaxPool"})

#: Layers whose ReLU consumer the converter fuses into them (no int8 rounding between the two).
RELU_FUSING = (layers.Conv1D, layers.Conv2D, layers.DepthwiseConv2D, layers.Dense, layers.Add, layers.Subtract,
               layers.Multiply)

#: ``keras.ops`` operations whose ReLU consumer the converter fuses into them.
RELU_FUSING_OPS = frozenset({"Add", "Subtract", "Multiply"})

#: Average pooling keeps its input's grid in int8 TFLite when the output has the input's scale: its holder
#: takes the upstream holder's quantizer, so the interpreter rounds the average once, as Keras does. Global
#: average pooling (MEAN) gets a calibrated range of its own (docs/keras.md has the measurements).
AVERAGING = (layers.AveragePooling1D, layers.AveragePooling2D, layers.AveragePooling3D)

#: Activations whose int8 TFLite kernels have a fixed output grid (softmax and logistic: step 1/256 from 0;
#: tanh: step 1/128 around 0), as a half-open range of 2**bits codes.
FIXED_OUTPUT_RANGES = {"softmax": (0.0, 1.0), "sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0)}

#: Activations TFLite fuses into the op before them; a layer with another one is split by
#: :func:`split_activations` so that its pre-activation output gets a holder too.
FUSED_ACTIVATIONS = frozenset({"linear", "relu", "relu6"})


def _calibrated(cls, observation, settings, where: str) -> InferableQuantizer:
    """``cls.calibrate(observation, settings)``, with errors that name the method and ``where``."""
    try:
        return cls.calibrate(observation, settings)
    except NotImplementedError:
        raise ValueError(
            f"{where}: method {cls.method!r} ({cls.target}, {cls.__name__}) cannot calibrate itself: the class "
            "does not implement calibrate(observation, settings); give its quantizers per layer instead "
            "(weights_quantizers / activation_quantizers), or ask its plugin's author for calibration"
        ) from None
    except (TypeError, ValueError) as e:
        raise type(e)(f"{where}: method {cls.method!r} could not calibrate: {e}") from None


def calibrate_weights(weight, method: str, num_bits: int = 8, per_channel: bool = True, axis: int = -1,
                      narrow_range: bool = True, strategy: str = "minmax") -> InferableQuantizer:
    """A ``method`` weights quantizer calibrated on ``weight`` by the method itself.

    Args:
        weight: The float weight array.
        method: Any installed weights method whose class implements ``calibrate``.
        num_bits: Bit width.
        per_channel: One quantizer channel per index of ``axis``.
        axis: The channel axis (negative from the end allowed).
        narrow_range: Leave the lowest code unused (int8 TFLite weights need it).
        strategy: ``"minmax"``, ``"percentile"`` or ``"mse"`` (see :mod:`iqcore.calibration`).

    Raises:
        ValueError: For an unknown method, an axis outside the weight's rank, or a method that cannot
            calibrate itself (the message names it).
    """
    w = np.asarray(weight)
    if not -w.ndim <= axis < w.ndim:
        raise ValueError(f"axis is {axis} for a weight of rank {w.ndim}; allowed: {-w.ndim}..{w.ndim - 1}")
    observation = calibration.WeightsObservation(w.astype(np.float32), axis % w.ndim if per_channel else None)
    settings = calibration.Settings(num_bits, strategy, narrow_range)
    return _calibrated(registry.get_class(method, "weights"), observation, settings, "weights")


def calibrate_activation(observed, method: str, num_bits: int = 8, strategy: str = "minmax",
                         narrow_range: bool = False) -> InferableQuantizer:
    """A ``method`` activation quantizer calibrated by the method itself.

    Args:
        observed: An :class:`iqcore.calibration.ActivationObservation`, or an array of observed values.
        method: Any installed activation method whose class implements ``calibrate``.
        num_bits: Bit width.
        strategy: ``"minmax"``, ``"percentile"`` or ``"mse"``.
        narrow_range: Leave one code unused.
    """
    if not isinstance(observed, calibration.ActivationObservation):
        observed = calibration.ActivationObservation.of(observed)
    settings = calibration.Settings(num_bits, strategy, narrow_range)
    return _calibrated(registry.get_class(method, "activation"), observed, settings, "activation")


def _activation_name(fn) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def _is_relu(layer) -> bool:
    if isinstance(layer, layers.ReLU):
        config = layer.get_config()
        return not config.get("negative_slope") and not config.get("threshold") and \
            config.get("max_value") in (None, 6.0)
    return isinstance(layer, layers.Activation) and _activation_name(layer.activation) in ("relu", "relu6")


def _relu_max(layer) -> float | None:
    """The clamp of a ReLU layer or activation (6.0 for relu6), None for a plain ReLU."""
    if isinstance(layer, layers.ReLU):
        clamp = layer.get_config().get("max_value")
        return None if clamp is None else float(clamp)  # Keras 2 stores a NumPy scalar
    return 6.0 if _activation_name(layer.activation) == "relu6" else None


#: The TF functions of Keras 2 ``TFOpLambda`` layers, by the ``keras.ops`` operation they match.
TF_OP_KINDS = {"__operators__.add": "Add", "math.add": "Add", "math.multiply": "Multiply",
               "math.subtract": "Subtract"}


def _operation_kind(node) -> str | None:
    """The kind of a graph node that is an operation rather than a layer (``"Add"``, ``"Multiply"``...): a Keras 3
    ``keras.ops`` operation's class name, or the matching name of a Keras 2 ``TFOpLambda``'s TF function."""
    if type(node).__name__ == "TFOpLambda":
        return TF_OP_KINDS.get(getattr(node, "symbol", ""))
    return None if isinstance(node, keras.layers.Layer) else type(node).__name__


def _keeps_grid(node) -> bool:
    """Whether ``node``'s output stays on its input's grid (no holder after it)."""
    if isinstance(node, keras.layers.Layer):
        return isinstance(node, PASS_THROUGH)
    return type(node).__name__ in PASS_THROUGH_OPS


def _relu_fused(layer, consumer_names, by_name) -> bool:
    """Whether TFLite fuses the ReLU that alone consumes ``layer``'s output into it (then no holder between).

    Several identical ReLUs of one output count as one: TensorFlow's graph optimizer merges them (common
    subexpression elimination, NASNet's cells apply ``relu`` to one tensor in each branch) before the
    converter fuses the merged ReLU into the op."""
    fusing = isinstance(layer, RELU_FUSING) or _operation_kind(layer) in RELU_FUSING_OPS
    if not fusing or not consumer_names:
        return False
    relus = [by_name[n] for n in consumer_names]
    return all(_is_relu(r) for r in relus) and len({_relu_max(r) for r in relus}) == 1


def _fixed_range(layer) -> tuple[float, float] | None:
    if isinstance(layer, layers.Activation):
        return FIXED_OUTPUT_RANGES.get(_activation_name(layer.activation))
    return None


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
        if not _keeps_grid(by_name.get(name)):
            return None
    return None


def split_activations(model):
    """A float copy of ``model`` in which each layer with an activation TFLite cannot fuse (anything but
    linear, relu, relu6) computes linearly and is followed by an ``Activation`` layer named
    ``"{layer}_{activation}"``; ``model`` itself if there is none. Outputs are unchanged up to float rounding.
    """
    return activation_rewrite(model).apply(model)


def activation_rewrite(model) -> Rewrite:
    """The :class:`Rewrite` of :func:`split_activations`."""
    rewrite = Rewrite()
    for layer in model.layers:
        fn = getattr(layer, "activation", None)
        if fn is None or isinstance(layer, layers.Activation) or _activation_name(fn) in FUSED_ACTIVATIONS:
            continue
        rewrite.replace[layer.name] = _linear_copy
        rewrite.after[layer.name] = [lambda fn=fn, name=layer.name: layers.Activation(
            fn, name=f"{name}_{_activation_name(fn)}")]
    return rewrite


def _linear_copy(layer):
    config = layer.get_config()
    config["activation"] = "linear"
    return layer.__class__.from_config(config)


def _holder_targets(model, plan_a, quantize_inputs: bool) -> list[str]:
    """The layers (and model inputs) whose output gets a calibrated holder: every layer whose int8 TFLite op
    requantizes its output, unless a fused ReLU follows it."""
    _, consumers = graph(model)
    by_name = {layer.name: layer for layer in nodes(model)}
    targets = [layer.name for layer in nodes(model)
               if layer.name not in plan_a and not _keeps_grid(layer)
               and not _relu_fused(layer, consumers.get(layer.name, []), by_name)]
    if quantize_inputs:
        targets = [n for n in input_names(model) if n not in plan_a] + targets
    return targets


def _share_concat_grids(model, plan_a) -> None:
    """Give each input of a ``Concatenation`` that feeds nothing else the concatenation's quantizer: the TFLite
    converter makes such a producer write straight onto the concatenation's grid (one rounding), and only an
    input with other consumers keeps its own grid, requantized by a QUANTIZE op (two roundings, as in Keras).

    An input that comes through layers that keep their input's grid (padding, max pooling) is requantized
    where that chain starts, so that every consumer of it reads the concatenation's grid: a holder with the
    concatenation's quantizer follows it."""
    producers, consumers = graph(model)
    by_name = {layer.name: layer for layer in nodes(model)}
    for layer in model.layers:
        if not isinstance(layer, layers.Concatenate) or layer.name not in plan_a:
            continue
        for p in producers.get(layer.name, []):
            if p in plan_a and consumers.get(p) == [layer.name] and p not in input_names(model):
                plan_a[p] = plan_a[layer.name]
            elif p not in plan_a and _keeps_grid(by_name.get(p)) and \
                    _upstream_holder(p, producers, by_name, plan_a) is not None:
                plan_a[p] = plan_a[layer.name]


def _plan_activations(model, targets, observed, plan_a, method, settings) -> None:
    producers, _ = graph(model)
    by_name = {layer.name: layer for layer in nodes(model)}
    cls = registry.get_class(method, "activation")
    for n in targets:
        layer = by_name.get(n)
        if isinstance(layer, AVERAGING) and _upstream_holder(n, producers, by_name, plan_a) is not None:
            plan_a[n] = _upstream_holder(n, producers, by_name, plan_a)
            continue
        fixed = _fixed_range(layer)
        observation = observed[n].observation(fixed)
        plan_a[n] = _calibrated(cls, observation, settings, f"activation of {n!r}")
    _share_concat_grids(model, plan_a)


def _plan_weights(model, weights_quantizers, method, per_channel, settings) -> dict[str, dict]:
    plan: dict[str, dict] = {}
    cls = registry.get_class(method, "weights") if method is not None else None
    for layer in model.layers:
        if layer.name in weights_quantizers:  # an empty dict leaves the layer unquantized
            if weights_quantizers[layer.name]:
                plan[layer.name] = dict(weights_quantizers[layer.name])
            continue
        info = registry.layer_info(layer) if cls is not None and layer.weights else None
        if info is None:
            continue
        plan[layer.name] = {}
        for spec in info.weights:
            value = find_weight(layer, spec.name).numpy()
            axis = spec.channel_axis % value.ndim if per_channel else None
            observation = calibration.WeightsObservation(value.astype(np.float32), axis)
            plan[layer.name][spec.name] = _calibrated(cls, observation, settings, f"layer {layer.name!r}")
    return plan


def _bias_shift(spec, kernel: np.ndarray, quantized: np.ndarray, input_mean: np.ndarray) -> np.ndarray | None:
    """The mean output shift ``(quantized - kernel) . E[input]`` per output channel, or None if the layer's
    kernel has no input-channel axis registered or the shapes do not match."""
    if spec.input_axis is None:
        return None
    rank = kernel.ndim
    in_axis, out_axis = spec.input_axis % rank, spec.channel_axis % rank
    if kernel.shape[in_axis] != input_mean.size:
        return None
    layout = [1] * rank
    layout[in_axis] = -1
    weighted = (quantized.astype(np.float64) - kernel) * input_mean.reshape(layout)
    if in_axis == out_axis:  # depthwise: output channel (input channel, multiplier) is the trailing pair
        return weighted.sum(axis=tuple(range(rank - 2))).reshape(-1)
    return weighted.sum(axis=tuple(i for i in range(rank) if i != out_axis))


def _correct_biases(model, new, plan_w, input_stats) -> int:
    """Subtract each wrapped layer's mean output shift from its bias; returns the layers corrected."""
    corrected = 0
    by_name = {layer.name: layer for layer in nodes(model)}
    for wrapper in (layer for layer in new.layers if isinstance(layer, QuantizationWrapper)):
        original = by_name.get(wrapper.layer.name)
        info = registry.layer_info(original) if original is not None else None
        mean = input_stats.get(wrapper.layer.name)
        if original is None or info is None or mean is None or mean.channel_mean() is None \
                or not getattr(original, "use_bias", False):
            continue
        shift = None
        for spec in info.weights:  # each quantized weight's shift adds up
            q = plan_w[original.name].get(spec.name)
            if q is None:
                continue
            q = deserialize_quantizer(q, f"weights_quantizers[{original.name!r}][{spec.name!r}]", "weights")
            kernel = find_weight(original, spec.name).numpy()
            part = _bias_shift(spec, kernel, q.reference(kernel.astype(np.float32)), mean.channel_mean())
            if part is None:
                continue
            shift = part if shift is None else shift + part
        bias = find_weight(wrapper.layer, "bias")
        if shift is None or shift.shape != tuple(bias.shape):
            continue
        value = bias.numpy()
        bias.assign((value.astype(np.float64) - shift).astype(value.dtype))
        corrected += 1
    return corrected


def _snap_biases(model, new, plan_a) -> int:
    """Round each quantized layer's bias onto the int32 grid TFLite stores it on (step: the input holder's scale
    times each output channel's weight scale), so that Keras adds the bias the interpreter adds. Layers whose
    input grid is unknown (no holder upstream) keep theirs. Returns the number of layers snapped."""
    producers, _ = graph(model)
    by_name = {layer.name: layer for layer in nodes(model)}
    snapped = 0
    for wrapper in (layer for layer in new.layers if isinstance(layer, QuantizationWrapper)):
        inner = wrapper.layer
        upstream = _upstream_holder(inner.name, producers, by_name, plan_a)
        info = registry.layer_info(inner)
        if upstream is None or upstream.grid.axis is not None or info is None or not getattr(inner, "use_bias", 0):
            continue
        spec = info.weights[0]
        if spec.name not in wrapper.weights_quantizers:
            continue
        bias = find_weight(inner, "bias")
        value = bias.numpy()
        scale = output_channel_scales(wrapper, spec.name, value.size).astype(np.float64)
        if scale.shape != value.shape:
            continue
        step = float(np.float64(upstream.quantization_params().scale)) * scale
        bias.assign((np.round(value.astype(np.float64) / step) * step).astype(value.dtype))
        snapped += 1
    return snapped


def _constant_plan(model, weights_quantizers: dict) -> dict[str, dict]:
    """Take the entries keyed by constant position out of ``weights_quantizers``: ``{node name: {position:
    quantizer}}`` for the nodes whose constant operands get quantized (Keras 3 Functional models)."""
    plan = {}
    for name, entry in list(weights_quantizers.items()):
        positions = {k: q for k, q in entry.items() if not isinstance(k, str)}
        if not positions:
            continue
        if len(positions) != len(entry):
            raise ValueError(f"weights_quantizers[{name!r}] mixes weight names and constant positions; allowed: "
                             "one or the other")
        if not KERAS_3 or isinstance(model, keras.Sequential):
            raise ValueError(
                f"weights_quantizers[{name!r}] quantizes constant operands, which quantize_model does on Keras 3 "
                "Functional models; allowed here: wrap the layer yourself, QuantizationWrapper(layer, {position: "
                "q}, weight_values={position: constant}), see docs/keras.md"
            )
        plan[name] = {k: deserialize_quantizer(q, f"weights_quantizers[{name!r}][{k!r}]", "weights")
                      for k, q in positions.items()}
        del weights_quantizers[name]
    return plan


def _integer_plan(model, plan_w, plan_a, runtime) -> dict[str, IntegerSimulation]:
    """``{layer name: IntegerSimulation}`` for each quantized layer :mod:`iqcore.keras._integer` covers whose input
    comes from a holder and whose output (or the output of the ReLU TFLite fuses into it) goes to one."""
    if runtime is None:
        return {}
    if runtime not in RUNTIMES:
        raise ValueError(f"integer_simulation is {runtime!r}; allowed: None or one of {list(RUNTIMES)}")
    producers, consumers = graph(model)
    by_name = {layer.name: layer for layer in nodes(model)}
    plan = {}
    for name, quantizers in plan_w.items():
        layer = by_name[name]
        if not is_simulated(layer) or set(quantizers) != {"kernel"}:
            continue
        source = _upstream_holder(name, producers, by_name, plan_a)
        output, activation = _output_holder(layer, consumers, by_name, plan_a)
        if source is None or output is None:
            continue
        plan[name] = IntegerSimulation(deserialize_quantizer(source, f"the holder before {name!r}", "activation"),
                                       deserialize_quantizer(output, f"the holder after {name!r}", "activation"),
                                       activation, runtime)
    return plan


def _grid_params(q) -> tuple:
    """The (scale, zero point, range) a holder quantizer (or its stored form) puts its output on."""
    p = deserialize_quantizer(q, "a holder", "activation").quantization_params()
    return float(p.scale), int(p.zero_point), int(p.qmin), int(p.qmax)


def _holder_at(name, producers, by_name, plan_a):
    """The holder quantizer of the tensor ``name`` outputs (its own, or through pass-through layers), or None."""
    if name in plan_a:
        return plan_a[name]
    if _keeps_grid(by_name.get(name)):
        return _upstream_holder(name, producers, by_name, plan_a)
    return None


def _output_holder(layer, consumers, by_name, plan_a):
    """``(holder quantizer after layer, fused activation)``: its own holder, or the one after the ReLU TFLite
    fuses into it; ``(None, "linear")`` if neither."""
    if layer.name in plan_a:
        return plan_a[layer.name], "linear"
    if _relu_fused(layer, consumers.get(layer.name, []), by_name):
        relus = [by_name[n] for n in consumers[layer.name]]
        grids = {_grid_params(plan_a[r.name]) if r.name in plan_a else None for r in relus}
        if len(grids) == 1 and None not in grids:  # merged ReLUs: one holder grid (one FakeQuant) after them
            return plan_a[relus[0].name], "relu6" if _relu_max(relus[0]) == 6.0 else "relu"
    return None, "linear"


#: ``keras.ops`` operations with a constant operand that :class:`IntegerConstantOperation` computes.
CONSTANT_OPERATIONS = {"Add": "add", "Multiply": "multiply"}


def _constant_operation(op, feeding, producers, consumers, by_name, plan_a) -> IntegerConstantOperation | None:
    """The :class:`IntegerConstantOperation` of a ``keras.ops`` addition or multiplication of a tensor between
    holders by a constant, or None."""
    kind = CONSTANT_OPERATIONS.get(_operation_kind(op) or "")
    arguments = operation_arguments(op)
    constants = [a for a in arguments if not hasattr(a, "_keras_history")]  # not a Keras tensor
    if kind is None or len(arguments) != 2 or len(constants) != 1 or len(feeding) != 1:
        return None
    source = _holder_at(feeding[0], producers, by_name, plan_a)
    output, activation = _output_holder(op, consumers, by_name, plan_a)
    if source is None or output is None:
        return None
    try:
        return IntegerConstantOperation(kind, constants[0], source, output, activation, name=op.name)
    except ValueError:  # a scale ratio XNNPACK does not run, or a constant it cannot hold: the float op stays
        return None


def _integer_merges(model, plan_a) -> dict:
    """``{name: IntegerAdd, IntegerConcatenate or IntegerAveragePooling2D}`` for each two-input ``Add``, each
    ``Concatenate`` and each ``AveragePooling2D`` between holders, where the interpreter's kernels take them."""
    producers, consumers = graph(model)
    by_name = {layer.name: layer for layer in nodes(model)}
    merges: dict = {}
    for layer in nodes(model):
        feeding = producers.get(layer.name, [])
        if _operation_kind(layer) is not None:
            operation = _constant_operation(layer, feeding, producers, consumers, by_name, plan_a)
            if operation is not None:
                merges[layer.name] = operation
            continue
        if type(layer) is layers.Activation and len(feeding) == 1 and \
                _activation_name(layer.activation) in INTEGER_ACTIVATIONS:
            source = _holder_at(feeding[0], producers, by_name, plan_a)
            output, _ = _output_holder(layer, consumers, by_name, plan_a)
            if source is not None and output is not None:
                try:
                    merges[layer.name] = IntegerActivation(_activation_name(layer.activation), source, output,
                                                           name=layer.name)
                except ValueError:  # grids the interpreter's kernel does not take: the float layer stays
                    pass
            continue
        if type(layer) is layers.AveragePooling2D and len(feeding) == 1:
            source = _holder_at(feeding[0], producers, by_name, plan_a)
            if source is not None and plan_a.get(layer.name) is source:
                config = layer.get_config()
                merges[layer.name] = IntegerAveragePooling2D(source, pool_size=config["pool_size"],
                                                             strides=config["strides"], padding=config["padding"],
                                                             name=layer.name)
            continue
        if type(layer) not in (layers.Add, layers.Concatenate, layers.Multiply) or len(feeding) < 2:
            continue
        sources = [_holder_at(p, producers, by_name, plan_a) for p in feeding]
        output, activation = _output_holder(layer, consumers, by_name, plan_a)
        if output is None or any(s is None for s in sources):
            continue
        try:
            if type(layer) is layers.Add and len(feeding) == 2:
                merges[layer.name] = IntegerAdd(sources, output, activation, name=layer.name)
            elif type(layer) is layers.Multiply and len(feeding) == 2 and activation == "linear":
                merges[layer.name] = IntegerMultiply(sources, output, name=layer.name)
            elif type(layer) is layers.Concatenate and activation == "linear":
                merges[layer.name] = IntegerConcatenate(sources, output, axis=layer.get_config()["axis"],
                                                        name=layer.name)
        except ValueError:  # a scale ratio XNNPACK does not run: the float layer stays
            continue
    return merges


def _requantized_holders(model, plan_a) -> dict:
    """``{layer name: source grid}`` for the holders after layers that keep their input's grid (padding, max
    pooling) but hold another one: TFLite requantizes there with an int8 QUANTIZE op."""
    producers, _ = graph(model)
    by_name = {layer.name: layer for layer in nodes(model)}
    sources = {}
    for name, q in plan_a.items():
        if not _keeps_grid(by_name.get(name)):
            continue
        source = _upstream_holder(name, producers, by_name, plan_a)
        if source is not None and source is not q:
            try:
                sources[name] = deserialize_quantizer(source, f"the holder before {name!r}", "activation")
                check_convertible(sources[name], q)
            except ValueError:
                sources.pop(name, None)
    return sources


def _check_arguments(model, weights_quantizers, activation_quantizers, activation_method, representative_data,
                     bias_correction) -> None:
    if not isinstance(model, keras.Model):
        raise TypeError(f"model must be a Keras model; got {type(model).__name__}")
    if not model.built:
        raise ValueError("model is not built; allowed: a model with known input shapes (give it an Input)")
    names = {layer.name for layer in model.layers} | set(input_names(model))
    unknown = sorted((set(weights_quantizers) | set(activation_quantizers)) - names - operation_names(model))
    if unknown:
        raise ValueError(f"unknown layer names {unknown}; allowed: {sorted(names | operation_names(model))}")
    for name, entry in weights_quantizers.items():
        if not isinstance(entry, dict):
            raise TypeError(f"weights_quantizers[{name!r}] must be a dict {{weight name or constant position: "
                            f"quantizer}}; got {type(entry).__name__}")
        if name in operation_names(model) and any(isinstance(k, str) for k in entry):
            weights = sorted(k for k in entry if isinstance(k, str))
            raise ValueError(f"weights_quantizers[{name!r}] names weights {weights} of the operation {name!r}, "
                             "which has none; allowed: constant positions (int)")
    if (activation_method is not None or bias_correction) and representative_data is None:
        needs = "activation_method" if activation_method is not None else "bias_correction"
        raise ValueError(f"{needs} needs representative_data (batches of model inputs) to observe the activations")


def quantize_model(model, weights_quantizers=None, activation_quantizers=None, *, weights_method=None,
                   weights_bits: int = 8, per_channel: bool = True, weights_strategy: str = "minmax",
                   activation_method=None, activation_bits: int = 8, activation_strategy: str = "minmax",
                   representative_data=None, quantize_inputs: bool = True, bias_correction: bool = False,
                   fold_batch_norm: bool = True, integer_simulation: str | None = None, verbose: int = 1):
    """A quantized copy of a float Keras model (the float model is left untouched).

    Either give quantizers per layer, or methods and bit widths and let each method calibrate itself. First,
    the float model is rewritten as int8 TFLite will run it (outputs unchanged up to float rounding): each
    ``SeparableConv2D`` ``s`` becomes a ``DepthwiseConv2D`` ``s`` and a 1x1 ``Conv2D`` ``s_pointwise``, and
    each ``BatchNormalization`` right after a convolution or Dense layer is folded into its kernel and bias
    (``fold_batch_norm``), so that the quantizers describe the weights the int8 file holds; a batch norm that
    cannot be folded, a ``Rescaling`` or a ``Normalization`` of an image becomes a 1x1 ``DepthwiseConv2D`` of the
    same name (one int8 op instead of a float MUL and ADD). Then:

    * weights: each weight of a registered layer type (Conv1D/2D/3D, DepthwiseConv2D, Conv2DTranspose, Dense,
      and whatever plugins add through the ``register_layers`` hook, subclasses included) gets a
      ``weights_method`` quantizer (narrow range, per output channel unless ``per_channel=False``);
    * activations: an :class:`ActivationQuantizationHolder` after each model input (``quantize_inputs``) and
      after every layer (or, on Keras 3, ``keras.ops`` operation on tensors, such as ``x + 3``) whose int8
      TFLite op requantizes its output (not after reshapes, max pooling,
      dropout, nor between an op and the ReLU TFLite fuses into it), calibrated on the float model's outputs
      over ``representative_data`` in one pass;
    * ``bias_correction``: each quantized layer's bias absorbs the mean output shift its quantized weights
      cause, ``(W_q - W) . E[x]``, with ``E[x]`` the per-channel mean of the layer's input over the data.

    Args:
        model: A built Sequential or Functional model.
        weights_quantizers: ``{layer name: {weight name: quantizer}}``; overrides ``weights_method`` per layer
            (``{layer name: {}}`` leaves that layer in float). On Keras 3 Functional models, ``{layer or
            operation name: {position: quantizer}}`` quantizes that node's constant operands (``keras.ops.
            subtract(c, x)``: position 0; ``Multiply()([x, c])``: position 1) in a :class:`QuantizationWrapper`.
        activation_quantizers: ``{layer name: quantizer}`` for the holder after that layer (an input layer's
            name for a model input); overrides ``activation_method`` per layer.
        weights_method: Any installed weights method (``"symmetric"``, ``"pot"``, ``"uniform"``, a plugin's),
            or None to quantize only the layers in ``weights_quantizers``.
        weights_bits: Weight bit width.
        per_channel: One quantizer channel per output channel.
        weights_strategy: ``"minmax"``, ``"percentile"`` or ``"mse"`` (see :mod:`iqcore.calibration`).
        activation_method: Activation method, or None for holders only where ``activation_quantizers`` says.
        activation_bits: Activation bit width.
        activation_strategy: As ``weights_strategy``, for the holders.
        representative_data: Batches of inputs (an array, a list of batches, or a tf.data.Dataset).
        quantize_inputs: With ``activation_method``, also put a holder after each model input.
        bias_correction: Correct the biases of quantized layers (needs ``representative_data``).
        fold_batch_norm: Fold batch normalization into the layer before it, or make it a 1x1 depthwise
            convolution (False keeps it, in float).
        integer_simulation: ``"xnnpack"``: each wrapped Conv1D/Conv2D/DepthwiseConv2D/Dense between two holders
            computes on integer codes and requantizes as TFLite's XNNPACK delegate does
            (:class:`IntegerSimulation`), so that the model gives the int8 file's numbers rather than
            TensorFlow's fake-quant ones (which round half steps up, after float32 accumulation); None (the
            default) keeps the float computation.
        verbose: 0 silences the progress bar shown when calibration takes more than a few seconds.

    Returns:
        A new Keras model with :class:`QuantizationWrapper` and :class:`ActivationQuantizationHolder` layers.

    Raises:
        ValueError: For unknown layer names or strategies, a method without ``representative_data``, a method
            that cannot calibrate itself, or a model type this helper cannot rebuild.
    """
    weights_quantizers = dict(weights_quantizers or {})
    activation_quantizers = dict(activation_quantizers or {})
    calibration.check_strategy("weights_strategy", weights_strategy)
    calibration.check_strategy("activation_strategy", activation_strategy)
    _check_arguments(model, weights_quantizers, activation_quantizers, activation_method, representative_data,
                     bias_correction)
    constants = _constant_plan(model, weights_quantizers)
    model = split_separable(model)  # before folding: a batch norm after it folds into the pointwise part
    folded = foldable(model) if fold_batch_norm else {}
    rewrite = fold_rewrite(model, folded) + affine_rewrite(model, batch_norm=fold_batch_norm, skip=set(folded))
    if activation_method is not None:
        rewrite = rewrite + activation_rewrite(model)
    model = rewrite.apply(model)  # one rebuild for the three
    plan_w = _plan_weights(model, weights_quantizers, weights_method, per_channel,
                           calibration.Settings(weights_bits, weights_strategy, True))
    plan_a: dict[str, InferableQuantizer] = dict(activation_quantizers)
    targets = _holder_targets(model, plan_a, quantize_inputs) if activation_method is not None else []
    corrected_layers = [n for n in plan_w if bias_correction]
    if targets or corrected_layers:
        observed, inputs = observe(model, targets, corrected_layers, representative_data,
                                    activation_strategy != "minmax", verbose)
    if targets:
        _plan_activations(model, targets, observed, plan_a, activation_method,
                          calibration.Settings(activation_bits, activation_strategy, False))
    for n, q in plan_a.items():
        deserialize_quantizer(q, f"activation_quantizers[{n!r}]", "activation")

    simulated = _integer_plan(model, plan_w, plan_a, integer_simulation)
    simulated_merges = _integer_merges(model, plan_a) if integer_simulation is not None else {}
    sources = _requantized_holders(model, plan_a) if integer_simulation is not None else {}

    def wrap(layer):
        if layer.name in simulated_merges:
            return simulated_merges[layer.name]
        clone = clone_layer(layer)
        if layer.name in plan_w:
            return QuantizationWrapper(clone, plan_w[layer.name], name=f"{layer.name}_quantized",
                                       integer_simulation=simulated.get(layer.name))
        return clone

    def holders(name):
        if name not in plan_a:
            return []
        return [ActivationQuantizationHolder(plan_a[name], source=sources.get(name), name=f"{name}_activation")]

    with deferred_quantization():  # each wrapper quantizes the copied weights, not its initial ones
        new = rebuild(model, wrap, holders, f"{model.name}_quantized", constants=constants)
        copy_weights(model, new)
    if corrected_layers:
        _correct_biases(model, new, plan_w, inputs)
    _snap_biases(model, new, plan_a)
    return new
