"""The ONNX exporter: QDQ nodes with the quantizers' exact scales, agreement with Keras in onnxruntime, refusals."""

import os
import subprocess
import sys

import numpy as np
import pytest

try:
    import onnx
    import onnxruntime  # noqa: F401
    import tf2onnx  # noqa: F401
    from onnx import numpy_helper
except ImportError as e:  # pragma: no cover - depends on the environment
    pytest.skip(f"iq-onnx needs tf2onnx, onnx and onnxruntime ({e}); install them with "
                "`pip install -e plugins/iq-onnx`", allow_module_level=True)

import tensorflow as tf

import iqcore
from iqcore import keras as iqkeras

iq_onnx = pytest.importorskip("iq_onnx", reason="the iq-onnx plugin is not installed: pip install -e plugins/iq-onnx")

keras = tf.keras


def small_cnn(average=True):
    keras.utils.set_random_seed(1)
    inp = keras.Input((10, 10, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inp)
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, activation="relu", padding="same")(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(8, 1)(x)
    if average:
        x = keras.layers.AveragePooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inp, keras.layers.Dense(6)(x))


def batches(n=4, size=16, seed=0):
    return [np.random.default_rng(seed + i).uniform(-1, 1, (size, 10, 10, 3)).astype(np.float32) for i in range(n)]


@pytest.fixture(scope="module")
def models():
    model = small_cnn()
    out = {}
    for name, w, a, bits in [("pot", "pot", "pot", 8), ("symmetric", "symmetric", "uniform", 8),
                             ("uniform4", "symmetric", "uniform", 4)]:
        out[name] = iqkeras.quantize_model(model, weights_method=w, activation_method=a, activation_bits=bits,
                                           weights_bits=bits, representative_data=batches(), verbose=0)
    return out


def initializers(proto):
    return {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}


def test_every_wrapped_weight_becomes_int8_codes_with_the_quantizers_exact_scales(models):
    q = models["symmetric"]
    proto = iq_onnx.to_onnx(q)
    arrays = initializers(proto)
    weight_dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.name.startswith("iqcore/")]
    wrappers = [x for x in iqkeras.flatten_layers(q) if isinstance(x, iqkeras.QuantizationWrapper)]
    assert len(weight_dq) == len(wrappers) == 4
    scales = []
    for node in weight_dq:
        codes, scale, zero_point = (arrays[name] for name in node.input)
        assert codes.dtype == np.int8 and zero_point.dtype == np.int8 and scale.dtype == np.float32
        assert np.all(zero_point == 0) and codes.min() >= -127
        scales.append(np.sort(scale))
    for w in wrappers:
        want = w.weights_quantizers["kernel"].quantization_params().scale
        if isinstance(w.layer, keras.layers.DepthwiseConv2D):
            want = np.repeat(want, w.quantized_variables()["kernel"].shape[-1])  # per multiplier, as ONNX has it
        assert any(s.shape == want.shape and np.array_equal(s, np.sort(want)) for s in scales), w.name


def test_every_holder_becomes_a_qdq_pair_with_its_exact_scale_and_zero_point(models):
    q = models["symmetric"]
    proto = iq_onnx.to_onnx(q)
    arrays = initializers(proto)
    pairs = {(float(arrays[n.input[1]]), int(arrays[n.input[2]])) for n in proto.graph.node
             if n.op_type == "QuantizeLinear"}
    holders = [x for x in iqkeras.flatten_layers(q) if isinstance(x, iqkeras.ActivationQuantizationHolder)]
    assert len(holders) == 6
    for h in holders:
        p = h.quantizer.quantization_params()
        assert (float(np.float32(p.scale)), int(p.zero_point)) in pairs, h.name
    assert all(arrays[n.input[1]].dtype == np.float32 for n in proto.graph.node if n.op_type == "QuantizeLinear")


@pytest.mark.parametrize("optimized", [False, True])
def test_power_of_two_grids_agree_bit_for_bit_with_keras_in_onnxruntime(models, optimized):
    """Power-of-two scales make every sum exact in float32: any summation order gives Keras' values."""
    x = batches(1, 128, seed=50)[0]
    a = iq_onnx.agreement(models["pot"], iq_onnx.to_onnx(models["pot"], rounding="tensorflow"), x,
                          optimized=optimized)
    assert (a.off, a.max_steps) == (0, 0.0), a


def test_tensorflow_rounding_leaves_only_float_summation_order_differences(models):
    x = batches(1, 128, seed=50)[0]
    for name in ("symmetric", "uniform4"):
        for optimized in (False, True):
            a = iq_onnx.agreement(models[name], iq_onnx.to_onnx(models[name], rounding="tensorflow"), x,
                                  optimized=optimized)
            assert a.max_steps <= 1.001 and a.percent_off < 20, (name, optimized, a)


