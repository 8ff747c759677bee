"""quantize_model: from a float model and calibration data to a quantized model in one call."""

import numpy as np
import pytest
import tensorflow as tf
from keras_models import batches, cnn, symmetric, uniform_activation

from iqcore.keras import (
    KERAS_3,
    ActivationQuantizationHolder,
    QuantizationWrapper,
    calibrate_weights,
    quantize_model,
    run_tflite,
    to_tflite,
)

keras = tf.keras
DATA = batches((16, 16, 3))


def _float_outputs(model, name):
    probe = keras.Model(model.inputs, model.get_layer(name).output)
    return np.concatenate([probe(b).numpy() for b in DATA])


def test_symmetric_weight_top_code_is_each_channels_max_abs_so_nothing_is_clipped():
    model = cnn()
    q = quantize_model(model, weights_method="symmetric").get_layer("conv_quantized").weights_quantizers["kernel"]
    kernel = model.get_layer("conv").kernel.numpy()
    max_abs = np.abs(kernel).max(axis=(0, 1, 2))
    top = q.quantization_params().scale * 127
    np.testing.assert_allclose(top, max_abs, rtol=1e-6)
    codes = q.to_int(kernel).numpy()
    assert np.all(np.abs(codes).max(axis=(0, 1, 2)) == 127)
    step = q.quantization_params().scale
    assert np.all(np.abs(q(kernel).numpy() - kernel) <= step / 2 * (1 + 1e-6))
    assert q.per_channel and q.channel_axis == 3 and q.narrow_range


def test_pot_weight_thresholds_are_the_max_abs_rounded_up_to_a_power_of_two():
    model = cnn()
    q = quantize_model(model, weights_method="pot").get_layer("fc_quantized").weights_quantizers["kernel"]
    max_abs = np.abs(model.get_layer("fc").kernel.numpy()).max(axis=0).astype(np.float64)
    t = np.asarray(q.threshold)
    assert np.all(t >= max_abs) and np.all(t / 2 < max_abs) and np.all(np.frexp(t)[0] == 0.5)


def test_depthwise_thresholds_are_per_input_channel():
    model = cnn()
    q = quantize_model(model, weights_method="symmetric").get_layer("dw_quantized").weights_quantizers["kernel"]
    assert q.channel_axis == 2 and len(q.threshold) == 8


def test_uniform_weight_ranges_are_the_per_channel_min_and_max():
    kernel = np.random.default_rng(0).normal(size=(3, 3, 4, 6)).astype(np.float32)
    q = calibrate_weights(kernel, "uniform", axis=-1)
    config = q.get_config()  # the ranges as calibrated (the min_range/max_range attributes are adjusted to 0)
    np.testing.assert_array_equal(config["min_range"], kernel.min(axis=(0, 1, 2)).astype(np.float64))
    np.testing.assert_array_equal(config["max_range"], kernel.max(axis=(0, 1, 2)).astype(np.float64))


def test_an_all_zero_channel_gets_a_positive_threshold():
    kernel = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    kernel[:, 1] = 0.0
    q = calibrate_weights(kernel, "symmetric", axis=-1)
    assert q.threshold[1] == max(q.threshold) > 0


def test_uniform_activation_ranges_are_the_min_and_max_on_the_representative_data():
    model = cnn()
    quantized = quantize_model(model, weights_method="symmetric", activation_method="uniform",
                               representative_data=DATA)
    outputs = _float_outputs(model, "fc")
    config = quantized.get_layer("fc_activation").quantizer.get_config()  # as calibrated, before the adjustment
    assert config["min_range"] == [float(outputs.min())] and config["max_range"] == [float(outputs.max())]


def test_pot_activation_threshold_covers_the_data_with_a_power_of_two():
    model = cnn()
    quantized = quantize_model(model, activation_method="pot", representative_data=DATA)
    q = quantized.get_layer("dw_activation").quantizer
    peak = float(np.abs(_float_outputs(model, "dw")).max())
    assert peak <= q.threshold[0] < 2 * peak and not q.signed  # after a ReLU: unsigned


