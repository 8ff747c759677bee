"""int8 TFLite export through the real TFLiteConverter and Interpreter: the quantizers' grids survive."""

import numpy as np
import pytest
import tensorflow as tf
from keras_models import batches, quantized_cnn, symmetric, uniform_activation, wrapped_dense_model

import iqcore
from iqcore.keras import (
    KERAS_3,
    ActivationQuantizationHolder,
    QuantizationWrapper,
    find_weight,
    tflite_weight_tensors,
    to_tflite,
)

keras = tf.keras
WRAPPED = ("conv_quantized", "dw_quantized", "fc_quantized")


def run_tflite(flatbuffer, x):
    """Run the int8 model on float ``x``: quantize with the input's parameters, dequantize the output."""
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(inp["index"], x.shape)
    interpreter.allocate_tensors()
    s_in, z_in = inp["quantization"]
    codes = np.clip(np.floor(x / s_in + 0.5) + z_in, -128, 127).astype(np.int8)
    interpreter.set_tensor(inp["index"], codes)
    interpreter.invoke()
    s_out, z_out = out["quantization"]
    y = interpreter.get_tensor(out["index"]).astype(np.float32)
    return (y - z_out) * s_out, s_out, interpreter


@pytest.fixture(scope="module", params=["symmetric", "pot"])
def converted(request):
    model = quantized_cnn(weights_method=request.param)
    return model, to_tflite(model)


def _tflite_layout(kind, kernel):
    """A Keras kernel laid out as TFLite stores it."""
    if kind == "dw":  # [kh, kw, in, mult] -> [1, kh, kw, in * mult]
        return kernel.reshape(1, *kernel.shape[:2], -1)
    if kind == "fc":  # [in, out] -> [out, 1, 1, in]
        return kernel.T.reshape(kernel.shape[1], 1, 1, kernel.shape[0])
    return np.transpose(kernel, (3, 0, 1, 2))  # conv: [kh, kw, in, out] -> [out, kh, kw, in]


def test_every_weight_scale_in_the_file_equals_quantization_params(converted):
    model, flatbuffer = converted
    tensors = tflite_weight_tensors(flatbuffer, model)
    for name in WRAPPED:
        wrapper = model.get_layer(name)
        params = wrapper.weights_quantizers["kernel"].quantization_params()
        repeat = find_weight(wrapper.layer, "kernel").shape[-1] if name == "dw_quantized" else 1
        got = tensors[(name, "kernel")]["quantization_parameters"]
        np.testing.assert_array_equal(got["scales"].astype(np.float32), np.repeat(params.scale, repeat))
        np.testing.assert_array_equal(got["zero_points"], np.repeat(params.zero_point, repeat))


def test_int8_weights_in_the_file_are_the_quantizer_codes_within_minus127_127(converted):
    model, flatbuffer = converted
    tensors = tflite_weight_tensors(flatbuffer, model)
    for name in WRAPPED:
        wrapper = model.get_layer(name)
        codes = wrapper.weights_quantizers["kernel"].to_int(find_weight(wrapper.layer, "kernel")).numpy()
        stored = tensors[(name, "kernel")]["value"]
        np.testing.assert_array_equal(stored, _tflite_layout(name.split("_")[0], codes))
        assert stored.min() >= -127 and stored.max() <= 127


def test_input_and_output_quantization_are_the_holders(converted):
    model, flatbuffer = converted
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    for details, holder in ((interpreter.get_input_details()[0], "image_activation"),
                            (interpreter.get_output_details()[0], "fc_activation")):
        params = model.get_layer(holder).quantizer.quantization_params()
        scale, zero_point = details["quantization"]
        assert np.float32(scale) == params.scale and zero_point == params.zero_point


def test_interpreter_output_is_within_one_output_step_of_keras(converted):
    model, flatbuffer = converted
    x = np.concatenate(batches((16, 16, 3), n=8, seed=11))
    want = model(x).numpy()
    got, step, _ = run_tflite(flatbuffer, x)
    off = np.abs(got - want) / step
    share = float(np.mean(off > 0.5))
    print(f"TFLite vs Keras: {share:.2%} of {off.size} outputs off by one step, max {off.max():.3f} steps")
    assert off.max() <= 1.0 + 1e-3