def test_onnx_rounding_differs_only_by_ties_without_average_pooling():
    """Without averaging, a conv output is almost never exactly half-way between two grid points."""
    model = small_cnn(average=False)
    q = iqkeras.quantize_model(model, weights_method="symmetric", activation_method="uniform",
                               representative_data=batches(), verbose=0)
    a = iq_onnx.agreement(q, iq_onnx.to_onnx(q), batches(1, 128, seed=50)[0], optimized=True)
    assert a.max_steps <= 1.001 and a.percent_off < 5, a


def test_four_bit_holders_are_clipped_to_their_grid_before_int8_quantize(models):
    q = models["uniform4"]
    proto = iq_onnx.to_onnx(q)
    assert sum(n.op_type == "Clip" for n in proto.graph.node) == 6
    x = batches(1, 64, seed=9)[0]
    a = iq_onnx.agreement(q, proto, x)
    assert a.max_steps <= 4.001, a  # ties round to even in QuantizeLinear: a few steps after the Dense


def test_iqcore_export_writes_the_file_by_suffix_and_the_cli_too(models, tmp_path):
    q = models["pot"]
    path = tmp_path / "m.onnx"
    assert iqkeras.export(q, path) == "onnx"
    onnx.checker.check_model(onnx.load(path))
    q.save(tmp_path / "m.keras")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    run = subprocess.run([sys.executable, "-m", "iqcore.cli", "export", str(tmp_path / "m.keras"),
                          str(tmp_path / "cli.onnx")], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    listed = subprocess.run([sys.executable, "-m", "iqcore.cli", "export", "--list"], capture_output=True, text=True,
                            env=env, timeout=120).stdout
    assert any(line.split()[:3] == ["onnx", ".onnx", "iq-onnx"] for line in listed.splitlines()), listed
    x = batches(1, 8, seed=3)[0]
    outputs = []
    for name in ("m.onnx", "cli.onnx"):  # the reloaded model exports to the same computation
        session = onnxruntime.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {session.get_inputs()[0].name: x})[0])
    assert outputs[0].shape == tuple(q(x).shape) and np.array_equal(outputs[0], outputs[1])


@keras.utils.register_keras_serializable(package="iq_onnx_tests")
class LogGamma(keras.layers.Layer):
    def call(self, x):
        return tf.math.lgamma(x + 1.0)


def test_a_layer_tf2onnx_cannot_convert_is_refused_naming_it():
    inp = keras.Input((4,))
    x = keras.layers.Dense(3)(inp)
    model = keras.Model(inp, LogGamma(name="log_gamma")(keras.layers.ReLU()(x)))
    q = iqkeras.quantize_model(model, weights_method="symmetric", activation_method="uniform",
                               representative_data=[np.ones((4, 4), np.float32)], verbose=0)
    with pytest.raises(ValueError, match="log_gamma.*Lgamma"):
        iq_onnx.to_onnx(q)


def test_weights_of_more_than_eight_bits_are_refused_naming_the_layer():
    inp = keras.Input((4,))
    dense = keras.layers.Dense(3, name="wide")
    wrapper = iqkeras.QuantizationWrapper(dense, {"kernel": iqcore.get_quantizer("pot", target="weights",
                                                                                 num_bits=12, threshold=[1.0])})
    model = keras.Model(inp, wrapper(inp))
    with pytest.raises(ValueError, match="wide.*12-bit"):
        iq_onnx.to_onnx(model)


def test_bad_arguments_are_refused():
    model = small_cnn()
    with pytest.raises(ValueError, match="rounding"):
        iq_onnx.to_onnx(model, rounding="nearest")
    with pytest.raises(ValueError, match="opset"):
        iq_onnx.to_onnx(model, opset=11)


LAYERS = {
    "conv1d": ((16, 4), lambda: keras.layers.Conv1D(6, 3, activation="relu")),
    "conv2d_transpose": ((6, 6, 4), lambda: keras.layers.Conv2DTranspose(5, 3, strides=2)),
    "conv3d": ((4, 4, 4, 2), lambda: keras.layers.Conv3D(3, 2)),
    "separable_conv2d": ((6, 6, 4), lambda: keras.layers.SeparableConv2D(5, 3, activation="relu")),
}


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_other_wrapped_layers_get_their_weights_dequantized_in_their_onnx_layout(kind):
    shape, make = LAYERS[kind]
    inp = keras.Input(shape)
    model = keras.Model(inp, make()(inp))
    data = [np.random.default_rng(i).uniform(-1, 1, (8, *shape)).astype(np.float32) for i in range(3)]
    q = iqkeras.quantize_model(model, weights_method="symmetric", activation_method="uniform",
                               representative_data=data, verbose=0)
    proto = iq_onnx.to_onnx(q, rounding="tensorflow")
    wrapped = sum(len(x.weights_quantizers) for x in iqkeras.flatten_layers(q)
                  if isinstance(x, iqkeras.QuantizationWrapper))
    assert sum(n.name.startswith("iqcore/") for n in proto.graph.node) == wrapped
    a = iq_onnx.agreement(q, proto, data[0], optimized=True)
    assert a.max_steps <= 1.001, a
