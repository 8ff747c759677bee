"""Integer-exact simulation (quantize_model(..., integer_simulation="xnnpack")): the quantized Keras model gives
the int8 interpreter's numbers, ties included; it saves, reloads, and exports as the float form."""

import numpy as np
import pytest
import tensorflow as tf
from keras_models import fresh_process_mismatches

import iqcore
from iqcore.keras import (
    ActivationQuantizationHolder,
    IntegerAdd,
    IntegerSimulation,
    QuantizationWrapper,
    compare,
    deployment_form,
    quantize_model,
    run_tflite,
    to_tflite,
)
from iqcore.keras._integer import add_parameters

keras = tf.keras


def residual_cnn(seed=0):
    """Conv + ReLU6, depthwise + ReLU, a projection, a residual Add + ReLU, global pooling and a Dense head:
    the op kinds the simulation covers, with batch norms folded on the way."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(inp)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU(6.0)(x)
    y = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    y = keras.layers.ReLU()(y)
    y = keras.layers.Conv2D(8, 1)(y)
    x = keras.layers.ReLU()(keras.layers.Add()([x, y]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(5)(x))


def dense_block(seed=0):
    """DenseNet's pattern: a max-pooled stem feeding both a concatenation and a batch norm (a 1x1 depthwise
    after it), two concatenations on different grids, and an average-pooling transition."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((12, 12, 3))
    x = keras.layers.ReLU()(keras.layers.Conv2D(8, 3, padding="same")(inp))
    x = keras.layers.MaxPooling2D(2)(keras.layers.ZeroPadding2D(1)(x))
    for _ in range(2):
        y = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
        y = keras.layers.Conv2D(4, 3, padding="same")(y)
        x = keras.layers.Concatenate()([x, y])
    x = keras.layers.AveragePooling2D(2)(keras.layers.Conv2D(8, 1)(x))
    return keras.Model(inp, keras.layers.Dense(3)(keras.layers.Flatten()(x)))


def squeeze_excite(seed=0):
    """EfficientNet's pattern: swish activations (LOGISTIC and MUL in TFLite), a squeeze-and-excite branch
    with a sigmoid gate multiplied into the features, and a residual Add."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="swish")(inp)
    se = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
    se = keras.layers.Conv2D(4, 1, activation="swish")(se)
    se = keras.layers.Conv2D(8, 1, activation="sigmoid")(se)
    y = keras.layers.Multiply()([x, se])
    x = keras.layers.Add()([x, keras.layers.Conv2D(8, 1)(y)])
    return keras.Model(inp, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))


def shared_relus(seed=0):
    """NASNet's pattern: a convolution (batch norm folded) whose output three identical ReLUs consume, each
    starting a separable-convolution branch; TensorFlow merges the ReLUs and the converter fuses the merged one
    into the convolution, so no int8 tensor holds the convolution's own output."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((12, 12, 3))
    x = keras.layers.BatchNormalization()(keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(inp))
    branches = [keras.layers.SeparableConv2D(8, k, padding="same")(keras.layers.Activation("relu")(x))
                for k in (3, 5)]
    y = keras.layers.Add()(branches)
    z = keras.layers.Conv2D(8, 1)(keras.layers.Activation("relu")(x))
    x = keras.layers.Concatenate()([y, z])
    return keras.Model(inp, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))


def batches(n, seed, shape=(12, 12, 3)):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, (8, *shape)).astype(np.float32) for _ in range(n)]


def on_input_grid(model, x):
    """``x`` on the input holder's grid, so that the Keras model and the interpreter read the same codes."""
    first = next(layer for layer in model.layers if isinstance(layer, ActivationQuantizationHolder))
    return first(x).numpy()


@pytest.fixture(scope="module", params=["pot", "symmetric"])
def simulated(request):
    model = residual_cnn()
    q = quantize_model(model, weights_method=request.param, activation_method="uniform",
                       representative_data=batches(2, 1), integer_simulation="xnnpack", verbose=0)
    return q, to_tflite(q)


def test_simulated_model_gives_the_interpreters_numbers_exactly(simulated):
    model, flatbuffer = simulated
    x = on_input_grid(model, np.concatenate(batches(4, 7)))
    lite, scale, _ = run_tflite(flatbuffer, x)
    assert np.array_equal(lite, model(x).numpy().astype(np.float32)), np.abs(lite - model(x).numpy()).max() / scale


