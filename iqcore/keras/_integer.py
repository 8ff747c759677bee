"""Integer-exact simulation of a quantized model as TFLite's int8 interpreter runs it (XNNPACK, its default CPU
delegate, and TFLite's own average pool).

By default a quantized model computes in float32 on grid values and each holder rounds half steps up, as
TensorFlow's fake-quant op does. The interpreter accumulates integer codes exactly and requantizes with its
own rules; where a value falls on (or within float32 rounding of) a half step, the two round it differently,
and a one-step difference in one layer grows layer after layer in a deep network. With
``quantize_model(..., integer_simulation="xnnpack")`` the layers between holders compute what the interpreter
computes, so the holders after them reproduce its codes:

* a wrapped Conv1D/Conv2D/DepthwiseConv2D/Dense with an :class:`IntegerSimulation` (:func:`simulate`)::

      acc  = sum((x_code - x_zero_point) * w_code) + round(bias / (s_x * s_w))      (exact, in float64)
      code = clamp(round_half_even(float32(acc) * float32(float32(s_x * s_w) / s_y)), ReLU, int8) + y_zero_point

* :class:`IntegerAdd` (21-bit fixed-point multipliers, an arithmetic shift), :class:`IntegerMultiply`,
  :class:`IntegerConcatenate` and a holder with a ``source`` grid (the int8 QUANTIZE op, :func:`requantize`),
  :class:`IntegerAveragePooling2D` (integer division of the window's code sum), :class:`IntegerActivation`
  (LOGISTIC's table, swish as LOGISTIC then MUL).

Inside :func:`iqcore.keras.deployment_form` every one of them computes its float form, which the exporters
convert.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import tensorflow as tf

from iqcore._quantizer import InferableQuantizer

keras = tf.keras
layers = keras.layers

#: Runtimes whose arithmetic the simulation reproduces.
RUNTIMES = ("xnnpack",)
#: Activations fused into the requantization (a clamp of the output codes).
ACTIVATIONS = ("linear", "relu", "relu6")
#: Wrapped layers that can be simulated (subclasses included, transposed convolutions excepted: on Keras 2
#: they subclass Conv1D/Conv2D).
SIMULATED = (layers.DepthwiseConv2D, layers.Conv2D, layers.Conv1D, layers.Dense)
_TRANSPOSED = (layers.Conv1DTranspose, layers.Conv2DTranspose, layers.Conv3DTranspose)


def is_simulated(layer) -> bool:
    """Whether :func:`simulate` covers ``layer``'s type."""
    return isinstance(layer, SIMULATED) and not isinstance(layer, _TRANSPOSED)


def check_grid(q, where: str) -> InferableQuantizer:
    """``q`` (a quantizer or its stored form) as a per-tensor activation quantizer, or a TypeError naming
    ``where``."""
    from iqcore.keras._layers import deserialize_quantizer

    if not isinstance(q, InferableQuantizer):
        q = deserialize_quantizer(q, where, "activation")
    if q.target != "activation" or q.grid.axis is not None:
        raise TypeError(f"{where} must be a per-tensor activation quantizer; got {q!r}")
    return q


def _serialized(q: InferableQuantizer) -> dict[str, Any]:
    from iqcore.keras._layers import serialize_quantizer

    return serialize_quantizer(q)


def centred_codes(x, q: InferableQuantizer):
    """``code - zero_point`` (int64) of values on ``q``'s grid."""
    return tf.cast(tf.round(tf.cast(x, tf.float32) / np.float32(q.quantization_params().scale)), tf.int64)


def to_codes(x, q: InferableQuantizer):
    """The int64 codes of values on ``q``'s grid."""
    return centred_codes(x, q) + int(q.quantization_params().zero_point)


def from_codes(code, q: InferableQuantizer, dtype):
    """The values of int64 codes on ``q``'s grid."""
    p = q.quantization_params()
    return tf.cast(tf.cast(code - int(p.zero_point), tf.float32) * np.float32(p.scale), dtype)