def test_per_channel_dense_converts_to_a_1x1_conv(converted):
    _, flatbuffer = converted
    ops = [op["op_name"] for op in tf.lite.Interpreter(model_content=flatbuffer)._get_ops_details()]
    assert "FULLY_CONNECTED" not in ops and ops.count("CONV_2D") == 2


def test_four_bit_weights_convert_to_a_model_that_loads_and_runs():
    model = quantized_cnn(weights_method="pot", weights_bits=4)
    flatbuffer = to_tflite(model)
    x = batches((16, 16, 3), n=1, seed=5)[0]
    got, step, _ = run_tflite(flatbuffer, x)
    off = np.abs(got - model(x).numpy()) / step
    assert off.max() <= 1.0 + 1e-3
    stored = tflite_weight_tensors(flatbuffer, model)[("conv_quantized", "kernel")]["value"]
    assert stored.min() >= -8 and stored.max() <= 7


def test_standalone_wrapped_dense_converts_with_its_scales():
    model = wrapped_dense_model()
    flatbuffer = to_tflite(model)  # check=True compares every scale with quantization_params()
    x = np.random.default_rng(0).uniform(-1, 1, (32, 12)).astype(np.float32)
    got, step, _ = run_tflite(flatbuffer, x)
    assert np.abs(got - model(x).numpy()).max() <= step * (1 + 1e-3)


def test_uniform_weights_with_a_nonzero_zero_point_are_refused():
    q = iqcore.get_quantizer("uniform", "weights", num_bits=8, min_range=[-0.2], max_range=[0.9])
    inp = keras.Input((4,))
    x = ActivationQuantizationHolder(uniform_activation())(inp)
    model = keras.Model(inp, QuantizationWrapper(keras.layers.Dense(3), {"kernel": q})(x))
    with pytest.raises(ValueError, match="zero point 0"):
        to_tflite(model)


def test_a_weight_on_code_minus_128_is_refused_with_the_fix():
    q = symmetric((4, 3), 1, narrow_range=False)
    layer = keras.layers.Dense(3)
    layer.build((None, 4))
    kernel = np.zeros((4, 3), np.float32)
    kernel[0] = -np.asarray(q.threshold, np.float32)
    layer.set_weights([kernel, np.zeros(3, np.float32)])
    inp = keras.Input((4,))
    model = keras.Model(inp, QuantizationWrapper(layer, {"kernel": q})(inp))
    with pytest.raises(ValueError, match="code -128.*narrow_range=True"):
        to_tflite(model)


def test_more_than_eight_bit_weights_are_refused():
    inp = keras.Input((4,))
    model = keras.Model(inp, QuantizationWrapper(keras.layers.Dense(3), {"kernel": symmetric((4, 3), 1, bits=12)})(inp))
    with pytest.raises(ValueError, match="num_bits is 12; allowed for TFLite int8 weights: 2..8"):
        to_tflite(model)


@pytest.mark.parametrize("bits", [8, 4])
def test_hundreds_of_arbitrary_channel_scales_are_stored_exactly(bits):
    units_in, units_out = 16, 512
    q = symmetric((3, 3, units_in, units_out), 3, bits=bits, seed=bits)
    inp = keras.Input((4, 4, units_in))
    x = ActivationQuantizationHolder(uniform_activation())(inp)
    x = QuantizationWrapper(keras.layers.Conv2D(units_out, 3), {"kernel": q})(x)
    model = keras.Model(inp, ActivationQuantizationHolder(uniform_activation(-8.0, 8.0))(x))
    flatbuffer = to_tflite(model, check=False)
    wrapper = model.layers[2]
    got = tflite_weight_tensors(flatbuffer, model)[(wrapper.name, "kernel")]["quantization_parameters"]["scales"]
    np.testing.assert_array_equal(got.astype(np.float32), q.quantization_params().scale)
    x = np.random.default_rng(0).uniform(-1, 1, (8, 4, 4, units_in)).astype(np.float32)
    out, step, _ = run_tflite(flatbuffer, x)
    assert np.abs(out - model(x).numpy()).max() <= step * (1 + 1e-3)


