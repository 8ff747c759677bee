"""The Keras layers (:class:`QuantizationWrapper`, :class:`ActivationQuantizationHolder`) and how quantizers are
stored in their configs. Public names are re-exported by :mod:`iqcore.keras`."""

from __future__ import annotations

import contextlib
import json
import threading
from typing import Any

import numpy as np
import tensorflow as tf

from iqcore import _registry as registry
from iqcore._quantizer import InferableQuantizer
from iqcore.keras import _integer, _metadata
from iqcore.keras._export import conv1d_as_conv2d, dense_as_conv, export_weight, is_plain_conv1d
from iqcore.keras._metadata import METADATA_KEY

keras = tf.keras


#: True on Keras 3 (``tf.keras`` of TensorFlow >= 2.16 without ``TF_USE_LEGACY_KERAS``).
KERAS_3 = hasattr(keras, "StatelessScope")


PACKAGE = "iqcore"


QUANTIZER_KEYS = ("method", "target", "distribution", "config")

#: The config key of a holder's quantizer: the seed's name, so that code reading the seed's configs reads
#: iqcore's. A config with the key ``"quantizer"`` instead loads too.
HOLDER_KEY = "activation_holder_quantizer"


# Weight names that mean the same weight on Keras 2 and Keras 3 (DepthwiseConv2D's kernel).
_ALIASES = {"kernel": ("depthwise_kernel",), "depthwise_kernel": ("kernel",)}

# Wrappers built inside deferred_quantization() (one list per thread and nesting), not yet quantized.
_deferred = threading.local()