@dataclasses.dataclass(frozen=True)
class IntegerSimulation:
    """The grids an integer-exact wrapper computes between.

    Attributes:
        input: The per-tensor activation quantizer whose grid the layer's input is on.
        output: The per-tensor activation quantizer of the holder after the layer.
        activation: ``"linear"``, ``"relu"`` or ``"relu6"``: the activation fused into the output clamp.
        runtime: Whose arithmetic to reproduce (``"xnnpack"``).
    """

    input: InferableQuantizer
    output: InferableQuantizer
    activation: str = "linear"
    runtime: str = "xnnpack"

    def __post_init__(self):
        for name in ("input", "output"):
            q = getattr(self, name)
            if not isinstance(q, InferableQuantizer):
                raise TypeError(f"integer_simulation {name} must be a per-tensor activation quantizer; got {q!r}")
            check_grid(q, f"integer_simulation {name}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"integer_simulation activation is {self.activation!r}; allowed: {list(ACTIVATIONS)}")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"integer_simulation runtime is {self.runtime!r}; allowed: {list(RUNTIMES)}")


def check_layer(layer, quantizers: dict, where: str) -> None:
    """Refuse a wrapped layer the simulation does not cover, naming what is allowed."""
    if not is_simulated(layer) or set(quantizers) != {"kernel"}:
        raise ValueError(f"{where}: integer_simulation covers a wrapped Conv1D, Conv2D, DepthwiseConv2D or Dense "
                         f"with a quantized kernel; got {type(layer).__name__} with {sorted(map(str, quantizers))}")
    config = layer.get_config()
    if config.get("groups", 1) != 1 or config.get("data_format", "channels_last") not in (None, "channels_last"):
        raise ValueError(f"{where}: integer_simulation needs groups=1 and channels_last; got groups="
                         f"{config.get('groups', 1)}, data_format={config.get('data_format')!r}")
    activation = getattr(layer.activation, "__name__", "linear") if hasattr(layer, "activation") else "linear"
    if activation not in ACTIVATIONS:
        raise ValueError(f"{where}: integer_simulation fuses only {list(ACTIVATIONS)}; the layer's activation is "
                         f"{activation!r}")


def _accumulate(layer, codes: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """The layer's linear operation on integer-valued float64 tensors (exact: every partial sum < 2**53)."""
    config = layer.get_config()
    if isinstance(layer, layers.Dense):
        return tf.tensordot(codes, kernel, axes=[[codes.shape.rank - 1], [0]])
    padding = config["padding"].upper()
    if isinstance(layer, layers.DepthwiseConv2D):
        strides = [1, *config["strides"], 1]
        return tf.nn.depthwise_conv2d(codes, kernel, strides, padding, dilations=config["dilation_rate"])
    if isinstance(layer, layers.Conv2D):
        return tf.nn.conv2d(codes, kernel, config["strides"], padding, dilations=config["dilation_rate"])
    padding = "VALID" if padding == "CAUSAL" else padding  # causal: Keras pads the input on the left first
    return tf.nn.conv1d(codes, kernel, config["strides"], padding, dilations=config["dilation_rate"])


def _causal_pad(layer, x: tf.Tensor) -> tf.Tensor:
    config = layer.get_config()
    if not isinstance(layer, layers.Conv1D) or config["padding"] != "causal":
        return x
    left = config["dilation_rate"][0] * (config["kernel_size"][0] - 1)
    return tf.pad(x, [[0, 0], [left, 0], [0, 0]])


def simulate(wrapper, inputs, sim: IntegerSimulation) -> tf.Tensor:
    """The wrapped layer's output on ``sim.output``'s grid, computed as the runtime computes it (module doc)."""
    from iqcore.keras._tflite import output_channel_scales

    layer, quantizer = wrapper.layer, wrapper.weights_quantizers["kernel"]
    s_in = np.float32(sim.input.quantization_params().scale)
    codes = tf.cast(centred_codes(inputs, sim.input), tf.float64)  # the input is on sim.input's grid
    kernel = tf.cast(quantizer.to_int(tf.convert_to_tensor(wrapper.quantized_variables()["kernel"])), tf.float64)
    acc = _accumulate(layer, _causal_pad(layer, codes), kernel)
    s_w = output_channel_scales(wrapper, "kernel", int(acc.shape[-1])).astype(np.float32)
    step = (s_in * s_w).astype(np.float32)  # float32(s_x * s_w), as the converter and XNNPACK compute it
    if getattr(layer, "use_bias", False):  # the int32 bias the converter stores: round(bias / (s_x * s_w))
        bias = tf.cast(tf.convert_to_tensor(layer.bias), tf.float64)
        acc = acc + tf.round(bias / step.astype(np.float64))
    multiplier = (step / np.float32(sim.output.quantization_params().scale)).astype(np.float32)
    # tf.round: half to even, as XNNPACK's fp32 path (which clamps before rounding: the same for integer bounds)
    code = tf.cast(tf.round(tf.cast(acc, tf.float32) * multiplier), tf.int64) + \
        int(sim.output.quantization_params().zero_point)
    activation = sim.activation if sim.activation != "linear" else \
        getattr(getattr(layer, "activation", None), "__name__", "linear")
    return from_codes(clamp_codes(code, sim.output, activation), sim.output, inputs.dtype)


def to_config(sim: IntegerSimulation, serialize) -> dict[str, Any]:
    return {"runtime": sim.runtime, "activation": sim.activation, "input": serialize(sim.input),
            "output": serialize(sim.output)}


def from_config(data, deserialize, where: str) -> IntegerSimulation:
    keys = {"runtime", "activation", "input", "output"}
    if not isinstance(data, dict) or set(data) != keys:
        raise ValueError(f"{where} must be a dict with the keys {sorted(keys)}; got {data!r:.200}")
    return IntegerSimulation(deserialize(data["input"], f"{where}['input']", "activation"),
                             deserialize(data["output"], f"{where}['output']", "activation"),
                             data["activation"], data["runtime"])


def add_parameters(s_a, s_b, s_out) -> tuple[int, int, int]:
    """XNNPACK's ``(a_multiplier, b_multiplier, shift)`` of an int8 addition: each ``s_i / s_out`` (float32) as
    a 21-bit fixed-point multiplier, the larger one in ``[2**20, 2**21)``.

    Raises:
        ValueError: For a scale ratio outside ``[2**-10, 2**8)``, where XNNPACK does not run the addition.
    """
    ratios = [np.float32(np.float32(s) / np.float32(s_out)) for s in (s_a, s_b)]
    largest = max(ratios)
    if not all(2.0**-10 <= r < 2.0**8 for r in ratios):
        raise ValueError(f"input/output scale ratios {[float(r) for r in ratios]}; allowed: [2**-10, 2**8)")
    shift = 20 - (int(largest.view(np.uint32) >> 23) - 127)
    multipliers = [int(np.rint(np.float32(r * np.float32(2.0**shift)))) for r in ratios]  # lrintf: half to even
    return multipliers[0], multipliers[1], shift


def clamp_codes(code, q: InferableQuantizer, activation: str):
    """Integer output codes clamped to ``q``'s range and to a fused ReLU/ReLU6 (TFLite's activation bounds)."""
    p = q.quantization_params()
    low, high = int(p.qmin), int(p.qmax)
    if activation in ("relu", "relu6"):
        low = max(low, int(p.zero_point))
    if activation == "relu6":
        high = min(high, int(p.zero_point) + int(np.floor(np.float32(6.0) / np.float32(p.scale) + 0.5)))
    return tf.clip_by_value(code, low, high)


def _add_codes(a, b, multipliers: tuple[int, int, int], target: InferableQuantizer, activation: str):
    """XNNPACK's int8 addition of zero-point-free codes (:func:`add_parameters`): the output codes on
    ``target``'s grid, clamped to it and to the fused ``activation``."""
    a_mult, b_mult, shift = multipliers
    acc = (1 << (shift - 1)) + a_mult * a + b_mult * b
    code = tf.bitwise.right_shift(acc, shift) + int(target.quantization_params().zero_point)
    return clamp_codes(code, target, activation)


@keras.utils.register_keras_serializable(package="iqcore")
class IntegerAdd(layers.Add):  # type: ignore[name-defined]
    """An ``Add`` of two inputs computed as XNNPACK's int8 addition does, between the grids of the holders
    before and after it (see :class:`IntegerSimulation`):

        acc  = rounding + a_multiplier * (a_code - a_zero_point) + b_multiplier * (b_code - b_zero_point)
        code = clamp((acc >> shift) + y_zero_point)        (rounding = 2**(shift - 1): half steps round up)

    Args:
        inputs: The two per-tensor activation quantizers whose grids the operands are on.
        output: The activation quantizer of the holder after it.
        activation: The ReLU TFLite fuses into the addition (``"linear"``, ``"relu"``, ``"relu6"``).
        **kwargs: Keras layer arguments.
    """

    def __init__(self, inputs, output, activation: str = "linear", **kwargs):
        super().__init__(**kwargs)
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise ValueError(f"{self.name}: inputs must be two activation quantizers; got {inputs!r:.120}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"{self.name}: activation is {activation!r}; allowed: {list(ACTIVATIONS)}")
        self.sources = [check_grid(q, f"{self.name}: inputs[{i}]") for i, q in enumerate(inputs)]
        self.output_quantizer = check_grid(output, f"{self.name}: output")
        self.activation_name = activation
        self._deploy = False  # True within iqcore.keras.deployment_form: a plain Add
        try:
            a, b = (q.quantization_params().scale for q in self.sources)
            self._multipliers = add_parameters(a, b, self.output_quantizer.quantization_params().scale)
        except ValueError as e:
            raise ValueError(f"{self.name}: XNNPACK does not run this addition: {e}") from None

    def _merge_function(self, inputs):
        if self._deploy:
            return super()._merge_function(inputs)
        if len(inputs) != 2:
            raise ValueError(f"{self.name}: IntegerAdd adds two inputs; got {len(inputs)}")
        codes = [centred_codes(x, q) for x, q in zip(inputs, self.sources, strict=True)]
        code = _add_codes(codes[0], codes[1], self._multipliers, self.output_quantizer, self.activation_name)
        return from_codes(code, self.output_quantizer, inputs[0].dtype)

    def get_config(self):
        return {**super().get_config(), "inputs": [_serialized(q) for q in self.sources],
                "output": _serialized(self.output_quantizer), "activation": self.activation_name}


def convert_multiplier(source_scale, target_scale) -> int:
    """XNNPACK's 8-bit fixed-point multiplier of an int8 convert, ``lrint(256 * s_source / s_target)``.

    Raises:
        ValueError: For a scale ratio outside ``[2**-8, 2**7]``, where XNNPACK does not convert.
    """
    ratio = np.float32(np.float32(source_scale) / np.float32(target_scale))
    if not 2.0**-8 <= ratio <= 2.0**7:
        raise ValueError(f"scale ratio {float(ratio)}; allowed: [2**-8, 2**7]")
    return int(np.rint(np.float32(256.0) * ratio))


def convert_codes(codes, source_scale, source_zero_point: int, target: InferableQuantizer):
    """Raw int8 codes of the grid ``(source_scale, source_zero_point)`` requantized onto ``target``'s as
    XNNPACK's int8 convert does (:func:`convert_multiplier`), half steps up."""
    p = target.quantization_params()
    multiplier = convert_multiplier(source_scale, p.scale)
    acc = (codes - int(source_zero_point)) * multiplier + (128 + (int(p.zero_point) << 8))
    return tf.clip_by_value(tf.bitwise.right_shift(acc, 8), int(p.qmin), int(p.qmax))


def check_convertible(source: InferableQuantizer, target: InferableQuantizer) -> None:
    """Refuse (ValueError) a pair of grids XNNPACK does not convert between."""
    convert_multiplier(source.quantization_params().scale, target.quantization_params().scale)


def requantize(x, source: InferableQuantizer, target: InferableQuantizer):
    """Values on ``source``'s grid moved onto ``target``'s as the interpreter's int8 QUANTIZE op does."""
    p = source.quantization_params()
    if p == target.quantization_params():
        return x
    return from_codes(convert_codes(to_codes(x, source), p.scale, int(p.zero_point), target), target, x.dtype)


@keras.utils.register_keras_serializable(package="iqcore")
class IntegerConcatenate(layers.Concatenate):  # type: ignore[name-defined]
    """A ``Concatenate`` whose inputs on other grids than its holder's are requantized as the interpreter's
    QUANTIZE op does before TFLite's CONCATENATION (see :func:`convert_codes`).

    Args:
        inputs: The per-tensor activation quantizers whose grids the inputs are on.
        output: The activation quantizer of the holder after it.
        **kwargs: ``Concatenate`` arguments (``axis``) and Keras layer arguments.
    """

    def __init__(self, inputs, output, **kwargs):
        super().__init__(**kwargs)
        self.sources = [check_grid(q, f"{self.name}: inputs[{i}]") for i, q in enumerate(inputs)]
        self.output_quantizer = check_grid(output, f"{self.name}: output")
        for q in self.sources:
            check_convertible(q, self.output_quantizer)
        self._deploy = False  # True within iqcore.keras.deployment_form: a plain Concatenate

    def _merge_function(self, inputs):
        if not self._deploy:
            if len(inputs) != len(self.sources):
                raise ValueError(f"{self.name}: {len(inputs)} inputs for {len(self.sources)} input grids")
            inputs = [requantize(x, q, self.output_quantizer) for x, q in zip(inputs, self.sources, strict=True)]
        return super()._merge_function(inputs)

    def get_config(self):
        return {**super().get_config(), "inputs": [_serialized(q) for q in self.sources],
                "output": _serialized(self.output_quantizer)}


@keras.utils.register_keras_serializable(package="iqcore")
class IntegerAveragePooling2D(layers.AveragePooling2D):  # type: ignore[name-defined]
    """An ``AveragePooling2D`` on one grid (its input's and its holder's) computed as TFLite's int8
    AVERAGE_POOL_2D kernel does: the sum of the raw codes in each window (padding excluded) divided by their
    count in integers, half steps away from zero.

    Args:
        grid: The per-tensor activation quantizer of the input and of the holder after it.
        **kwargs: ``AveragePooling2D`` arguments (channels last) and Keras layer arguments.
    """

    def __init__(self, grid, **kwargs):
        super().__init__(**kwargs)
        self.grid = check_grid(grid, f"{self.name}: grid")
        if self.get_config().get("data_format", "channels_last") not in (None, "channels_last"):
            raise ValueError(f"{self.name}: integer simulation needs data_format='channels_last'")
        self._deploy = False  # True within iqcore.keras.deployment_form: a plain AveragePooling2D

    def call(self, inputs):
        if self._deploy:
            return super().call(inputs)
        config = self.get_config()
        codes = tf.cast(to_codes(inputs, self.grid), tf.float64)
        channels = int(inputs.shape[-1])
        window = [*config["pool_size"], 1, 1]
        strides = [1, *config["strides"], 1]
        padding = config["padding"].upper()
        sums = tf.nn.depthwise_conv2d(codes, tf.ones([*config["pool_size"], channels, 1], tf.float64), strides,
                                      padding)
        counts = tf.nn.conv2d(tf.ones_like(codes[..., :1]), tf.ones(window, tf.float64), strides, padding)
        total, count = tf.cast(sums, tf.int64), tf.cast(counts, tf.int64)
        half = count // 2
        code = tf.where(total > 0, (total + half) // count, -((half - total) // count))
        p = self.grid.quantization_params()
        return from_codes(tf.clip_by_value(code, int(p.qmin), int(p.qmax)), self.grid, inputs.dtype)

    def get_config(self):
        return {**super().get_config(), "grid": _serialized(self.grid)}


#: The int8 LOGISTIC op's output grid: step 1/256 from 0 (zero point -128).
LOGISTIC_SCALE, LOGISTIC_ZERO_POINT = 1.0 / 256.0, -128


def _logistic_codes(x):
    """TFLite's int8 LOGISTIC: ``round(sigmoid(x) * 256) - 128`` (its table, computed in float32, half steps
    away from zero), clamped to int8."""
    sig = tf.math.sigmoid(tf.cast(x, tf.float32))
    return tf.clip_by_value(tf.cast(tf.floor(sig / np.float32(LOGISTIC_SCALE) + 0.5), tf.int64) + LOGISTIC_ZERO_POINT,
                            -128, 127)


def _multiply_codes(a, b, s_a, s_b, target: InferableQuantizer):
    """XNNPACK's int8 multiplication of zero-point-free codes: ``float32(a * b) * float32(s_a * s_b / s_y)``,
    rounded half to even, plus the output zero point, clamped."""
    p = target.quantization_params()
    scale = np.float32(np.float32(np.float32(s_a) * np.float32(s_b)) / np.float32(p.scale))
    y = tf.round(tf.cast(a * b, tf.float32) * scale)
    return tf.clip_by_value(tf.cast(y, tf.int64) + int(p.zero_point), int(p.qmin), int(p.qmax))


def _quantize_multiplier_16(multiplier: float) -> tuple[int, int]:
    """TFLite's ``QuantizeMultiplier`` then ``DownScaleInt32ToInt16Multiplier``: ``multiplier`` as a 16-bit
    fixed-point value in ``[2**14, 2**15)`` and a power-of-two exponent."""
    if multiplier == 0:
        return 0, 0
    fraction, exponent = math.frexp(multiplier)
    fixed = int(math.floor(abs(fraction) * 2.0**31 + 0.5)) * (1 if fraction >= 0 else -1)  # std::round
    if fixed == 2**31:
        fixed, exponent = fixed // 2, exponent + 1
    if exponent < -31:
        return 0, 0
    return (0x7FFF if fixed >= 0x7FFF8000 else (fixed + (1 << 15)) >> 16), exponent


def _rounding_doubling_high_mul_16(a: np.ndarray, b) -> np.ndarray:
    """gemmlowp's ``SaturatingRoundingDoublingHighMul`` on int16 values (held in int64)."""
    product = a * b
    nudge = np.where(product >= 0, 1 << 14, 1 - (1 << 14))
    high = np.trunc((product + nudge) / 2.0**15).astype(np.int64)
    return np.where((a == -(2**15)) & (b == -(2**15)), 2**15 - 1, high)


def _rounding_divide_by_pot(x: np.ndarray, exponent: int) -> np.ndarray:
    """gemmlowp's ``RoundingDivideByPOT``: ``x / 2**exponent``, half steps away from zero."""
    mask = (1 << exponent) - 1
    return (x >> exponent) + ((x & mask) > (mask >> 1) + (x < 0))


def hard_swish_table(source: InferableQuantizer, output: InferableQuantizer) -> np.ndarray:
    """TFLite's int8 HARD_SWISH kernel (``reference_ops::HardSwish``: the interpreter runs its own kernel, XNNPACK
    does not take the int8 op) as the 256 output codes of the input codes -128..127.

    The input code ``v`` (zero point removed) is moved to a "high-resolution" scale ``s_in / 128``; from there a
    16-bit multiplier takes it to the output scale, and another to the "relu-ish" scale on which 3.0 is 2**15,
    saturating, then to ``[0, 1]``; the product of the two, shifted to the output exponent and rounded, is the
    output code::

        y = v * (s_in / s_out) * clamp((v * s_in + 3) / 6, 0, 1)           (in 16-bit fixed point)
    """
    s_in, s_out = (np.float32(q.quantization_params().scale) for q in (source, output))
    hires = np.float32(1.0 / 128.0) * s_in
    out_mult, out_exp = _quantize_multiplier_16(float(np.float32(hires / s_out)))
    relu_mult, relu_exp = _quantize_multiplier_16(float(np.float32(hires / np.float32(3.0 / 32768.0))))
    if out_exp > 0:
        raise ValueError(f"HARD_SWISH needs an output scale of at least input scale / 128; got {float(s_out)} "
                         f"for input scale {float(s_in)}")
    v = np.arange(-128, 128, dtype=np.int64) - int(source.quantization_params().zero_point)
    hires_v = v * 128
    on_output_scale = _rounding_doubling_high_mul_16(hires_v, out_mult)
    relu = hires_v
    if relu_exp > 0:
        relu = np.clip(relu << (relu_exp - 1), -(2**15), 2**15 - 1)
    relu = _rounding_doubling_high_mul_16(relu, relu_mult)
    if relu_exp > 0:
        relu = np.clip(relu << 1, -(2**15), 2**15 - 1)
    elif relu_exp < 0:
        relu = _rounding_divide_by_pot(relu, -relu_exp)
    relu = (relu + (1 << 15)) >> 1
    product = np.trunc(relu * on_output_scale / 2.0**15).astype(np.int64)  # SaturatingDoublingHighMul
    code = _rounding_divide_by_pot(product, -out_exp) + int(output.quantization_params().zero_point)
    return np.clip(code, -128, 127)


#: Activations :class:`IntegerActivation` computes as TFLite's int8 kernels do.
INTEGER_ACTIVATIONS = ("sigmoid", "swish", "silu", "hard_silu", "hard_swish")


@keras.utils.register_keras_serializable(package="iqcore")
class IntegerActivation(layers.Activation):  # type: ignore[name-defined]
    """A sigmoid, swish or hard swish computed as TFLite's int8 kernels do, from its input holder's grid onto its
    own holder's: ``sigmoid`` is the int8 LOGISTIC op (output step 1/256), ``swish``/``silu`` that LOGISTIC
    followed by the int8 MUL of the input by it (:func:`_multiply_codes`), which is how the converter writes
    swish, and ``hard_silu``/``hard_swish`` the int8 HARD_SWISH op (:func:`hard_swish_table`).

    Args:
        activation: ``"sigmoid"``, ``"swish"``, ``"silu"``, ``"hard_silu"`` or ``"hard_swish"``.
        source: The per-tensor activation quantizer of the input's grid.
        output: The activation quantizer of the holder after it.
        **kwargs: Keras layer arguments.
    """

    def __init__(self, activation, source, output, **kwargs):
        if activation not in INTEGER_ACTIVATIONS:
            raise ValueError(f"activation is {activation!r}; allowed: {list(INTEGER_ACTIVATIONS)}")
        super().__init__(activation, **kwargs)
        self.source = check_grid(source, f"{self.name}: source")
        self.output_quantizer = check_grid(output, f"{self.name}: output")
        self.kind = activation
        self._table = None
        if activation in ("hard_silu", "hard_swish"):
            self._table = tf.constant(hard_swish_table(self.source, self.output_quantizer))
        self._deploy = False  # True within iqcore.keras.deployment_form: a plain Activation

    def call(self, inputs):
        if self._deploy:
            return super().call(inputs)
        if self._table is not None:
            codes = tf.clip_by_value(to_codes(inputs, self.source), -128, 127) + 128
            return from_codes(tf.gather(self._table, codes), self.output_quantizer, inputs.dtype)
        sig = _logistic_codes(inputs)
        if self.kind == "sigmoid":  # on another grid than LOGISTIC's, the converter adds a QUANTIZE
            q = self.output_quantizer.quantization_params()
            if (np.float32(q.scale), int(q.zero_point)) != (np.float32(LOGISTIC_SCALE), LOGISTIC_ZERO_POINT):
                sig = convert_codes(sig, LOGISTIC_SCALE, LOGISTIC_ZERO_POINT, self.output_quantizer)
            return from_codes(sig, self.output_quantizer, inputs.dtype)
        code = _multiply_codes(centred_codes(inputs, self.source), sig - LOGISTIC_ZERO_POINT,
                               self.source.quantization_params().scale, LOGISTIC_SCALE, self.output_quantizer)
        return from_codes(code, self.output_quantizer, inputs.dtype)

    def get_config(self):
        config = super().get_config()
        config.update(activation=self.kind, source=_serialized(self.source), output=_serialized(self.output_quantizer))
        return config


@keras.utils.register_keras_serializable(package="iqcore")
class IntegerMultiply(layers.Multiply):  # type: ignore[name-defined]
    """A ``Multiply`` of two inputs computed as XNNPACK's int8 multiplication (:func:`_multiply_codes`).

    Args:
        inputs: The two per-tensor activation quantizers whose grids the operands are on.
        output: The activation quantizer of the holder after it.
        **kwargs: Keras layer arguments.
    """

    def __init__(self, inputs, output, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise ValueError(f"{self.name}: inputs must be two activation quantizers; got {inputs!r:.120}")
        self.sources = [check_grid(q, f"{self.name}: inputs[{i}]") for i, q in enumerate(inputs)]
        self.output_quantizer = check_grid(output, f"{self.name}: output")
        self._deploy = False  # True within iqcore.keras.deployment_form: a plain Multiply

    def _merge_function(self, inputs):
        if self._deploy:
            return super()._merge_function(inputs)
        if len(inputs) != 2:
            raise ValueError(f"{self.name}: IntegerMultiply multiplies two inputs; got {len(inputs)}")
        codes = [centred_codes(x, q) for x, q in zip(inputs, self.sources, strict=True)]
        scales = [q.quantization_params().scale for q in self.sources]
        code = _multiply_codes(codes[0], codes[1], scales[0], scales[1], self.output_quantizer)
        return from_codes(code, self.output_quantizer, inputs[0].dtype)

    def get_config(self):
        return {**super().get_config(), "inputs": [_serialized(q) for q in self.sources],
                "output": _serialized(self.output_quantizer)}


def constant_grid(constant) -> tuple[float, int, np.ndarray]:
    """``(scale, zero_point, codes)``: the int8 grid the TFLite converter gives a constant operand of an ADD or
    MUL (one scale over ``[min(c, 0), max(c, 0)]`` in 255 steps, computed in double) and the constant's codes on
    it (half steps away from zero)."""
    values = np.asarray(constant, np.float32).astype(np.float64)
    low, high = min(float(values.min()), 0.0), max(float(values.max()), 0.0)
    if low == high:
        return 1.0, 0, np.zeros(values.shape, np.int64)
    scale = (high - low) / 255.0
    zero_point = int(np.clip(np.floor(-128.0 - low / scale + 0.5), -128, 127))
    ratio = values / scale
    codes = np.sign(ratio) * np.floor(np.abs(ratio) + 0.5) + zero_point
    return float(np.float32(scale)), zero_point, np.clip(codes, -128, 127).astype(np.int64)


#: The operations :class:`IntegerConstantOperation` computes with a constant operand.
CONSTANT_OPERATIONS = ("add", "multiply")


@keras.utils.register_keras_serializable(package="iqcore")
class IntegerConstantOperation(layers.Layer):  # type: ignore[name-defined]
    """``x + c`` or ``x * c`` with a constant ``c`` (a ``keras.ops`` operation on a tensor, such as
    MobileNetV3's ``x + 3``), computed as XNNPACK's int8 ADD or MUL with a static operand does: ``c`` on the grid
    the converter gives it (:func:`constant_grid`), then the addition (:func:`add_parameters`) or multiplication
    (:func:`_multiply_codes`) of the codes, clamped to the fused activation.

    Args:
        operation: ``"add"`` or ``"multiply"``.
        constant: The constant operand (a number or an array that broadcasts against the input).
        source: The per-tensor activation quantizer of the input's grid.
        output: The activation quantizer of the holder after it.
        activation: The ReLU TFLite fuses into the operation (``"linear"``, ``"relu"``, ``"relu6"``).
        **kwargs: Keras layer arguments.
    """

    def __init__(self, operation, constant, source, output, activation: str = "linear", **kwargs):
        super().__init__(**kwargs)
        if operation not in CONSTANT_OPERATIONS:
            raise ValueError(f"{self.name}: operation is {operation!r}; allowed: {list(CONSTANT_OPERATIONS)}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"{self.name}: activation is {activation!r}; allowed: {list(ACTIVATIONS)}")
        values = np.asarray(constant)
        if values.dtype.kind not in "iuf":
            raise TypeError(f"{self.name}: constant is {constant!r:.120}; allowed: a number or an array of numbers")
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{self.name}: constant is {constant!r:.120}; allowed: finite values")
        self.operation, self.activation_name = operation, activation
        self.constant = values.astype(np.float32)
        self.source = check_grid(source, f"{self.name}: source")
        self.output_quantizer = check_grid(output, f"{self.name}: output")
        scale, zero_point, codes = constant_grid(self.constant)
        self._constant_scale, self._constant_codes = scale, tf.constant(codes - zero_point, tf.int64)
        if operation == "add":
            try:
                self._multipliers = add_parameters(self.source.quantization_params().scale, scale,
                                                   self.output_quantizer.quantization_params().scale)
            except ValueError as e:
                raise ValueError(f"{self.name}: XNNPACK does not run this addition: {e}") from None
        self._deploy = False  # True within iqcore.keras.deployment_form: the float operation

    def call(self, inputs):
        if self._deploy:
            return inputs + self.constant if self.operation == "add" else inputs * self.constant
        codes, constant = centred_codes(inputs, self.source), self._constant_codes
        if self.operation == "add":
            code = _add_codes(codes, constant, self._multipliers, self.output_quantizer, self.activation_name)
        else:
            code = _multiply_codes(codes, constant, self.source.quantization_params().scale, self._constant_scale,
                                   self.output_quantizer)
            code = clamp_codes(code, self.output_quantizer, self.activation_name)
        return from_codes(code, self.output_quantizer, inputs.dtype)

    def compute_output_shape(self, input_shape):
        rank = max(len(input_shape), self.constant.ndim)
        own = (1,) * (rank - len(input_shape)) + tuple(input_shape)
        other = (1,) * (rank - self.constant.ndim) + self.constant.shape
        return tuple(a if b == 1 else b for a, b in zip(own, other, strict=True))

    def get_config(self):
        return {**super().get_config(), "operation": self.operation, "constant": self.constant.tolist(),
                "source": _serialized(self.source), "output": _serialized(self.output_quantizer),
                "activation": self.activation_name}