@pytest.mark.parametrize("padding", ["valid", "causal"])
def test_per_channel_conv1d_converts_with_its_scales_and_agrees_with_keras(padding):
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 4))
    x = ActivationQuantizationHolder(uniform_activation())(inp)
    x = QuantizationWrapper(keras.layers.Conv1D(6, 3, padding=padding, dilation_rate=2),
                            {"kernel": symmetric((3, 4, 6), 2)})(x)
    model = keras.Model(inp, ActivationQuantizationHolder(uniform_activation(-2.0, 2.0))(x))
    flatbuffer = to_tflite(model)  # check=True: every scale equals quantization_params()
    x = np.random.default_rng(1).uniform(-1, 1, (8, 16, 4)).astype(np.float32)
    got, step, _ = run_tflite(flatbuffer, x)
    assert np.abs(got - model(x).numpy()).max() <= step * (1 + 1e-3)


def _ops(flatbuffer):
    """``[(op name, [(dtype, shape) of each input])]`` of a TFLite model."""
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    return [(op["op_name"], [(details[i]["dtype"], tuple(details[i]["shape"])) for i in op["inputs"] if i >= 0])
            for op in interpreter._get_ops_details()]


def _check_transposed(model, flatbuffer, x, in_channels):
    """One int8 TRANSPOSE_CONV whose filter is the quantizer's codes on its scales; outputs within a step."""
    ops = _ops(flatbuffer)
    convs = [inputs for name, inputs in ops if name == "TRANSPOSE_CONV"]
    assert len(convs) == 1 and "DEQUANTIZE" not in [name for name, _ in ops], ops
    assert convs[0][1][0] == np.int8 and convs[0][2][0] == np.int8  # filter and input
    wrapper = next(layer for layer in model.layers if isinstance(layer, QuantizationWrapper))
    q = wrapper.weights_quantizers["kernel"]
    stored = tflite_weight_tensors(flatbuffer, model)[(wrapper.name, "kernel")]
    params = stored["quantization_parameters"]
    np.testing.assert_array_equal(params["scales"].astype(np.float32), q.quantization_params().scale)
    assert params["quantized_dimension"] == 0 and not np.any(params["zero_points"])
    codes = np.moveaxis(q.to_int(find_weight(wrapper.layer, "kernel")).numpy(), -2, 0)  # [out, ..., in]
    np.testing.assert_array_equal(stored["value"], codes.reshape(stored["value"].shape))
    assert stored["value"].shape[-1] == in_channels
    got, step, _ = run_tflite(flatbuffer, x)
    off = np.abs(got - model(x).numpy()) / step
    assert off.max() <= 1.0 + 1e-3 and np.mean(off > 0.5) <= 0.01


@pytest.mark.parametrize("weights_method", ["symmetric", "pot"])
@pytest.mark.parametrize("padding, strides, use_bias, activation", [
    ("valid", 2, False, None), ("same", 2, True, None), ("valid", 1, True, "relu"),
    ("same", 2, False, "relu"),  # no bias ADD for the converter to fuse the ReLU through: the export form adds one
])
def test_conv2d_transpose_exports_as_int8_transpose_conv_with_the_quantizer_scales(weights_method, padding,
                                                                                   strides, use_bias, activation):
    keras.utils.set_random_seed(3)
    inp = keras.Input((6, 6, 3))
    out = keras.layers.Conv2DTranspose(4, (3, 2), strides=strides, padding=padding, use_bias=use_bias,
                                       activation=activation, bias_initializer="random_normal")(inp)
    model = iqcore.keras.quantize_model(keras.Model(inp, out), weights_method=weights_method,
                                        activation_method="symmetric", representative_data=batches((6, 6, 3)),
                                        verbose=0)
    flatbuffer = to_tflite(model)  # check=True: every scale equals quantization_params()
    _check_transposed(model, flatbuffer, np.concatenate(batches((6, 6, 3), n=2, seed=7)), 3)


