"""The quantizer interface: seed compatibility, config, equality, dtypes, shapes and special values."""

import json

import numpy as np
import pytest
import tensorflow as tf
from exact import mismatches

import iqcore
import iqcore as qi
from iqcore import _grid as g

SIX = {
    ("pot", "weights"): dict(num_bits=8, threshold=[2.0, 4.0, 1.0], per_channel=True, channel_axis=-1, input_rank=4),
    ("symmetric", "weights"): dict(num_bits=8, threshold=[2.0, 3.0, 1.0], per_channel=True, channel_axis=-1,
                                   input_rank=4),
    ("uniform", "weights"): dict(num_bits=8, min_range=[-1.0, -2.0, -0.5], max_range=[1.0, 3.0, 0.5],
                                 per_channel=True, channel_axis=-1, input_rank=4),
    ("pot", "activation"): dict(num_bits=8, threshold=[4.0], signed=False),
    ("symmetric", "activation"): dict(num_bits=8, threshold=[5.0], signed=True),
    ("uniform", "activation"): dict(num_bits=8, min_range=[-1.0], max_range=[6.0]),
}


def build(key, **overrides):
    return qi.get_quantizer(key[0], key[1], **{**SIX[key], **overrides})


def test_seed_symmetric_weights_example_gives_the_seed_range():
    quantizer = qi.keras_inferable_quantizers.WeightsSymmetricInferableQuantizer(
        num_bits=8, threshold=[2.0, 3.0, 1.0], per_channel=True, channel_axis=-1, input_rank=4)
    x = tf.random.uniform(shape=(1, 3, 3, 3), minval=-100, maxval=100, dtype=tf.float32, seed=1)
    y = quantizer(x)
    assert tf.reduce_max(y) < 3 and tf.reduce_min(y) >= -3


def test_seed_symmetric_activation_example_gives_the_seed_range():
    quantizer = qi.keras_inferable_quantizers.ActivationSymmetricInferableQuantizer(
        num_bits=8, threshold=[5.0], signed=False)
    x = tf.random.uniform(shape=(1, 3, 3, 3), minval=-100, maxval=100, dtype=tf.float32, seed=2)
    y = quantizer(x)
    assert tf.reduce_max(y) < 5 and tf.reduce_min(y) >= 0


def test_namespace_holds_the_seed_six_class_names():
    names = {"WeightsPOTInferableQuantizer", "WeightsSymmetricInferableQuantizer", "WeightsUniformInferableQuantizer",
             "ActivationPOTInferableQuantizer", "ActivationSymmetricInferableQuantizer",
             "ActivationUniformInferableQuantizer"}
    assert names <= set(dir(qi.keras_inferable_quantizers))
    assert all(issubclass(getattr(qi.keras_inferable_quantizers, n), iqcore.InferableQuantizer) for n in names)


def test_namespace_unknown_name_is_an_attribute_error_listing_names():
    with pytest.raises(AttributeError, match="WeightsPOTInferableQuantizer"):
        _ = qi.keras_inferable_quantizers.NoSuchQuantizer


def test_list_quantizers_reports_each_method_and_target_with_its_distribution():
    found = {(i.method, i.target): i.distribution for i in iqcore.list_quantizers()}
    assert {key: found.get(key) for key in SIX} == {key: f"iq-{key[0]}" for key in SIX}


def test_unknown_method_error_lists_available_methods_and_plugins():
    with pytest.raises(ValueError, match=r"no quantizer for method 'lut'.*symmetric/weights \(iq-symmetric\)"):
        iqcore.get_quantizer("lut", "weights", num_bits=8)


def test_unknown_target_error_lists_targets():
    with pytest.raises(ValueError, match=r"target is 'bias'.*'weights', 'activation'"):
        iqcore.get_quantizer("symmetric", "bias", num_bits=8)


@pytest.mark.parametrize("key", SIX)
def test_config_survives_a_json_round_trip_as_an_equal_quantizer(key):
    q = build(key)
    config = json.loads(json.dumps(q.get_config()))
    assert type(q).from_config(config) == q


@pytest.mark.parametrize("key", SIX)
def test_equal_quantizers_hash_alike_and_differ_from_other_parameters(key):
    assert build(key) == build(key) and hash(build(key)) == hash(build(key))
    assert build(key) != build(key, num_bits=4)


@pytest.mark.parametrize("key", SIX)
def test_repr_names_the_class_and_its_parameters(key):
    text = repr(build(key))
    assert text.startswith(type(build(key)).__name__ + "(") and "num_bits=8" in text


def test_numpy_thresholds_are_stored_as_exact_python_floats():
    q = iqcore.get_quantizer("symmetric", "weights", num_bits=8, threshold=np.array([0.1, 0.7], np.float64),
                             per_channel=True, channel_axis=0, input_rank=2)
    assert q.threshold == [0.1, 0.7] and all(type(t) is float for t in q.threshold)


def test_scalar_threshold_is_accepted_per_tensor():
    assert iqcore.get_quantizer("pot", "weights", num_bits=8, threshold=2.0).threshold == [2.0]