def test_input_gets_a_holder_with_the_input_data_range():
    quantized = quantize_model(cnn(), activation_method="uniform", representative_data=DATA)
    config = quantized.get_layer("image_activation").quantizer.get_config()  # as calibrated
    data = np.concatenate(DATA)
    assert config["min_range"] == [float(data.min())] and config["max_range"] == [float(data.max())]


def test_the_float_model_keeps_its_float_weights():
    model = cnn()
    before = [w.copy() for w in model.get_weights()]
    quantize_model(model, weights_method="symmetric")
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_quantized_weights_are_the_float_weights_on_the_grid():
    model = cnn()
    wrapper = quantize_model(model, weights_method="symmetric").get_layer("conv_quantized")
    want = wrapper.weights_quantizers["kernel"](model.get_layer("conv").kernel).numpy()
    np.testing.assert_array_equal(wrapper.layer.kernel.numpy(), want)


def test_quantize_model_quantizes_each_wrappers_weights_once(monkeypatch):
    calls = []
    original = QuantizationWrapper.requantize
    monkeypatch.setattr(QuantizationWrapper, "requantize", lambda self: calls.append(self.name) or original(self))
    new = quantize_model(cnn(), weights_method="symmetric")
    wrappers = [layer.name for layer in new.layers if isinstance(layer, QuantizationWrapper)]
    assert wrappers and sorted(calls) == sorted(wrappers)


def test_a_wrapper_built_under_deferred_quantization_without_new_weights_is_quantized_on_exit():
    from iqcore.keras._layers import deferred_quantization

    q = symmetric((4, 3), axis=1)
    with deferred_quantization():
        wrapper = QuantizationWrapper(keras.layers.Dense(3, kernel_initializer="ones"), {"kernel": q})
        wrapper.build((None, 4))
        assert wrapper.layer.kernel.numpy().max() == 1.0  # not quantized yet: the caller sets the weights
    np.testing.assert_array_equal(wrapper.layer.kernel.numpy(), q(np.ones((4, 3), np.float32)).numpy())


def test_sequential_model_gets_wrappers_and_holders():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, activation="relu", name="a"),
                              keras.layers.Dense(2, name="b")])
    quantized = quantize_model(model, weights_method="symmetric", activation_method="symmetric",
                               representative_data=np.random.default_rng(0).normal(size=(16, 6)).astype("f4"))
    kinds = [type(layer).__name__ for layer in quantized.layers]
    assert kinds == ["InputLayer", "ActivationQuantizationHolder", "QuantizationWrapper",
                     "ActivationQuantizationHolder", "QuantizationWrapper", "ActivationQuantizationHolder"]


def test_no_holder_follows_a_layer_that_keeps_its_input_grid():
    inp = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(3, 3, name="c")(inp)
    x = keras.layers.MaxPooling2D(name="mp")(x)
    x = keras.layers.Flatten(name="flat")(x)
    quantized = quantize_model(keras.Model(inp, x), weights_method="pot", activation_method="uniform",
                               representative_data=np.ones((2, 8, 8, 2), np.float32))
    names = [layer.name for layer in quantized.layers]
    assert "c_activation" in names and "mp_activation" not in names and "flat_activation" not in names


def test_explicit_quantizers_are_used_as_given():
    model = cnn()
    wq = symmetric((3, 3, 3, 8), 3)
    aq = uniform_activation(-2.0, 2.0)
    quantized = quantize_model(model, weights_quantizers={"conv": {"kernel": wq}}, activation_quantizers={"conv": aq})
    assert quantized.get_layer("conv_quantized").weights_quantizers["kernel"] == wq
    assert quantized.get_layer("conv_activation").quantizer == aq
    assert sum(isinstance(layer, QuantizationWrapper) for layer in quantized.layers) == 1
    assert sum(isinstance(layer, ActivationQuantizationHolder) for layer in quantized.layers) == 1