def test_conv1d_transpose_exports_as_a_height_one_transpose_conv():
    keras.utils.set_random_seed(4)
    inp = keras.Input((10, 3))
    x = ActivationQuantizationHolder(uniform_activation())(inp)
    x = QuantizationWrapper(keras.layers.Conv1DTranspose(5, 3, strides=2, padding="same"),
                            {"kernel": symmetric((3, 5, 3), 1, seed=4)})(x)
    model = keras.Model(inp, ActivationQuantizationHolder(uniform_activation(-2.0, 2.0))(x))
    if not KERAS_3:  # the converter keeps Keras 2's conv1d_transpose filter in float: refused, not silent
        with pytest.raises(ValueError, match="Conv1DTranspose cannot be exported to int8 TFLite on Keras 2"):
            to_tflite(model)
        return
    flatbuffer = to_tflite(model)
    _check_transposed(model, flatbuffer, np.random.default_rng(5).uniform(-1, 1, (16, 10, 3)).astype(np.float32), 3)


def test_wrapped_conv3d_is_refused_because_tflite_runs_it_in_float_only():
    inp = keras.Input((4, 4, 4, 2))
    x = ActivationQuantizationHolder(uniform_activation())(inp)
    x = QuantizationWrapper(keras.layers.Conv3D(3, 2, name="c3"), {"kernel": symmetric((2, 2, 2, 2, 3), 4)})(x)
    with pytest.raises(ValueError, match=r"Conv3D .*CONV_3D kernel runs in float32 only; allowed: leave 'c3' in "
                                         r"float .*allow_float=True"):
        to_tflite(keras.Model(inp, x))


@pytest.mark.parametrize("kwargs, quantizer, message", [
    ({"dilation_rate": 2}, symmetric((3, 3, 5, 4), 2), r"dilation_rate is \(2, 2\); .*allowed: dilation_rate=1"),
    ({}, symmetric((3, 3, 5, 4), 3), r"per channel on axis 3; .*allowed: axis 2"),
])
def test_conv2d_transpose_without_a_transpose_conv_form_is_refused(kwargs, quantizer, message):
    inp = keras.Input((6, 6, 4))
    x = ActivationQuantizationHolder(uniform_activation())(inp)
    x = QuantizationWrapper(keras.layers.Conv2DTranspose(5, 3, **kwargs), {"kernel": quantizer})(x)
    with pytest.raises(ValueError, match=message):
        to_tflite(keras.Model(inp, x))


@pytest.fixture(scope="module")
def residual():
    from test_keras_quantize_model import _quantized_residual

    model = _quantized_residual()
    return model, to_tflite(model)


def test_residual_model_with_batch_norm_concat_and_softmax_is_within_one_step_of_keras(residual):
    model, flatbuffer = residual
    x = np.concatenate(batches((16, 16, 3), n=4, seed=9))
    got, step, _ = run_tflite(flatbuffer, x)
    off = np.abs(got - model(x).numpy()) / step
    print(f"residual model: {np.mean(off > 0.5):.2%} of {off.size} outputs one step off")
    assert off.max() <= 1.0 + 1e-3




def test_residual_model_with_batch_norm_converts_to_int8_ops_only(residual):
    _, flatbuffer = residual
    ops = [op["op_name"] for op in tf.lite.Interpreter(model_content=flatbuffer)._get_ops_details()]
    assert "DEQUANTIZE" not in ops, ops


def test_float_io_model_takes_float_input_and_agrees_within_one_step():
    model = wrapped_dense_model()
    interpreter = tf.lite.Interpreter(model_content=to_tflite(model, int8_io=False))
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    x = np.random.default_rng(2).uniform(-1, 1, (1, 12)).astype(np.float32)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    step = model.layers[-1].quantizer.grid.scale
    assert inp["dtype"] == np.float32 and out["dtype"] == np.float32
    assert np.abs(interpreter.get_tensor(out["index"]) - model(x).numpy()).max() <= step * (1 + 1e-3)
