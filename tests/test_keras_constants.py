"""Constant operands in QuantizationWrapper (the seed's positional weights): ``{position: quantizer}`` with
``weight_values``, call arguments and list inputs; on Keras 3, ``keras.ops`` operations; through
quantize_model, save/load in a fresh process, int8 TFLite and the seed's files (test_seed_models.py has the
bit-identical loads of tests/fixtures/constants.*)."""

import json

import numpy as np
import pytest
import tensorflow as tf
from keras_models import fresh_process_mismatches

import iqcore
from iqcore.keras import (
    KERAS_3,
    ActivationQuantizationHolder,
    QuantizationWrapper,
    TFOperation,
    load_seed_model,
    quantize_model,
    run_tflite,
    tflite_weight_tensors,
    to_tflite,
)

keras = tf.keras
needs_keras_3 = pytest.mark.skipif(not KERAS_3, reason="keras.ops operations in Functional models are Keras 3")


def pot(threshold=1.0, **layout):
    return iqcore.get_quantizer("pot", "weights", num_bits=8, threshold=[threshold], **layout)


def symmetric_activation(threshold):
    return iqcore.get_quantizer("symmetric", "activation", num_bits=8, threshold=[threshold], signed=True)


def same_bits(a, b):
    return np.array_equal(np.asarray(a, np.float32).view(np.uint32), np.asarray(b, np.float32).view(np.uint32))


def rng(seed=0):
    return np.random.default_rng(seed)


def subtract_layer():
    """A layer computing ``a - b`` on Keras 2 and Keras 3 alike."""
    return TFOperation("math.subtract")


def test_constant_is_quantized_and_inserted_at_its_position():
    c = rng().uniform(-1, 1, 6).astype("float32")
    x = rng(1).uniform(-1, 1, (2, 6)).astype("float32")
    wrapper = QuantizationWrapper(subtract_layer(), {0: pot()}, weight_values={0: c})
    assert same_bits(wrapper(x), tf.subtract(pot()(c), x))


def test_constant_after_the_input_and_call_keyword_arguments_reach_the_op():
    c = rng().uniform(-1, 1, (3, 6)).astype("float32")
    x = rng(1).uniform(-1, 1, (2, 6)).astype("float32")
    wrapper = QuantizationWrapper(TFOperation("linalg.matmul"), {1: pot()}, {1: c}, op_call_args=[False],
                                  op_call_kwargs={"transpose_b": True})
    assert same_bits(wrapper(x), tf.linalg.matmul(x, pot()(c), False, transpose_b=True))


def test_inputs_as_list_pass_one_list_to_a_merge_layer():
    c = rng().uniform(0.1, 1, (1, 6)).astype("float32")
    x = rng(1).uniform(-1, 1, (1, 6)).astype("float32")
    wrapper = QuantizationWrapper(keras.layers.Multiply(), {1: pot()}, {1: c}, is_inputs_as_list=True)
    assert same_bits(wrapper(x), x * pot()(c).numpy())


def test_constant_is_stored_quantized_in_positional_weight_variable():
    c = rng().uniform(-1, 1, 6).astype("float32")
    wrapper = QuantizationWrapper(subtract_layer(), {0: pot()}, {0: c})
    wrapper(np.zeros((1, 6), np.float32))
    assert same_bits(wrapper.positional_weight_0, pot()(c))
    assert same_bits(wrapper.quantized_variables()[0], pot()(c))
    assert same_bits(wrapper.weight_values[0], c)  # the float constant as given


def test_set_weights_requantizes_the_constant():
    wrapper = QuantizationWrapper(subtract_layer(), {0: pot()}, {0: np.zeros(4, np.float32)})
    wrapper(np.zeros((1, 4), np.float32))
    new = rng().uniform(-1, 1, 4).astype("float32")
    wrapper.set_weights([new])
    assert same_bits(wrapper.get_weights()[0], pot()(new))


def test_set_weights_before_the_build_is_refused_naming_the_wrapper():
    wrapper = QuantizationWrapper(subtract_layer(), {0: pot()}, {0: np.zeros(4, np.float32)}, name="sub")
    with pytest.raises(ValueError, match="sub: set_weights before the wrapper is built"):
        wrapper.set_weights([np.ones(4, np.float32)])


def test_per_channel_constant_quantizer_must_fit_the_constant():
    q = iqcore.get_quantizer("pot", "weights", num_bits=8, threshold=[1.0] * 5, per_channel=True, channel_axis=-1,
                             input_rank=1)
    wrapper = QuantizationWrapper(subtract_layer(), {0: q}, {0: np.zeros(6, np.float32)})
    with pytest.raises(ValueError, match=r"weights_quantizers\[0\].*shape \(6,\)"):
        wrapper(np.zeros((1, 6), np.float32))


