"""What the LUT plugin adds to iqcore, with no change to iqcore: a registered method with exact semantics."""

import numpy as np
import pytest
import tensorflow as tf

import iqcore
from iq_lut import WeightsLUTInferableQuantizer


def reference(x, values, threshold, bitwidth=8):
    """Brute force: the nearest table value (ties to the larger) times T / 2**(b-1), in float64."""
    step = threshold / 2 ** (bitwidth - 1)
    u = np.asarray(x, np.float64) / step
    values = np.asarray(sorted(values), np.float64)
    distance = np.abs(u[..., None] - values)
    best = distance.min(axis=-1, keepdims=True)
    chosen = np.where(distance == best, values, -np.inf).max(axis=-1)  # ties: the larger value
    return (chosen * step).astype(np.float32)


def test_get_quantizer_builds_the_lut_class_through_the_entry_point():
    q = iqcore.get_quantizer("lut", "weights", num_bits=2, lut_values=[-96, -24, 24, 96], threshold=[0.5])
    assert type(q) is WeightsLUTInferableQuantizer


def test_list_quantizers_names_the_iq_lut_distribution():
    infos = [i for i in iqcore.list_quantizers() if i.method == "lut"]
    assert [(i.target, i.distribution) for i in infos] == [("weights", "iq-lut")]


def test_each_output_is_the_nearest_table_value_times_the_step():
    values = [-100, -30, -5, 0, 7, 40, 127]
    q = WeightsLUTInferableQuantizer(num_bits=3, lut_values=values, threshold=[2.0])
    x = np.random.default_rng(0).uniform(-3, 3, size=(64, 32)).astype(np.float32)
    np.testing.assert_array_equal(q(x).numpy(), reference(x, values, 2.0))


def test_a_tie_between_two_table_values_goes_to_the_larger():
    q = WeightsLUTInferableQuantizer(num_bits=2, lut_values=[-10, 10], threshold=[1.0])
    assert q(tf.constant([0.0])).numpy().tolist() == [10 / 128]


def test_per_channel_thresholds_apply_along_the_channel_axis():
    values = [-6, 0, 5]
    q = WeightsLUTInferableQuantizer(num_bits=2, lut_values=values, threshold=[2.0, 0.5], per_channel=True,
                                     channel_axis=0, input_rank=2, lut_values_bitwidth=4)
    x = np.random.default_rng(1).uniform(-3, 3, size=(2, 50)).astype(np.float32)
    expected = np.stack([reference(x[0], values, 2.0, 4), reference(x[1], values, 0.5, 4)])
    np.testing.assert_array_equal(q(x).numpy(), expected)


def test_nan_stays_nan_and_infinities_clamp_to_the_table_ends():
    q = WeightsLUTInferableQuantizer(num_bits=2, lut_values=[-96, -24, 24, 96], threshold=[0.5])
    out = q(tf.constant([np.nan, np.inf, -np.inf])).numpy()
    assert np.isnan(out[0])
    assert out[1:].tolist() == [96 * 0.5 / 128, -96 * 0.5 / 128]


def test_integer_input_is_a_type_error():
    q = WeightsLUTInferableQuantizer(num_bits=2, lut_values=[-1, 1], threshold=[1.0])
    with pytest.raises(TypeError):
        q(tf.constant([1, 2, 3]))