@pytest.mark.parametrize("key", SIX)
def test_quantization_params_dequantize_codes_to_the_output(key):
    q = build(key)
    x = tf.random.normal((2, 3, 4, 3), stddev=3.0, seed=3)
    p = q.quantization_params()
    shape = [1, 1, 1, -1] if p.axis is not None else []
    deq = (q.to_int(x).numpy().astype(np.int64) - p.zero_point.reshape(shape)).astype(np.float32)
    assert mismatches(deq * p.scale.reshape(shape), q(x)) == 0


def test_signed_eight_bit_codes_are_int8_and_sixteen_bit_codes_int16():
    x = tf.constant([0.5, -0.25])
    assert build(("symmetric", "activation")).to_int(x).dtype == tf.int8
    assert build(("symmetric", "activation"), num_bits=12).to_int(x).dtype == tf.int16


def test_symmetric_signed_zero_point_is_zero_and_unsigned_is_the_lowest_code():
    assert build(("symmetric", "activation")).quantization_params().zero_point == 0
    p = build(("pot", "activation")).quantization_params()
    assert p.zero_point == p.qmin == -128


def test_to_int_of_nan_is_a_value_error():
    with pytest.raises(ValueError, match="NaN"):
        build(("symmetric", "activation")).to_int(tf.constant([1.0, np.nan]))


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16, tf.float64])
@pytest.mark.parametrize("key", SIX)
def test_other_float_dtypes_are_quantized_on_the_float32_grid_and_cast_back(key, dtype):
    q = build(key)
    x = tf.cast(tf.random.normal((2, 3, 4, 3), stddev=3.0, seed=4), dtype)
    y = q(x)
    assert y.dtype == dtype and y.shape == x.shape
    want = tf.cast(q(tf.cast(x, tf.float32)), dtype)
    assert mismatches(tf.cast(y, tf.float32), tf.cast(want, tf.float32)) == 0


@pytest.mark.parametrize("dtype", [tf.int32, tf.int8, tf.uint8, tf.bool, tf.complex64])
def test_non_float_tensors_are_a_type_error_naming_the_dtype(dtype):
    with pytest.raises(TypeError, match=dtype.name):
        build(("symmetric", "activation"))(tf.zeros((3,), dtype))


@pytest.mark.parametrize("key", SIX)
def test_empty_tensors_come_back_empty(key):
    x = tf.zeros((0, 3, 3, 3))
    assert build(key)(x).shape == (0, 3, 3, 3)


def test_rank_zero_input_to_a_per_tensor_quantizer_is_quantized():
    q = build(("symmetric", "activation"))
    assert q(tf.constant(1.3)).shape == () and float(q(tf.constant(1.3))) == float(g.fake_quant(1.3, q.grid))


@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_rank_zero_input_to_a_per_channel_quantizer_is_a_value_error(mode):
    q = build(("symmetric", "weights"))
    fn = q if mode == "eager" else tf.function(q)
    with pytest.raises(ValueError, match="rank 0"):
        fn(tf.constant(1.0))


def test_wrong_channel_count_is_a_value_error_naming_both_counts():
    with pytest.raises(ValueError, match="4 channels on axis 3.*3 per-channel values"):
        build(("symmetric", "weights"))(tf.zeros((1, 2, 2, 4)))


def test_wrong_channel_count_unknown_at_trace_time_fails_at_run_time():
    q = build(("symmetric", "weights"))
    fn = tf.function(q, input_signature=[tf.TensorSpec([None, None, None, None], tf.float32)])
    with pytest.raises(tf.errors.InvalidArgumentError, match="channel dimension"):
        fn(tf.zeros((1, 2, 2, 1)))


@pytest.mark.parametrize("key", SIX)
def test_nan_stays_nan_and_infinities_clamp_to_the_grid_ends(key):
    q = build(("symmetric", "activation")) if key[1] == "activation" else build(key)
    x = np.zeros((1, 1, 3, 3), np.float32)
    x[0, 0, 0, :] = np.nan
    x[0, 0, 1, :] = np.inf
    x[0, 0, 2, :] = -np.inf
    y = q(tf.constant(x)).numpy()
    lows, highs = q.grid.nudged_min, q.grid.nudged_max
    assert np.isnan(y[0, 0, 0]).all()
    assert np.array_equal(y[0, 0, 1], np.broadcast_to(highs, (3,)))
    assert np.array_equal(y[0, 0, 2], np.broadcast_to(lows, (3,)))


def test_per_channel_on_a_middle_axis_uses_each_channels_threshold():
    q = iqcore.get_quantizer("pot", "weights", num_bits=8, threshold=[1.0, 8.0], per_channel=True,
                             channel_axis=1, input_rank=3)
    y = q(tf.fill((2, 2, 5), 100.0)).numpy()
    assert np.all(y[:, 0] == 1.0 - 1 / 128) and np.all(y[:, 1] == 8.0 - 8 / 128)


def test_narrow_range_symmetric_weights_keep_the_step_and_drop_the_lowest_code():
    wide = build(("symmetric", "weights"))
    narrow = build(("symmetric", "weights"), narrow_range=True)
    assert np.array_equal(wide.grid.scale, narrow.grid.scale)
    assert narrow.quantization_params().qmin == -127
    lowest = narrow(tf.fill((1, 1, 1, 3), -100.0)).numpy().ravel()
    assert np.array_equal(lowest, -(2.0 - 2.0 / 128) * np.array([1, 1.5, 0.5]))