@pytest.mark.parametrize("method", ["pot", "symmetric"])
def test_concatenations_requantizations_and_average_pooling_give_the_interpreters_numbers(method):
    model = quantize_model(dense_block(), weights_method=method, activation_method="uniform",
                           representative_data=batches(2, 1), integer_simulation="xnnpack", verbose=0)
    kinds = {type(layer).__name__ for layer in model.layers}
    assert {"IntegerConcatenate", "IntegerAveragePooling2D"} <= kinds
    assert any(getattr(layer, "source", None) is not None for layer in model.layers)  # a requantizing holder
    x = on_input_grid(model, np.concatenate(batches(4, 8)))
    lite, _, _ = run_tflite(to_tflite(model), x)
    assert np.array_equal(lite, model(x).numpy().astype(np.float32))


@pytest.mark.parametrize("method", ["pot", "symmetric"])
def test_identical_relus_of_one_output_fuse_into_its_op_as_in_the_interpreter(method):
    model = quantize_model(shared_relus(), weights_method=method, activation_method="uniform",
                           representative_data=batches(2, 1), integer_simulation="xnnpack", verbose=0)
    conv = next(layer for layer in model.layers if isinstance(layer, QuantizationWrapper)
                and type(layer.layer) is keras.layers.Conv2D and layer.layer.get_config()["kernel_size"] == (3, 3))
    holders = {layer.name for layer in model.layers if isinstance(layer, ActivationQuantizationHolder)}
    assert f"{conv.layer.name}_activation" not in holders  # the merged ReLU is fused: one rounding
    assert conv.integer_simulation is not None and conv.integer_simulation.activation == "relu"
    x = on_input_grid(model, np.concatenate(batches(4, 8)))
    lite, _, _ = run_tflite(to_tflite(model), x)
    assert np.array_equal(lite, model(x).numpy().astype(np.float32))


def test_compare_matches_the_holders_of_merged_relus_to_their_one_tensor():
    model = quantize_model(shared_relus(), weights_method="pot", activation_method="uniform",
                           representative_data=batches(2, 1), integer_simulation="xnnpack", verbose=0)
    rows = compare(model, to_tflite(model), on_input_grid(model, batches(1, 8)[0]))
    relus = [r for r in rows if r.layer.startswith("activation")]
    assert len(relus) == 3 and all(r.tensor is not None for r in rows)
    assert len({r.tensor for r in relus}) == 1


def test_simulated_model_predicts_in_graph_mode_with_the_eager_numbers(simulated):
    model, _ = simulated
    x = on_input_grid(model, batches(1, 9)[0])
    assert np.array_equal(model.predict(x, verbose=0), model(x).numpy())


@pytest.mark.parametrize("method", ["pot", "symmetric"])
def test_swish_sigmoid_and_multiply_give_the_interpreters_numbers(method):
    model = quantize_model(squeeze_excite(), weights_method=method, activation_method="uniform",
                           representative_data=batches(2, 1), integer_simulation="xnnpack", verbose=0)
    kinds = {type(layer).__name__ for layer in model.layers}
    assert {"IntegerActivation", "IntegerMultiply", "IntegerAdd"} <= kinds
    x = on_input_grid(model, np.concatenate(batches(4, 8)))
    lite, _, _ = run_tflite(to_tflite(model), x)
    assert np.array_equal(lite, model(x).numpy().astype(np.float32))


def test_every_covered_layer_is_simulated(simulated):
    model, _ = simulated
    wrappers = [layer for layer in model.layers if isinstance(layer, QuantizationWrapper)]
    assert wrappers and all(w.integer_simulation is not None for w in wrappers)
    assert sum(isinstance(layer, IntegerAdd) for layer in model.layers) == 1


def test_a_half_step_rounds_to_even_as_the_interpreter_does():
    """A 1x1 convolution whose output falls exactly on half steps: TensorFlow's fake-quant rounds them up,
    the interpreter to even; the simulation follows the interpreter."""
    step = 2.0 ** -4
    act_in = iqcore.get_quantizer("symmetric", "activation", num_bits=8, threshold=[8.0], signed=True)
    act_out = iqcore.get_quantizer("symmetric", "activation", num_bits=8, threshold=[16.0], signed=True)
    kernel_q = iqcore.get_quantizer("pot", "weights", num_bits=8, threshold=[1.0], narrow_range=True)
    inp = keras.Input((1, 1, 1))
    x = ActivationQuantizationHolder(act_in)(inp)
    conv = keras.layers.Conv2D(1, 1, use_bias=False)
    wrapper = QuantizationWrapper(conv, {"kernel": kernel_q}, integer_simulation=IntegerSimulation(act_in, act_out))
    model = keras.Model(inp, ActivationQuantizationHolder(act_out)(wrapper(x)))
    wrapper.set_weights([np.full((1, 1, 1, 1), 0.5, np.float32)])
    # input codes 1..7 (step 1/16) times 0.5 on an output step of 1/8: k/32 = (k/4) output steps, ties at k = 2, 6
    x = (np.arange(1, 8, dtype=np.float32) * step).reshape(7, 1, 1, 1)
    lite, _, _ = run_tflite(to_tflite(model), x)
    simulated = model(x).numpy()
    assert np.array_equal(lite.reshape(-1), simulated.reshape(-1))
    with deployment_form(model):  # the float form: TensorFlow's rounding, half steps up
        float_form = model(x).numpy().reshape(-1)
    assert simulated.reshape(-1)[1] == 0.0 and float_form[1] == 2.0 ** -3  # 2/32 = 0.5 output steps


