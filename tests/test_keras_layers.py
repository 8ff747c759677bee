"""QuantizationWrapper and ActivationQuantizationHolder: what they compute, and what they refuse."""

import numpy as np
import pytest
import tensorflow as tf
from keras_models import symmetric, uniform_activation

import iqcore
from iqcore.keras import ActivationQuantizationHolder, QuantizationWrapper

keras = tf.keras

# (layer factory, input shape without batch, kernel shape, per-channel axis of the kernel)
LAYERS = {
    "Conv1D": (lambda: keras.layers.Conv1D(5, 3), (10, 4), (3, 4, 5), 2),
    "Conv2D": (lambda: keras.layers.Conv2D(5, 3, padding="same"), (8, 8, 4), (3, 3, 4, 5), 3),
    "DepthwiseConv2D": (lambda: keras.layers.DepthwiseConv2D(3, depth_multiplier=2), (8, 8, 4), (3, 3, 4, 2), 2),
    "Conv2DTranspose": (lambda: keras.layers.Conv2DTranspose(5, 3), (6, 6, 4), (3, 3, 5, 4), 2),
    "Dense": (lambda: keras.layers.Dense(5), (7,), (7, 5), 1),
}


def _pair(kind, seed=0):
    """A wrapped layer and an identical float layer holding the same float weights."""
    make, in_shape, k_shape, axis = LAYERS[kind]
    keras.utils.set_random_seed(seed)
    float_layer = make()
    float_layer.build((None, *in_shape))
    weights = float_layer.get_weights()
    inner = make()
    inner.build((None, *in_shape))
    inner.set_weights(weights)
    q = symmetric(k_shape, axis, seed=seed + 1)
    return QuantizationWrapper(inner, {"kernel": q}), float_layer, q, in_shape


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_wrapped_layer_output_is_bit_identical_to_requantizing_the_weights_on_every_call(kind):
    wrapper, reference, q, in_shape = _pair(kind)
    float_kernel = tf.constant(iqcore.keras.find_weight(reference, "kernel").numpy())
    x = np.random.default_rng(3).normal(size=(4, *in_shape)).astype(np.float32)

    def requantizing_call(inputs):
        iqcore.keras.find_weight(reference, "kernel").assign(q(float_kernel))
        return reference(inputs)

    for _ in range(2):
        np.testing.assert_array_equal(wrapper(x).numpy(), requantizing_call(x).numpy())


def test_wrapper_holds_the_quantized_kernel_after_build():
    wrapper, reference, q, _ = _pair("Conv2D")
    want = q(iqcore.keras.find_weight(reference, "kernel")).numpy()
    np.testing.assert_array_equal(wrapper.layer.kernel.numpy(), want)


def test_wrapper_graph_has_no_quantization_ops_so_weights_are_quantized_once():
    wrapper, _, _, in_shape = _pair("Conv2D")
    graph = tf.function(wrapper).get_concrete_function(tf.TensorSpec((1, *in_shape), tf.float32)).graph
    op_types = {op.type for op in graph.get_operations()}
    assert not {t for t in op_types if t.startswith("FakeQuant") or t in ("Floor", "Round")}, op_types


def test_set_weights_quantizes_new_float_weights():
    wrapper, reference, q, _ = _pair("Dense")
    new = [w * 1.7 for w in reference.get_weights()]
    wrapper.set_weights(new)
    np.testing.assert_array_equal(wrapper.layer.kernel.numpy(), q(tf.constant(new[0])).numpy())


def test_wrapper_is_not_trainable_by_default():
    wrapper, _, _, _ = _pair("Dense")
    assert wrapper.trainable_weights == [] and len(wrapper.non_trainable_weights) == 2


def test_depthwise_kernel_name_is_an_alias_of_kernel():
    _, in_shape, k_shape, axis = LAYERS["DepthwiseConv2D"]
    layer = keras.layers.DepthwiseConv2D(3, depth_multiplier=2)
    wrapper = QuantizationWrapper(layer, {"depthwise_kernel": symmetric(k_shape, axis)})
    wrapper.build((None, *in_shape))
    assert wrapper.weights_quantizers["depthwise_kernel"].grid.channels == 4


def test_unknown_weight_name_is_refused_with_the_weights_it_has():
    layer = keras.layers.Dense(3)
    layer.build((None, 4))
    q = iqcore.get_quantizer("symmetric", "weights", num_bits=8, threshold=[1.0])
    with pytest.raises(ValueError, match=r"no weight 'kernal'.*allowed: \['kernel', 'bias'\]"):
        QuantizationWrapper(layer, {"kernal": q})


def test_per_channel_quantizer_with_the_wrong_channel_count_is_refused():
    layer = keras.layers.Dense(3)
    layer.build((None, 4))
    with pytest.raises(ValueError, match=r"weights_quantizers\['kernel'\] is per-channel .* 4 channels"):
        QuantizationWrapper(layer, {"kernel": symmetric((4, 4), 1)})


def test_activation_quantizer_is_refused_as_a_weights_quantizer():
    with pytest.raises(ValueError, match="allowed here: a weights quantizer"):
        QuantizationWrapper(keras.layers.Dense(3), {"kernel": uniform_activation()})


def test_empty_weights_quantizers_are_refused():
    with pytest.raises(ValueError, match="weights_quantizers is {}; allowed: a non-empty dict"):
        QuantizationWrapper(keras.layers.Dense(3), {})


def test_non_layer_is_refused():
    with pytest.raises(TypeError, match="layer must be a Keras layer"):
        QuantizationWrapper("dense", {"kernel": symmetric((4, 3), 1)})


def test_holder_output_equals_its_quantizer():
    q = uniform_activation(-0.7, 1.3)
    x = np.random.default_rng(0).normal(size=(3, 50)).astype(np.float32)
    np.testing.assert_array_equal(ActivationQuantizationHolder(q)(x).numpy(), q(x).numpy())


def test_holder_refuses_a_weights_quantizer():
    with pytest.raises(ValueError, match="allowed here: an activation quantizer"):
        ActivationQuantizationHolder(symmetric((4, 3), 1))


def test_weights_only_quantized_model_runs_the_same_graph_ops_as_the_float_model():
    from collections import Counter

    from keras_models import cnn

    from iqcore.keras import quantize_model

    def op_counts(model):
        spec = tf.TensorSpec((1, 16, 16, 3), tf.float32)
        graph = tf.function(lambda t: model(t)).get_concrete_function(spec).graph
        return Counter(op.type for op in graph.get_operations())

    model = cnn()
    assert op_counts(quantize_model(model, weights_method="symmetric")) == op_counts(model)