def test_unknown_layer_names_are_refused_listing_the_layers():
    with pytest.raises(ValueError, match=r"unknown layer names \['convv'\]; allowed: .*'conv'"):
        quantize_model(cnn(), weights_quantizers={"convv": {"kernel": symmetric((3, 3, 3, 8), 3)}})


def test_activation_method_without_data_is_refused():
    with pytest.raises(ValueError, match="activation_method needs representative_data"):
        quantize_model(cnn(), activation_method="uniform")


def test_unknown_weights_method_is_refused_listing_the_installed_ones():
    with pytest.raises(ValueError, match="no quantizer for method 'lut'.*symmetric/weights"):
        quantize_model(cnn(), weights_method="lut")


def _residual_model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", name="c1")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    y = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c2")(x)
    x = keras.layers.Add(name="add")([x, y])
    x = keras.layers.Concatenate(name="cat")([x, keras.layers.Conv2D(4, 1, name="c3")(x)])
    x = keras.layers.AveragePooling2D(2, name="avg")(x)
    x = keras.layers.Flatten(name="flat")(x)
    return keras.Model(inp, keras.layers.Dense(5, activation="softmax", name="fc")(x))


def _quantized_residual():
    return quantize_model(_residual_model(), weights_method="symmetric", activation_method="uniform",
                          representative_data=DATA)


def test_softmax_is_split_out_and_its_holder_has_tflites_fixed_grid():
    quantized = _quantized_residual()
    assert isinstance(quantized.get_layer("fc_softmax"), keras.layers.Activation)
    params = quantized.get_layer("fc_softmax_activation").quantizer.quantization_params()
    assert params.scale == np.float32(1 / 256) and params.zero_point == -128


def test_no_holder_sits_between_a_conv_and_the_relu_tflite_fuses_into_it():
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3))
    x = keras.layers.ReLU(name="relu")(keras.layers.Conv2D(4, 3, name="c")(inp))
    quantized = quantize_model(keras.Model(inp, x), weights_method="symmetric", activation_method="uniform",
                               representative_data=DATA)
    names = [layer.name for layer in quantized.layers]
    assert "c_activation" not in names and "relu_activation" in names


def test_average_pooling_holder_reuses_the_grid_of_its_input():
    quantized = _quantized_residual()
    assert quantized.get_layer("avg_activation").quantizer == quantized.get_layer("cat_activation").quantizer


def _mean_output_shift(float_model, quantized, data, name):
    f = keras.Model(float_model.inputs, float_model.get_layer(name).output)
    q = keras.Model(quantized.inputs, quantized.get_layer(f"{name}_quantized").output)
    return np.mean(np.concatenate([q(b).numpy() - f(b).numpy() for b in data]).reshape(-1, 6), axis=0)


def _offset_dense_model():
    keras.utils.set_random_seed(3)
    inp = keras.Input((16,))
    model = keras.Model(inp, keras.layers.Dense(6, name="fc")(inp))
    return model, [np.random.default_rng(i).uniform(0.5, 1.5, (32, 16)).astype(np.float32) for i in range(4)]


def test_bias_correction_removes_the_mean_output_shift_of_quantized_weights():
    model, data = _offset_dense_model()
    plain = quantize_model(model, weights_method="symmetric", weights_bits=3)
    corrected = quantize_model(model, weights_method="symmetric", weights_bits=3, representative_data=data,
                               bias_correction=True, verbose=0)
    before = np.abs(_mean_output_shift(model, plain, data, "fc"))
    after = np.abs(_mean_output_shift(model, corrected, data, "fc"))
    assert before.max() > 1e-2 and after.max() < before.max() / 100