@pytest.mark.parametrize("quantizers, values, match", [
    ({0: pot()}, None, "weight_values"),
    ({0: pot()}, {1: np.ones(2)}, "same positions"),
    ({0: pot(), "kernel": pot()}, {0: np.ones(2)}, "names or positions"),
    ({0: pot()}, {0: np.array([1.0, np.nan])}, "finite"),
])
def test_inconsistent_constants_are_refused_with_a_value_error(quantizers, values, match):
    with pytest.raises(ValueError, match=match):
        QuantizationWrapper(subtract_layer(), quantizers, values)


@pytest.mark.parametrize("kwargs, match", [
    ({"weights_quantizers": {-1: pot()}, "weight_values": {-1: np.ones(2)}}, "positions"),
    ({"weights_quantizers": {True: pot()}, "weight_values": {True: np.ones(2)}}, "positions"),
    ({"weights_quantizers": {0: pot()}, "weight_values": {0: np.array(["a"])}}, "real numbers"),
    ({"weights_quantizers": {0: pot()}, "weight_values": {0: np.ones(2)}, "op_call_args": 3}, "op_call_args"),
    ({"weights_quantizers": {0: pot()}, "weight_values": {0: np.ones(2)}, "op_call_kwargs": {"f": object()}},
     "JSON"),
    ({"weights_quantizers": {0: pot()}, "weight_values": {0: np.ones(2)}, "is_inputs_as_list": 1},
     "is_inputs_as_list"),
])
def test_constant_arguments_of_the_wrong_type_are_refused_with_a_type_error(kwargs, match):
    with pytest.raises(TypeError, match=match):
        QuantizationWrapper(subtract_layer(), **kwargs)


def test_tf_operation_refuses_a_function_outside_its_table():
    with pytest.raises(ValueError, match="function is 'io.write_file'; allowed"):
        TFOperation("io.write_file")


def test_config_round_trip_keeps_constants_and_call_arguments():
    c = rng().uniform(-1, 1, (3, 6)).astype("float32")
    wrapper = QuantizationWrapper(TFOperation("linalg.matmul"), {1: pot()}, {1: c},
                                  op_call_kwargs={"transpose_b": True})
    config = json.loads(json.dumps(wrapper.get_config()))
    rebuilt = QuantizationWrapper.from_config(config)
    assert rebuilt.weights_quantizers == {1: pot()}
    assert same_bits(rebuilt.weight_values[1], c) and rebuilt.op_call_kwargs == {"transpose_b": True}
    x = rng(1).uniform(-1, 1, (2, 6)).astype("float32")
    assert same_bits(rebuilt(x), wrapper(x))


def test_tampered_constant_in_a_config_is_refused_naming_it():
    wrapper = QuantizationWrapper(subtract_layer(), {0: pot()}, {0: np.ones(3, np.float32)})
    config = json.loads(json.dumps(wrapper.get_config()))
    config["weight_values"]["0"]["config"]["value"] = ["x", 1, 2]
    with pytest.raises(TypeError, match=r"weight_values\['0'\]"):
        QuantizationWrapper.from_config(config)


def constants_model():
    """A Keras 3 model with constant operands of two ``keras.ops`` operations and a merge layer."""
    r = rng(3)
    inp = keras.Input((4, 4, 3), batch_size=1)
    x = keras.layers.Conv2D(6, 1, name="conv")(inp)
    x = keras.ops.subtract(r.uniform(-1, 1, 6).astype("float32"), x)
    x = keras.layers.Multiply(name="mul")([x, r.uniform(0.2, 1, (1, 4, 4, 6)).astype("float32")])
    x = keras.ops.matmul(x, r.uniform(-0.5, 0.5, (6, 2)).astype("float32"))
    return keras.Model(inp, x)


def op_name(model, cls: str) -> str:
    """The name Keras gave the model's operation of class ``cls`` (``subtract``, ``subtract_1``...)."""
    return next(op.name for op in model.operations if type(op).__name__ == cls)


def quantized_constants_model(model=None):
    model = model or constants_model()
    data = [rng(i).uniform(-1, 1, (1, 4, 4, 3)).astype("float32") for i in range(4)]
    quantizers = {op_name(model, "Subtract"): {0: pot()}, "mul": {1: pot()}, op_name(model, "Matmul"): {1: pot(0.5)}}
    return quantize_model(model, quantizers, weights_method="symmetric", activation_method="symmetric",
                          representative_data=data, verbose=0), data


