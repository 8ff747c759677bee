"""Integer-exact simulation of MobileNetV3's operations: the int8 HARD_SWISH kernel, and the ADD and MUL of a
tensor and a constant (``keras.ops`` operations such as ``x + 3`` and ``x * (1/6)`` in its hard sigmoid)."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from keras_models import fresh_process_mismatches
from test_keras_integer import batches, on_input_grid

import iqcore
from iqcore.keras import KERAS_3, IntegerConstantOperation, quantize_model, run_tflite, to_tflite
from iqcore.keras._integer import constant_grid, hard_swish_table

keras = tf.keras


def grid(low, high):
    return iqcore.get_quantizer("uniform", "activation", num_bits=8, min_range=[low], max_range=[high])


def hard_sigmoid(x):
    """``ReLU6(x + 3) * (1/6)`` with operations on tensors (Keras 3 ``keras.ops`` nodes, Keras 2 ``TFOpLambda``)."""
    return keras.layers.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)


def hard_swish_block(seed=0):
    """MobileNetV3's pattern: hard-swish activations (Keras 3's ``hard_silu``; Keras 2's MobileNetV3 writes
    ``x * hard_sigmoid(x)``) and a squeeze-and-excite gate, a hard sigmoid multiplied into the features."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, padding="same")(inp)
    x = keras.layers.Activation("hard_silu")(x) if KERAS_3 else keras.layers.Multiply()([x, hard_sigmoid(x)])
    se = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
    se = keras.layers.Conv2D(8, 1)(keras.layers.ReLU()(keras.layers.Conv2D(4, 1)(se)))
    x = keras.layers.Multiply()([x, hard_sigmoid(se)])
    return keras.Model(inp, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))


@pytest.fixture(scope="module", params=["pot", "symmetric"])
def simulated(request):
    return quantize_model(hard_swish_block(), weights_method=request.param, activation_method="uniform",
                          representative_data=batches(2, 1), integer_simulation="xnnpack", verbose=0)


def test_hard_swish_and_constant_operations_give_the_interpreters_numbers(simulated):
    kinds = [type(layer).__name__ for layer in simulated.layers]
    assert kinds.count("IntegerConstantOperation") == (2 if KERAS_3 else 4)
    assert "IntegerActivation" in kinds or not KERAS_3
    x = on_input_grid(simulated, np.concatenate(batches(4, 8)))
    lite, _, _ = run_tflite(to_tflite(simulated), x)
    assert np.array_equal(lite, simulated(x).numpy().astype(np.float32))


def test_constant_operations_reload_in_a_fresh_process_with_identical_outputs(simulated, tmp_path):
    assert fresh_process_mismatches(simulated, on_input_grid(simulated, batches(1, 5)[0]), tmp_path) == 0


@pytest.mark.parametrize(("source", "output"), [((-3.0, 5.0), (-0.4, 5.0)), ((-0.2, 0.4), (-0.05, 0.4)),
                                                ((-40.0, 60.0), (-0.4, 60.0))])
@pytest.mark.skipif(not KERAS_3, reason="Keras 2 has no hard_silu activation")
def test_hard_swish_table_is_the_interpreters_kernel(source, output):
    """Every input code through a real int8 HARD_SWISH op, for input scales on both sides of the kernel's
    exponent switch (a left shift above 3/256 per step, a right shift below)."""
    inp = keras.Input((256,))
    model = keras.Model(inp, keras.layers.Activation("hard_silu")(inp))
    q = quantize_model(model, activation_quantizers={model.layers[0].name: grid(*source),
                                                     model.layers[1].name: grid(*output)}, verbose=0)
    p = grid(*source).quantization_params()
    x = ((np.arange(-128, 128, dtype=np.float32) - int(p.zero_point)) * np.float32(p.scale))[None]
    lite, out_scale, _ = run_tflite(to_tflite(q), x)
    codes = np.round(lite[0] / out_scale).astype(np.int64) + int(grid(*output).quantization_params().zero_point)
    assert np.array_equal(codes, hard_swish_table(grid(*source), grid(*output)))


@settings(max_examples=200, deadline=None)
@given(st.floats(0.01, 50.0), st.floats(0.05, 0.9), st.floats(0.05, 0.5))
def test_hard_swish_table_is_within_one_step_of_the_exact_function(high, low_fraction, out_low_fraction):
    source, output = grid(-high * low_fraction, high), grid(-0.375 * out_low_fraction, high)
    p_in, p_out = source.quantization_params(), output.quantization_params()
    x = (np.arange(-128, 128) - int(p_in.zero_point)) * float(p_in.scale)
    exact = x * np.clip(x + 3.0, 0.0, 6.0) / 6.0 / float(p_out.scale) + int(p_out.zero_point)
    assert np.max(np.abs(hard_swish_table(source, output) - np.clip(exact, -128, 127))) <= 1.0


@pytest.mark.parametrize("constant", [3.0, -2.5, 1.0 / 6.0, [0.5, -1.0, 2.0]])
def test_constant_grid_covers_zero_and_the_constant_in_255_steps(constant):
    scale, zero_point, codes = constant_grid(constant)
    values = np.asarray(constant, np.float64)
    assert np.isclose(scale * 255, max(values.max(), 0.0) - min(values.min(), 0.0), rtol=1e-6)
    assert np.allclose((codes - zero_point) * scale, values, atol=scale / 2)
    assert -128 <= codes.min() and codes.max() <= 127


def test_constant_operation_refuses_an_operation_it_does_not_simulate():
    with pytest.raises(ValueError, match="operation is 'subtract'; allowed: \\['add', 'multiply'\\]"):
        IntegerConstantOperation("subtract", 1.0, grid(-1, 1), grid(-1, 1))


def test_constant_operation_refuses_a_constant_that_is_not_finite():
    with pytest.raises(ValueError, match="constant is inf; allowed: finite values"):
        IntegerConstantOperation("add", np.inf, grid(-1, 1), grid(-1, 1))


@pytest.mark.parametrize("constant", [True, "3"])
def test_constant_operation_refuses_a_constant_that_is_not_a_number(constant):
    with pytest.raises(TypeError, match="allowed: a number or an array of numbers"):
        IntegerConstantOperation("multiply", constant, grid(-1, 1), grid(-1, 1))


def test_constant_operation_deployment_form_is_the_float_operation():
    layer = IntegerConstantOperation("multiply", 0.5, grid(-1, 1), grid(-1, 1))
    x = tf.constant([[0.25, -0.75]])
    layer._deploy = True
    assert np.array_equal(layer(x).numpy(), x.numpy() * np.float32(0.5))


@pytest.mark.skipif(not KERAS_3, reason="Keras 2 has no hard_silu activation")
def test_hard_swish_on_grids_the_kernel_refuses_stays_a_float_layer():
    """TFLite's HARD_SWISH needs the output step to be at least the input step / 128."""
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Activation("hard_silu")(keras.layers.Dense(4)(inp)))
    names = [layer.name for layer in model.layers]
    q = quantize_model(model, weights_method="symmetric", integer_simulation="xnnpack", verbose=0,
                       activation_quantizers={names[0]: grid(-1, 1), names[1]: grid(-1000, 1000),
                                              names[2]: grid(-0.375, 0.375)})
    activation = next(layer for layer in q.layers if isinstance(layer, keras.layers.Activation))
    assert type(activation) is keras.layers.Activation
    with pytest.raises(ValueError, match="HARD_SWISH needs an output scale of at least input scale / 128"):
        hard_swish_table(grid(-1000, 1000), grid(-0.375, 0.375))