def test_bias_correction_changes_only_the_bias():
    model, data = _offset_dense_model()
    plain = quantize_model(model, weights_method="symmetric", weights_bits=3)
    corrected = quantize_model(model, weights_method="symmetric", weights_bits=3, representative_data=data,
                               bias_correction=True, verbose=0)
    kernel_a, bias_a = plain.get_layer("fc_quantized").get_weights()
    kernel_b, bias_b = corrected.get_layer("fc_quantized").get_weights()
    np.testing.assert_array_equal(kernel_a, kernel_b)
    assert not np.array_equal(bias_a, bias_b)


def test_bias_correction_without_data_is_refused():
    with pytest.raises(ValueError, match="bias_correction needs representative_data"):
        quantize_model(cnn(), weights_method="symmetric", bias_correction=True)


@pytest.mark.parametrize("strategy", ["minmax", "percentile", "mse"])
def test_every_strategy_calibrates_weights_and_activations(strategy):
    model = cnn()
    quantized = quantize_model(model, weights_method="symmetric", weights_strategy=strategy,
                               activation_method="uniform", activation_strategy=strategy, representative_data=DATA,
                               verbose=0)
    assert np.all(np.isfinite(quantized(DATA[0]).numpy()))


def test_the_mse_strategy_gives_no_larger_weight_error_than_minmax():
    kernel = np.random.default_rng(0).standard_t(3, size=(3, 3, 8, 16)).astype(np.float32)
    errors = {}
    for strategy in ("minmax", "mse"):
        q = calibrate_weights(kernel, "symmetric", num_bits=4, strategy=strategy)
        errors[strategy] = np.sum((q(kernel).numpy().astype(np.float64) - kernel) ** 2, axis=(0, 1, 2))
    assert np.all(errors["mse"] <= errors["minmax"]) and np.any(errors["mse"] < errors["minmax"])


def test_an_unknown_strategy_is_refused_naming_the_parameter():
    with pytest.raises(ValueError, match="weights_strategy is 'best'; allowed: 'minmax', 'percentile', 'mse'"):
        quantize_model(cnn(), weights_method="symmetric", weights_strategy="best")


def test_a_concatenation_input_that_feeds_nothing_else_takes_the_concatenations_grid():
    quantized = _quantized_residual()
    cat = quantized.get_layer("cat_activation").quantizer
    assert quantized.get_layer("c3_activation").quantizer == cat
    assert quantized.get_layer("add_activation").quantizer != cat  # it also feeds c3: its own grid


@pytest.mark.skipif(not KERAS_3, reason="keras.ops operations on tensors are Functional nodes on Keras 3 only")
def test_keras_ops_on_tensors_get_holders_so_the_int8_file_has_no_float_section():
    """MobileNetV3's hard-sigmoid: ``relu6(x + 3) / 6`` written with keras.ops on a tensor (Operation nodes,
    not layers). Each gets a holder where TFLite requantizes (the ReLU6 fused into the ADD), so the file is int8
    throughout and within one step of the Keras model."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 3)(inp)
    gate = keras.ops.multiply(keras.layers.ReLU(6.0)(keras.ops.add(x, 3.0)), 1.0 / 6.0)
    model = keras.Model(inp, keras.layers.Multiply()([x, gate]))
    data = batches((6, 6, 3), n=2, seed=3)
    q = quantize_model(model, weights_method="symmetric", activation_method="uniform", representative_data=data,
                       verbose=0)
    operations = [op.name for op in model.operations if not isinstance(op, keras.layers.Layer)]
    holders = {layer.name for layer in q.layers if isinstance(layer, ActivationQuantizationHolder)}
    add, multiply = operations
    assert f"{multiply}_activation" in holders and f"{add}_activation" not in holders  # ReLU6 fused into ADD
    flatbuffer = to_tflite(q)  # refuses float sections
    x = np.concatenate(batches((6, 6, 3), n=2, seed=4))
    lite, step, _ = run_tflite(flatbuffer, q.layers[1](x).numpy())
    assert np.abs(lite - q(q.layers[1](x).numpy()).numpy()).max() <= step * (1 + 1e-3)