@contextlib.contextmanager
def deferred_quantization():
    """Wrappers built inside skip quantizing the initial weights of their layer: the caller is about to set
    the real ones (``set_weights`` quantizes them). On a normal exit, any wrapper still holding unquantized
    weights is quantized, so no wrapper leaves the block with float weights."""
    stack = _deferred.__dict__.setdefault("stack", [])
    pending: list = []
    stack.append(pending)
    try:
        yield
    finally:
        stack.pop()
    for wrapper in pending:
        if wrapper._unquantized:
            wrapper.requantize()


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
    """Runs ``layer`` with its named weights, or constant operands, on the quantizers' grids.

    Named weights (``{"kernel": q}``) are quantized once, in place, when the wrapper is built (``layer``'s
    variables then hold grid values; wrap a copy if you still need the float weights), and again after
    :meth:`set_weights`. Output is bit-identical to re-quantizing the weights on every call.

    Constant operands (``{1: q}`` with ``weight_values={1: array}``) are the seed library's positional weights:
    the constant is stored quantized in the wrapper's variable ``positional_weight_1`` and inserted at that
    position among the inputs the wrapper is called with, so that ``QuantizationWrapper(multiply, {1: q},
    {1: c}, is_inputs_as_list=True)(x)`` computes ``multiply([x, q(c)])`` and a wrapped ``tf.matmul`` layer
    (Keras 2 ``TFOpLambda``) or ``keras.ops`` operation (Keras 3, e.g. ``keras.ops.Matmul()``) with
    ``{1: q}`` computes ``matmul(x, q(c), *op_call_args, **op_call_kwargs)``.

    Args:
        layer: A Keras layer (Conv1D, Conv2D, DepthwiseConv2D, Conv2DTranspose, Dense, or any layer whose
            named weights are given); for constant operands also a Keras 2 ``TFOpLambda`` or, on Keras 3, a
            ``keras.Operation`` (the operations of ``keras.ops`` that a Functional model records).
        weights_quantizers: ``{weight name: weights quantizer}``, e.g. ``{"kernel": q}`` (``kernel`` and
            ``depthwise_kernel`` name the same DepthwiseConv2D weight on Keras 3 and Keras 2), or
            ``{position: weights quantizer}`` for constant operands.
        weight_values: ``{position: constant}`` (array-like of numbers), the same positions as
            ``weights_quantizers``; only for constant operands.
        op_call_args: Extra positional arguments passed after the inputs (JSON-able values).
        op_call_kwargs: Keyword arguments of the call (JSON-able values).
        is_inputs_as_list: Call ``layer`` with one list of inputs (``Multiply``, ``Concatenate``) instead of
            one argument per input (``tf.subtract``, ``keras.ops.matmul``).
        integer_simulation: An :class:`iqcore.keras.IntegerSimulation`: compute the layer (a Conv1D, Conv2D,
            DepthwiseConv2D or Dense) on integer codes, as the int8 interpreter does, between the given input and
            output grids; None (the default) computes it in float on grid values.
        **kwargs: Keras layer arguments (``name``...). ``trainable`` defaults to False: training would move the
            weights off the grid.

    Raises:
        TypeError: If ``layer`` is not a Keras layer (or operation), a quantizer is not a weights quantizer, or
            a constant, position or call argument has the wrong type.
        ValueError: For an empty ``weights_quantizers``, positions that differ from ``weight_values``'s, names
            mixed with positions, a constant that is not finite, or (at build) a weight the layer does not have
            or a quantizer whose per-channel layout does not fit the weight's shape.
    """

    def __init__(self, layer, weights_quantizers=None, weight_values=None, op_call_args=None, op_call_kwargs=None,
                 is_inputs_as_list=False, integer_simulation=None, **kwargs):
        kwargs.setdefault("trainable", False)
        if not isinstance(layer, keras.layers.Layer) and not (KERAS_3 and isinstance(layer, keras.Operation)):
            allowed = "a Keras layer or a keras.Operation" if KERAS_3 else "a Keras layer"
            raise TypeError(f"layer must be {allowed}; got {layer!r} ({type(layer).__name__})")
        kwargs.setdefault("name", f"quantized_{layer.name}")
        super().__init__(**kwargs)
        if not isinstance(weights_quantizers, dict) or not weights_quantizers:
            raise ValueError(
                f"weights_quantizers is {weights_quantizers!r}; allowed: a non-empty dict "
                "{weight name: weights quantizer}, e.g. {'kernel': q}, or {position: weights quantizer} with "
                "weight_values"
            )
        if any(isinstance(k, str) for k in weights_quantizers) and any(_is_position(k) for k in weights_quantizers):
            raise ValueError(f"{self.name}: weights_quantizers mixes weight names and constant positions "
                             f"{list(weights_quantizers)}; allowed: names or positions, not both")
        quantizers = {}
        for name, q in weights_quantizers.items():
            if not isinstance(name, str) and not _is_position(name):
                raise TypeError(f"weights_quantizers keys must be weight names (str) or constant positions (int "
                                f">= 0); got {name!r}")
            key = name if isinstance(name, str) else int(name)
            quantizers[key] = deserialize_quantizer(q, f"{self.name}: weights_quantizers[{name!r}]", "weights")
        self.layer = layer
        self.trainable = kwargs["trainable"]  # Keras 3 passes it on to the wrapped layer only when set here
        self._quantizers = quantizers
        self._constants = _check_constants(self.name, quantizers, weight_values, layer)
        self._op_call_args, self._op_call_kwargs = _check_call_arguments(self.name, op_call_args, op_call_kwargs)
        if not isinstance(is_inputs_as_list, bool):
            raise TypeError(f"{self.name}: is_inputs_as_list must be a bool; got {is_inputs_as_list!r}")
        self._is_inputs_as_list = is_inputs_as_list
        if integer_simulation is not None:
            if not isinstance(integer_simulation, _integer.IntegerSimulation):
                raise TypeError(f"{self.name}: integer_simulation must be an iqcore.keras.IntegerSimulation or "
                                f"None; got {type(integer_simulation).__name__}")
            _integer.check_layer(layer, quantizers, self.name)
        self.integer_simulation = integer_simulation
        self._export = False
        self._deploy = False  # True within iqcore.keras.deployment_form: no integer simulation
        if not self._constants and layer.built:
            self._bind()

    @property
    def weights_quantizers(self) -> dict[str | int, InferableQuantizer]:
        """``{weight name or constant position: quantizer}`` (a copy)."""
        return dict(self._quantizers)

    @property
    def weight_values(self) -> dict[int, np.ndarray]:
        """``{position: the float constant as given}`` (empty for a wrapper of named weights)."""
        return {pos: value.copy() for pos, value in self._constants.items()}

    @property
    def op_call_args(self) -> list:
        """Extra positional arguments of the call (a copy)."""
        return list(self._op_call_args)

    @property
    def op_call_kwargs(self) -> dict:
        """Keyword arguments of the call (a copy)."""
        return dict(self._op_call_kwargs)

    @property
    def is_inputs_as_list(self) -> bool:
        """Whether ``layer`` takes its inputs as one list."""
        return self._is_inputs_as_list

    def quantized_variables(self) -> dict:
        """``{weight name or position: variable}`` for each quantized weight or constant (empty before the
        build): the wrapped layer's variable, or the wrapper's ``positional_weight_{position}``."""
        return dict(getattr(self, "_variables_by_name", {}))

    # -- building -------------------------------------------------------------------------------------
    def build(self, input_shape):
        if self._constants:
            if not hasattr(self, "_variables_by_name"):
                with tf.init_scope():
                    self._add_constants()
            if self._is_inputs_as_list and isinstance(self.layer, keras.layers.Layer) and not self.layer.built:
                nested = isinstance(input_shape, (list, tuple)) and input_shape and \
                    isinstance(input_shape[0], (list, tuple, tf.TensorShape))
                shapes = [tuple(s) for s in input_shape] if nested else [tuple(input_shape)]
                for pos in sorted(self._constants):
                    shapes.insert(pos, self._constants[pos].shape)
                self.layer.build(shapes)  # a merge layer checks the shapes of all its inputs, constants included
            self.built = True
            return
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
            var = find_weight(self.layer, str(name))
            _check_fits(q, var, f"{self.name}: weights_quantizers[{name!r}]")
            variables[name] = var
        self._variables_by_name = variables
        stack = getattr(_deferred, "stack", None)
        if stack:
            self._unquantized = True
            stack[-1].append(self)
        else:
            self.requantize()

    def _add_constants(self) -> None:
        """Create the variable ``positional_weight_{position}`` of each constant and quantize it in place."""
        variables = {}
        for pos, value in self._constants.items():
            name = f"positional_weight_{pos}"
            var = self.add_weight(name=name, shape=value.shape, dtype="float32", initializer="zeros",
                                  trainable=False)
            var.assign(value)
            _check_fits(self._quantizers[pos], var, f"{self.name}: weights_quantizers[{pos}]")
            object.__setattr__(self, name, var)
            variables[pos] = var
        # Not tracked as a dict: a SavedModel cannot hold integer keys, and add_weight tracks the variables.
        object.__setattr__(self, "_variables_by_name", variables)
        self.requantize()

    def requantize(self) -> None:
        """Quantize the wrapped layer's weights in place (after assigning new float weights to it directly)."""
        if not self._constants and not self.layer.built:
            return
        for name, q in self._quantizers.items():
            var = self._variables_by_name[name]
            stored = getattr(var, "_variable", var)  # Keras 2 mixed precision: read past the AutoCastVariable
            var.assign(tf.cast(q(tf.convert_to_tensor(stored)), stored.dtype))
        self._unquantized = False

    def set_weights(self, weights):
        """Set the wrapped layer's weights (float values are fine) and quantize them; for constant operands,
        the constants in position order, after the wrapped layer's own weights if it has any."""
        if not self._constants:
            self.layer.set_weights(weights)
        else:
            if not hasattr(self, "_variables_by_name"):
                raise ValueError(f"{self.name}: set_weights before the wrapper is built; allowed: call it once (or "
                                 "build it) first, or pass the constants as weight_values")
            weights = list(weights)
            own = len(self.layer.weights) if isinstance(self.layer, keras.layers.Layer) else 0
            expected = own + len(self._constants)
            if len(weights) != expected:
                raise ValueError(f"{self.name}: set_weights got {len(weights)} arrays; allowed: {expected} "
                                 f"({own} of the wrapped layer, then the constants at {sorted(self._constants)})")
            if own:
                self.layer.set_weights(weights[:own])
            for pos, value in zip(sorted(self._constants), weights[own:], strict=True):
                self._variables_by_name[pos].assign(np.asarray(value, np.float32))
        self.requantize()

    def get_weights(self):
        if not self._constants:
            return self.layer.get_weights()
        own = self.layer.get_weights() if isinstance(self.layer, keras.layers.Layer) else []
        return own + [self._variables_by_name[pos].numpy() for pos in sorted(self._constants)]

    # -- computing ----------------------------------------------------------------------------------
    def call(self, inputs, *args, **kwargs):
        if self._constants:
            values = {pos: self._variables_by_name[pos] for pos in self._constants}
            if self._export:
                values = {pos: export_weight(v, self._quantizers[pos], f"iqcore_{self.name}_{pos}")
                          for pos, v in values.items()}
            # A layer's own call: Keras 3's __call__ takes no non-tensor positional arguments (op_call_args).
            fn = self.layer.call if isinstance(self.layer, keras.layers.Layer) else self.layer
            return self._call_with_constants(fn, inputs, values)
        if self._export:
            return self._export_call(inputs, *args, **kwargs)
        if self.integer_simulation is not None and not self._deploy:
            return _integer.simulate(self, inputs, self.integer_simulation)
        return self.layer(inputs, *args, **kwargs)

    def _call_with_constants(self, fn, inputs, values):
        """``fn`` on ``inputs`` with ``values`` inserted at their positions, then the extra call arguments."""
        operands = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        for pos in sorted(values):
            if pos > len(operands):
                raise ValueError(f"{self.name}: a constant at position {pos} with {len(operands)} other inputs; "
                                 f"allowed positions: 0..{len(operands)}")
            operands.insert(pos, values[pos])
        if self._is_inputs_as_list:
            return fn(operands, *self._op_call_args, **self._op_call_kwargs)
        return fn(*operands, *self._op_call_args, **self._op_call_kwargs)

    def compute_output_spec(self, inputs, *args, **kwargs):
        if not self._constants:
            return super().compute_output_spec(inputs, *args, **kwargs)
        specs = {pos: keras.KerasTensor(value.shape, "float32") for pos, value in self._constants.items()}
        return self._call_with_constants(self.layer.compute_output_spec, inputs, specs)

    def compute_output_shape(self, input_shape):
        try:
            return self.layer.compute_output_shape(input_shape)
        except NotImplementedError:  # a custom layer without it: Keras 3 traces its call instead
            if not KERAS_3:
                raise
            return self.layer.compute_output_spec(keras.KerasTensor(input_shape)).shape

    def _export_call(self, inputs, *args, **kwargs):
        from iqcore.keras._export import is_transposed_conv, transposed_conv_form

        if is_transposed_conv(self.layer) and set(self._quantizers) == {"kernel"}:
            return transposed_conv_form(self.layer, inputs, f"iqcore_{self.name}_kernel", *args, **kwargs)
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
        config["layer"] = keras.layers.serialize(self.layer) if isinstance(self.layer, keras.layers.Layer) \
            else keras.utils.serialize_keras_object(self.layer)
        config["weights_quantizers"] = {name: serialize_quantizer(q) for name, q in self._quantizers.items()}
        if self._constants:
            config["weight_values"] = {str(pos): {"class_name": "__numpy__", "config": {
                "value": value.tolist(), "dtype": value.dtype.name}} for pos, value in self._constants.items()}
            config["op_call_args"] = list(self._op_call_args)
            config["op_call_kwargs"] = dict(self._op_call_kwargs)
            config["is_inputs_as_list"] = self._is_inputs_as_list
        if self.integer_simulation is not None:
            config["integer_simulation"] = _integer.to_config(self.integer_simulation, serialize_quantizer)
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
        layer = _deserialize_layer(config.pop("layer"), custom_objects, name)
        rebuilt = {_stored_key(k): deserialize_quantizer(v, f"{name}: weights_quantizers[{k!r}]", "weights")
                   for k, v in quantizers.items()}
        values = config.pop("weight_values", None)
        if values is not None:
            if not isinstance(values, dict):
                raise TypeError(f"{name}: weight_values must be a dict {{position: constant}}; got "
                                f"{type(values).__name__}")
            values = {_stored_key(k): _stored_constant(v, f"{name}: weight_values[{k!r}]") for k, v in values.items()}
        simulation = config.pop("integer_simulation", None)
        if simulation is not None:
            simulation = _integer.from_config(simulation, deserialize_quantizer, f"{name}: integer_simulation")
        metadata = config.pop(METADATA_KEY, None)
        wrapper = cls(layer, rebuilt, values, integer_simulation=simulation, **config)
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
        source: The activation quantizer whose grid the input is on, for the integer simulation of the
            interpreter's int8 QUANTIZE op (:func:`iqcore.keras.quantize_model`'s ``integer_simulation``): the
            input's codes are requantized as XNNPACK does before the quantizer applies; None (the default)
            quantizes the input as it is.
        **kwargs: Keras layer arguments.

    Raises:
        TypeError: If ``quantizer`` is not an activation quantizer, or both or neither of ``quantizer`` and
            ``activation_holder_quantizer`` are given.
    """

    def __init__(self, quantizer=None, activation_holder_quantizer=None, source=None, **kwargs):
        if (quantizer is None) == (activation_holder_quantizer is None):
            raise TypeError(
                "ActivationQuantizationHolder takes one activation quantizer: give quantizer= or its seed alias "
                f"activation_holder_quantizer=, not {'both' if quantizer is not None else 'neither'}"
            )
        metadata = kwargs.pop(METADATA_KEY, None)
        super().__init__(**kwargs)
        chosen = quantizer if quantizer is not None else activation_holder_quantizer
        self.quantizer = deserialize_quantizer(chosen, f"{self.name}: quantizer", "activation")
        self.source = None if source is None else _integer.check_grid(source, f"{self.name}: source")
        if self.source is not None:
            _integer.check_convertible(self.source, self.quantizer)
        self._deploy = False  # True within iqcore.keras.deployment_form: the quantizer alone
        if metadata is not None:
            _metadata.attach(self, metadata, where=f"{self.name}: {METADATA_KEY}")

    @property
    def activation_holder_quantizer(self) -> InferableQuantizer:
        """The seed's name for :attr:`quantizer`."""
        return self.quantizer

    def call(self, inputs):
        if self.source is not None and not self._deploy:
            inputs = _integer.requantize(inputs, self.source, self.quantizer)
        return self.quantizer(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config[HOLDER_KEY] = serialize_quantizer(self.quantizer)
        if self.source is not None:
            config["source"] = serialize_quantizer(self.source)
        config.update(_metadata.config_entry(self))
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        name = config.get("name", "ActivationQuantizationHolder")
        keys = [k for k in (HOLDER_KEY, "quantizer") if k in config]
        if len(keys) != 1:
            raise ValueError(f"{name}: config needs one of the keys {HOLDER_KEY!r} or 'quantizer'; got "
                             f"{keys or 'none'}")
        quantizer = deserialize_quantizer(config.pop(keys[0]), f"{name}: {keys[0]}", "activation")
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


def _is_position(key) -> bool:
    return bool(isinstance(key, (int, np.integer)) and not isinstance(key, bool) and key >= 0)


def _stored_key(key):
    """A ``weights_quantizers`` / ``weight_values`` key read from JSON: a position is stored as ``"0"``."""
    return int(key) if isinstance(key, str) and key.isdigit() else key


def _as_constant(value, where: str) -> np.ndarray:
    """A finite float32 array from an array-like of real numbers."""
    if isinstance(value, (tf.Tensor, tf.Variable)):
        value = value.numpy()
    try:
        array = np.asarray(value)
        if array.dtype.kind not in "biuf":
            raise TypeError(f"dtype {array.dtype}")
        array = array.astype(np.float32)
    except (TypeError, ValueError, OverflowError) as e:
        raise TypeError(f"{where} must be an array of real numbers (ndarray, tf.Tensor or nested lists); got "
                        f"{type(value).__name__} ({e})") from None
    if not np.isfinite(array).all():
        raise ValueError(f"{where} holds NaN or infinite values; allowed: finite numbers")
    return array


def _stored_constant(entry, where: str) -> np.ndarray:
    """A constant from a config: ``{"class_name": "__numpy__" | "__tensor__", "config": {"value", "dtype"}}``
    (Keras' own and the seed's form) or nested lists."""
    if isinstance(entry, dict):
        if entry.get("class_name") not in ("__numpy__", "__tensor__") or not isinstance(entry.get("config"), dict) \
                or "value" not in entry["config"]:
            raise ValueError(f"{where} is {entry!r:.120}; allowed: {{'class_name': '__numpy__', 'config': "
                             "{'value': nested lists, 'dtype': 'float32'}}")
        dtype = entry["config"].get("dtype", "float32")
        if dtype not in ("float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8"):
            raise ValueError(f"{where}: dtype {dtype!r}; allowed: a float or integer dtype name")
        entry = entry["config"]["value"]
    return _as_constant(entry, where)


def _check_constants(name: str, quantizers: dict, values, layer) -> dict[int, np.ndarray]:
    """``{position: float32 constant}`` after checking that positions and names are not mixed and that the
    positions of ``weights_quantizers`` and ``weight_values`` agree."""
    positions = sorted(k for k in quantizers if not isinstance(k, str))
    if values is None or (isinstance(values, dict) and not values):
        if positions:
            raise ValueError(f"{name}: weights_quantizers has constant positions {positions} but weight_values is "
                             f"{values!r}; allowed: weight_values={{position: constant}} for each of them")
        if not isinstance(layer, keras.layers.Layer):
            raise TypeError(f"{name}: a {type(layer).__name__} operation has no weights to quantize; allowed: "
                            "constant operands (weights_quantizers={position: q} with weight_values)")
        return {}
    if not isinstance(values, dict):
        raise TypeError(f"{name}: weight_values must be a dict {{position: constant}}; got {type(values).__name__}")
    for key in values:
        if not _is_position(key):
            raise TypeError(f"{name}: weight_values keys must be constant positions (int >= 0); got {key!r}")
    if sorted(int(k) for k in values) != positions:
        raise ValueError(f"{name}: weight_values has positions {sorted(int(k) for k in values)} and "
                         f"weights_quantizers {positions}; allowed: the same positions")
    return {int(k): _as_constant(v, f"{name}: weight_values[{k}]") for k, v in sorted(values.items())}


def _check_call_arguments(name: str, args, kwargs) -> tuple[list, dict]:
    args = [] if args is None else args
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(args, (list, tuple)):
        raise TypeError(f"{name}: op_call_args must be a list; got {type(args).__name__}")
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise TypeError(f"{name}: op_call_kwargs must be a dict with str keys; got {kwargs!r:.120}")
    try:
        json.dumps([list(args), kwargs])
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name}: op_call_args and op_call_kwargs must be JSON-able (they are saved in the "
                        f"model's config); {e}") from None
    return list(args), dict(kwargs)


def _deserialize_layer(config, custom_objects, name: str):
    """The wrapped layer, or on Keras 3 the ``keras.ops`` operation, of a stored wrapper."""
    if KERAS_3 and isinstance(config, dict) and str(config.get("module", "")).startswith("keras.src.ops."):
        op = keras.utils.deserialize_keras_object(config, custom_objects=custom_objects)
        if not isinstance(op, keras.Operation) or isinstance(op, keras.layers.Layer):
            raise ValueError(f"{name}: layer {config.get('class_name')!r} is not a keras.ops operation")
        return op
    return keras.layers.deserialize(config, custom_objects=custom_objects)


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
