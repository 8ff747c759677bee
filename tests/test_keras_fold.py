"""Batch-norm folding and separable convolutions in quantize_model: the float rewrites keep the outputs, the
quantizers describe the folded weights, and the int8 file holds no batch-norm op."""

import numpy as np
import pytest
import tensorflow as tf
from keras_models import batches
from test_keras_tflite import run_tflite

from iqcore.keras import QuantizationWrapper, quantize_model, tflite_weight_tensors, to_tflite
from iqcore.keras._fold import fold_batch_norms, split_separable

keras = tf.keras
L = keras.layers
DATA = batches((12, 12, 4), n=2, batch=8, seed=3)


def realistic(model, seed=0):
    """Random batch-norm statistics, so that folding moves every weight (fresh ones are an identity)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            n = layer.get_weights()[0].shape[0]
            layer.set_weights([rng.uniform(0.5, 2, n), rng.normal(0, 0.3, n), rng.normal(0, 0.5, n),
                               rng.uniform(0.2, 3, n)])
    return model


def with_bn(conv, seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((12, 12, 4))
    x = conv(inp)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(name="relu")(x)
    x = L.GlobalAveragePooling2D(name="pool")(x) if len(x.shape) == 4 else x
    return realistic(keras.Model(inp, L.Dense(3, name="fc")(x)), seed)


CONVS = {
    "conv2d": lambda: L.Conv2D(6, 3, padding="same", name="conv"),
    "conv2d_no_bias": lambda: L.Conv2D(6, 3, use_bias=False, name="conv"),
    "depthwise_multiplier_2": lambda: L.DepthwiseConv2D(3, depth_multiplier=2, name="conv"),
    "separable": lambda: L.SeparableConv2D(5, 3, depth_multiplier=2, name="conv"),
    "transpose": lambda: L.Conv2DTranspose(5, 3, strides=2, name="conv"),
}


@pytest.mark.parametrize("kind", sorted(CONVS))
def test_folded_float_model_computes_the_same_outputs(kind):
    model = with_bn(CONVS[kind]())
    folded, pairs = fold_batch_norms(split_separable(model))
    assert pairs and not any(isinstance(layer, L.BatchNormalization) for layer in folded.layers)
    x = np.concatenate(DATA)
    np.testing.assert_allclose(folded(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-5)


def test_a_dense_layer_folds_its_batch_norm():
    keras.utils.set_random_seed(1)
    inp = keras.Input((7,))
    model = realistic(keras.Model(inp, L.BatchNormalization(name="bn")(L.Dense(4, name="fc")(inp))))
    folded, pairs = fold_batch_norms(model)
    x = np.random.default_rng(0).normal(size=(16, 7)).astype(np.float32)
    assert pairs == {"bn": "fc"}
    np.testing.assert_allclose(folded(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)


def test_a_sequential_model_folds_too():
    keras.utils.set_random_seed(2)
    model = realistic(keras.Sequential([keras.Input((12, 12, 4)), L.Conv2D(6, 3, name="conv"),
                                        L.BatchNormalization(name="bn"), L.ReLU()]))
    folded, pairs = fold_batch_norms(model)
    assert pairs == {"bn": "conv"}
    np.testing.assert_allclose(folded(DATA[0]).numpy(), model(DATA[0]).numpy(), rtol=1e-4, atol=1e-5)


def test_a_batch_norm_after_an_add_becomes_a_quantized_1x1_depthwise_with_a_holder():
    keras.utils.set_random_seed(3)
    inp = keras.Input((12, 12, 4))
    x = L.Add(name="add")([L.Conv2D(4, 1, name="a")(inp), inp])
    model = realistic(keras.Model(inp, L.BatchNormalization(name="bn")(x)))
    assert fold_batch_norms(model)[1] == {}
    q = quantize_model(model, weights_method="symmetric", activation_method="uniform", representative_data=DATA,
                       verbose=0)
    names = [layer.name for layer in q.layers]
    assert "bn_quantized" in names and "bn_activation" in names
    assert isinstance(q.get_layer("bn_quantized").layer, L.DepthwiseConv2D)
    assert "DEQUANTIZE" not in [op["op_name"] for op in tf.lite.Interpreter(model_content=to_tflite(q))
                                ._get_ops_details()]


def test_a_batch_norm_after_a_fused_activation_is_not_folded():
    keras.utils.set_random_seed(4)
    inp = keras.Input((12, 12, 4))
    model = realistic(keras.Model(inp, L.BatchNormalization()(L.Conv2D(4, 3, activation="relu")(inp))))
    assert fold_batch_norms(model)[1] == {}


def test_quantize_model_folds_by_default_and_quantizes_the_folded_kernel():
    model = with_bn(CONVS["conv2d"]())
    q = quantize_model(model, weights_method="symmetric", activation_method="uniform", representative_data=DATA,
                       verbose=0)
    assert not any(isinstance(layer, L.BatchNormalization) for layer in q.layers)
    wrapper = q.get_layer("conv_quantized")
    kernel = wrapper.quantized_variables()["kernel"].numpy()
    quantizer = wrapper.weights_quantizers["kernel"]
    np.testing.assert_array_equal(quantizer(kernel).numpy(), kernel)
    folded, _ = fold_batch_norms(model)
    np.testing.assert_allclose(kernel, folded.get_layer("conv").kernel.numpy(),
                               atol=float(quantizer.quantization_params().scale.max()) / 2 * 1.0001)


def test_fold_batch_norm_false_keeps_the_batch_norm():
    model = with_bn(CONVS["conv2d"]())
    q = quantize_model(model, weights_method="symmetric", fold_batch_norm=False)
    assert any(isinstance(layer, L.BatchNormalization) for layer in q.layers)


@pytest.mark.parametrize("kind", ["conv2d", "separable", "depthwise_multiplier_2"])
def test_int8_file_has_no_batch_norm_ops_and_the_quantizers_scales(kind):
    model = with_bn(CONVS[kind]())
    q = quantize_model(model, weights_method="pot", activation_method="uniform", representative_data=DATA,
                       verbose=0)
    flatbuffer = to_tflite(q)  # checks every wrapped weight's scales against quantization_params()
    ops = [op["op_name"] for op in tf.lite.Interpreter(model_content=flatbuffer)._get_ops_details()]
    assert "MUL" not in ops and "DEQUANTIZE" not in ops and "QUANTIZE" not in ops, ops
    wrapped = [layer for layer in q.layers if isinstance(layer, QuantizationWrapper)]
    assert set(tflite_weight_tensors(flatbuffer, q)) == {(w.name, name) for w in wrapped for name in
                                                         w.weights_quantizers}
    x = np.concatenate(DATA)
    got, step, _ = run_tflite(flatbuffer, x)
    assert np.abs(got - q(x).numpy()).max() <= step * 1.0001


def test_a_separable_convolution_becomes_two_quantized_layers_with_a_holder_between():
    model = with_bn(CONVS["separable"]())
    q = quantize_model(model, weights_method="symmetric", activation_method="uniform", representative_data=DATA,
                       verbose=0)
    names = [layer.name for layer in q.layers]
    assert names.index("conv_quantized") < names.index("conv_activation") < names.index("conv_pointwise_quantized")
    assert q.get_layer("conv_quantized").weights_quantizers["kernel"].channel_axis == 2


def test_a_per_channel_quantizer_on_a_size_1_axis_exports_as_its_single_scale():
    from keras_models import symmetric, uniform_activation

    from iqcore.keras import ActivationQuantizationHolder

    inp = keras.Input((12, 12, 4))
    x = ActivationQuantizationHolder(uniform_activation())(inp)
    wrapper = QuantizationWrapper(L.DepthwiseConv2D(3, name="dw"), {"kernel": symmetric((3, 3, 4, 1), 3)})
    x = ActivationQuantizationHolder(uniform_activation())(wrapper(x))
    flatbuffer = to_tflite(keras.Model(inp, x))
    scales = tflite_weight_tensors(flatbuffer, keras.Model(inp, x))[(wrapper.name, "kernel")]
    single = wrapper.weights_quantizers["kernel"].quantization_params().scale
    np.testing.assert_array_equal(scales["quantization_parameters"]["scales"], np.repeat(single, 4))


def test_an_empty_weights_quantizers_entry_leaves_that_layer_in_float():
    keras.utils.set_random_seed(5)
    inp = keras.Input((6, 6, 4))
    x = L.Conv2DTranspose(3, 3, name="up")(inp)
    model = keras.Model(inp, L.Conv2D(2, 3, name="conv")(x))
    q = quantize_model(model, weights_quantizers={"up": {}}, weights_method="symmetric")
    assert not isinstance(q.get_layer("up"), QuantizationWrapper)
    assert isinstance(q.get_layer("conv_quantized"), QuantizationWrapper)


def test_biases_lie_on_the_int32_grid_tflite_stores_them_on():
    model = with_bn(CONVS["conv2d"]())
    q = quantize_model(model, weights_method="symmetric", activation_method="uniform", representative_data=DATA,
                       verbose=0)
    wrapper = q.get_layer("conv_quantized")
    s_in = float(q.get_layer(f"{q.inputs[0]._keras_history[0].name}_activation").quantizer.quantization_params().scale)
    s_w = wrapper.weights_quantizers["kernel"].quantization_params().scale.astype(np.float64)
    units = wrapper.layer.bias.numpy() / (s_in * s_w)
    np.testing.assert_allclose(units, np.round(units), atol=1e-3)


def test_compare_matches_every_holder_to_a_tensor_of_the_file_and_counts_differences():
    from iqcore.keras import compare

    model = with_bn(CONVS["conv2d"]())
    q = quantize_model(model, weights_method="symmetric", activation_method="uniform", representative_data=DATA,
                       verbose=0)
    rows = compare(q, to_tflite(q), np.concatenate(DATA))
    holders = [layer.name for layer in q.layers if "Holder" in type(layer).__name__]
    assert [r.layer for r in rows] == holders
    assert all(r.tensor is not None and r.values > 0 and r.max_steps <= 1.0 + 1e-4 for r in rows), rows


def test_iqcore_compare_prints_a_row_per_holder(tmp_path):
    import subprocess
    import sys

    model = with_bn(CONVS["conv2d"]())
    q = quantize_model(model, weights_method="symmetric", activation_method="uniform", representative_data=DATA,
                       verbose=0)
    q.save(str(tmp_path / "m.keras"))
    (tmp_path / "m.tflite").write_bytes(to_tflite(q))
    result = subprocess.run([sys.executable, "-m", "iqcore.cli", "compare", str(tmp_path / "m.keras"),
                             str(tmp_path / "m.tflite"), "--samples", "4"], capture_output=True, text=True,
                            timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    holders = [layer.name for layer in q.layers if "Holder" in type(layer).__name__]
    assert all(any(line.startswith(h) for line in result.stdout.splitlines()) for h in holders), result.stdout
    assert f"{len(holders)} of {len(holders)} holders matched" in result.stdout


def test_an_activation_range_the_converter_would_widen_is_refused_naming_the_holder():
    import iqcore
    from iqcore.keras import ActivationQuantizationHolder

    inp = keras.Input((4,))
    tiny = iqcore.get_quantizer("uniform", "activation", num_bits=8, min_range=0.0, max_range=1e-8)
    model = keras.Model(inp, ActivationQuantizationHolder(tiny, name="tiny")(inp))
    with pytest.raises(ValueError, match="tiny: its range .* narrower than 1e-06"):
        to_tflite(model)


def test_float_sections_are_refused_unless_allowed():
    import iqcore
    from iqcore.keras import ActivationQuantizationHolder
    from iqcore.keras._tflite import FloatSectionWarning

    keras.utils.set_random_seed(6)
    inp = keras.Input((12, 12, 4))
    holder = iqcore.get_quantizer("uniform", "activation", num_bits=8, min_range=-1.0, max_range=1.0)
    x = ActivationQuantizationHolder(holder, name="in_q")(inp)
    x = L.Conv2D(3, 3, name="conv")(x)  # float weights and no holder after it: the converter keeps it float
    model = keras.Model(inp, ActivationQuantizationHolder(holder, name="out_q")(L.Lambda(tf.math.sin)(x)))
    with pytest.raises(ValueError, match="activations stay float"):
        to_tflite(model)
    with pytest.warns(FloatSectionWarning):
        to_tflite(model, allow_float=True)


def test_a_model_applying_ops_to_keras_tensors_quantizes_and_folds():
    keras.utils.set_random_seed(7)
    inp = keras.Input((12, 12, 4))
    x = L.BatchNormalization(name="bn")(L.Conv2D(4, 3, name="c")(inp))
    x = L.Multiply(name="m")([x, L.ReLU(6.0, name="r6")(x + 3.0) * (1.0 / 6.0)])  # hard swish, as MobileNetV3
    model = realistic(keras.Model(inp, L.Dense(3, name="fc")(L.GlobalAveragePooling2D(name="pool")(x))))
    q = quantize_model(model, weights_method="symmetric", activation_method="uniform", representative_data=DATA,
                       verbose=0)
    assert not any(isinstance(layer, L.BatchNormalization) for layer in q.layers)
    x = np.concatenate(DATA)
    scale = float(np.abs(model(x).numpy()).max())
    assert np.abs(q(x).numpy() - model(x).numpy()).max() < 0.1 * scale


@pytest.mark.parametrize("kind", ["batch_norm_after_add", "rescaling", "normalization"])
def test_a_per_channel_affine_layer_becomes_a_1x1_depthwise_with_the_same_outputs(kind):
    from iqcore.keras._fold import affine_as_depthwise

    keras.utils.set_random_seed(8)
    inp = keras.Input((12, 12, 4))
    if kind == "batch_norm_after_add":
        x = L.BatchNormalization(name="affine")(L.Add()([L.Conv2D(4, 1)(inp), inp]))
    elif kind == "rescaling":
        x = L.Rescaling(1 / 127.5, offset=-1.0, name="affine")(inp)
    else:
        x = L.Normalization(mean=[0.1, 0.2, 0.3, 0.4], variance=[1.0, 2.0, 0.5, 4.0], name="affine")(inp)
    model = realistic(keras.Model(inp, L.Conv2D(3, 3, name="conv")(x)))
    new = affine_as_depthwise(model)
    assert isinstance(new.get_layer("affine"), L.DepthwiseConv2D)
    x = np.concatenate(DATA) * 100
    np.testing.assert_allclose(new(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-4)


def test_a_rescaled_input_converts_to_int8_with_no_float_section():
    keras.utils.set_random_seed(9)
    inp = keras.Input((12, 12, 4))
    x = L.Rescaling(1 / 127.5, offset=-1.0, name="scale")(inp)
    model = keras.Model(inp, L.Conv2D(3, 3, name="conv")(x))
    data = [np.random.default_rng(i).uniform(0, 255, (8, 12, 12, 4)).astype(np.float32) for i in range(2)]
    q = quantize_model(model, weights_method="symmetric", activation_method="uniform", representative_data=data,
                       verbose=0)
    flatbuffer = to_tflite(q)  # refuses float sections
    got, step, _ = run_tflite(flatbuffer, data[0])
    assert np.abs(got - q(data[0]).numpy()).max() <= step * 1.0001