@pytest.mark.parametrize("ratios", [(0.37, 0.9), (1.0, 1.0), (3.5, 0.01), (0.001, 200.0)])
def test_add_parameters_are_21_bit_multipliers_of_the_scale_ratios(ratios):
    a_mult, b_mult, shift = add_parameters(np.float32(ratios[0]), np.float32(ratios[1]), np.float32(1.0))
    assert 2**20 <= max(a_mult, b_mult) < 2**21
    for mult, ratio in zip((a_mult, b_mult), ratios, strict=True):
        assert abs(mult / 2.0**shift - np.float32(ratio)) <= 2.0 ** -(shift + 1)


def test_add_parameters_refuse_a_ratio_xnnpack_does_not_run():
    with pytest.raises(ValueError, match=r"allowed: \[2\*\*-10, 2\*\*8\)"):
        add_parameters(np.float32(1.0), np.float32(1e-4), np.float32(1.0))


def test_deployment_form_gives_the_float_computation(simulated):
    model, _ = simulated
    x = on_input_grid(model, batches(1, 3)[0])
    with deployment_form(model):
        float_form = model(x).numpy()
    plain = quantize_model(residual_cnn(), weights_method="pot", activation_method="uniform",
                           representative_data=batches(2, 1), verbose=0)
    assert float_form.shape == plain(x).numpy().shape
    assert not any(getattr(layer, "_deploy", False) for layer in model.layers)  # restored after the block


def test_simulated_model_reloads_in_a_fresh_process_with_identical_outputs(simulated, tmp_path):
    model, _ = simulated
    assert fresh_process_mismatches(model, on_input_grid(model, batches(1, 5)[0]), tmp_path) == 0


def test_simulated_model_reloads_with_its_simulation(simulated, tmp_path):
    model, _ = simulated
    model.save(tmp_path / "m.keras")
    loaded = iqcore.load_model(tmp_path / "m.keras")
    kinds = [type(layer).__name__ for layer in loaded.layers]
    assert kinds == [type(layer).__name__ for layer in model.layers]
    assert all(w.integer_simulation == m.integer_simulation for w, m in zip(loaded.layers, model.layers, strict=True)
               if isinstance(w, QuantizationWrapper))


def test_integer_simulation_refuses_an_unknown_runtime():
    with pytest.raises(ValueError, match="integer_simulation is 'arm'; allowed"):
        quantize_model(residual_cnn(), weights_method="pot", activation_method="uniform",
                       representative_data=batches(1, 1), integer_simulation="arm", verbose=0)


def test_integer_simulation_needs_per_tensor_activation_grids():
    per_channel = iqcore.get_quantizer("symmetric", "weights", num_bits=8, threshold=[1.0])
    act = iqcore.get_quantizer("uniform", "activation", num_bits=8, min_range=[-1.0], max_range=[1.0])
    with pytest.raises(TypeError, match="integer_simulation input must be a per-tensor activation quantizer"):
        IntegerSimulation(per_channel, act)
    with pytest.raises(ValueError, match="activation is 'gelu'"):
        IntegerSimulation(act, act, activation="gelu")


def test_integer_simulation_on_a_layer_it_does_not_cover_is_refused():
    act = iqcore.get_quantizer("uniform", "activation", num_bits=8, min_range=[-1.0], max_range=[1.0])
    q = iqcore.get_quantizer("symmetric", "weights", num_bits=8, threshold=[1.0])
    with pytest.raises(ValueError, match="integer_simulation covers a wrapped Conv1D, Conv2D, DepthwiseConv2D or "
                                         "Dense"):
        QuantizationWrapper(keras.layers.Conv2DTranspose(2, 3), {"kernel": q},
                            integer_simulation=IntegerSimulation(act, act))