@needs_keras_3
def test_quantize_model_wraps_the_named_constant_operands():
    model = constants_model()
    sub, matmul = op_name(model, "Subtract"), op_name(model, "Matmul")
    qmodel, data = quantized_constants_model(model)
    wrappers = {w.name: w for w in qmodel.layers if isinstance(w, QuantizationWrapper)}
    assert set(wrappers) == {"conv_quantized", f"{sub}_quantized", "mul_quantized", f"{matmul}_quantized"}
    assert wrappers["mul_quantized"].is_inputs_as_list and not wrappers[f"{sub}_quantized"].is_inputs_as_list
    float_sub = model.get_layer("conv").output  # the tensor operand; the constant is the other one
    node = next(op for op in model.operations if op.name == sub)._inbound_nodes[0]
    constant = next(a for a in node.arguments.args if a is not float_sub)
    assert same_bits(wrappers[f"{sub}_quantized"].quantized_variables()[0], pot()(constant))


@needs_keras_3
def test_quantize_model_refuses_a_position_that_holds_a_tensor():
    model = constants_model()
    with pytest.raises(ValueError, match=r"names operand 1, but '\w+' has operands \['constant', 'tensor'\]"):
        quantize_model(model, {op_name(model, "Subtract"): {1: pot()}})


@needs_keras_3
def test_quantize_model_refuses_weight_names_for_an_operation():
    model = constants_model()
    with pytest.raises(ValueError, match=r"names weights \['kernel'\] of the operation 'matmul"):
        quantize_model(model, {op_name(model, "Matmul"): {"kernel": pot()}})


@pytest.mark.parametrize("build", ["holders", pytest.param("quantize_model", marks=needs_keras_3)])
def test_model_with_constant_operands_reloads_in_a_fresh_process(tmp_path, build):
    if build == "holders":
        model, x = holders_model(), rng(6).uniform(-4, 4, (1, 4, 4, 3)).astype("float32")
    else:
        model, data = quantized_constants_model()
        x = data[0]
    assert fresh_process_mismatches(model, x, tmp_path) == 0


def holders_model():
    """Holders after every op, so that the whole graph is int8 in TFLite."""
    r = rng(5)
    inp = keras.Input((4, 4, 3), batch_size=1)
    x = ActivationQuantizationHolder(symmetric_activation(4.0))(inp)
    x = QuantizationWrapper(TFOperation("math.subtract"), {0: pot()}, {0: r.uniform(-1, 1, 3).astype("float32")},
                            name="sub")(x)
    x = ActivationQuantizationHolder(symmetric_activation(8.0))(x)
    x = QuantizationWrapper(keras.layers.Multiply(), {1: pot()}, {1: r.uniform(0.2, 1, (1, 4, 4, 3)).astype("float32")},
                            is_inputs_as_list=True, name="mul")(x)
    x = ActivationQuantizationHolder(symmetric_activation(8.0))(x)
    return keras.Model(inp, x)


def test_constant_operands_export_as_int8_constants_with_the_quantizers_scales():
    model = holders_model()
    blob = to_tflite(model)
    tensors = tflite_weight_tensors(blob, model)
    for name in ("sub", "mul"):
        d = tensors[(name, 0 if name == "sub" else 1)]
        assert d["dtype"] == np.int8
        assert d["quantization_parameters"]["scales"].tolist() == [pot().quantization_params().scale]
    x = rng(6).uniform(-4, 4, (1, 4, 4, 3)).astype("float32")
    y, scale, _ = run_tflite(blob, x)
    steps = np.abs(np.round((y - model(x).numpy()) / scale))
    assert steps.max() <= 1 and np.mean(steps == 0) >= 0.99


@pytest.mark.parametrize("ext", ["keras", "h5"])
def test_seed_constant_operand_wrappers_map_to_iqcore_wrappers(ext):
    model, mapped = load_seed_model(f"tests/fixtures/constants.{ext}")
    wrappers = {w.name: w for w in model.layers if isinstance(w, QuantizationWrapper)}
    assert wrappers["matmul_q"].op_call_args == [False] and wrappers["matmul_q"].op_call_kwargs == {"transpose_b": True}
    assert wrappers["mul_q"].is_inputs_as_list and sorted(wrappers["sub_q"].weight_values) == [0]
    assert any("constant operand 1" in str(m) for m in mapped)
    if KERAS_3:
        assert isinstance(wrappers["sub_q"].layer, TFOperation) and wrappers["sub_q"].layer.function == "math.subtract"
