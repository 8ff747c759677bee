"""The uniform method: arbitrary ranges, moved so that zero lies exactly on the grid."""

import numpy as np
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

import iqcore
from iq_uniform import ActivationUniformInferableQuantizer, WeightsUniformInferableQuantizer, range_including_zero


def test_uniform_classes_are_registered_under_uniform_by_the_iq_uniform_distribution():
    found = {(i.method, i.target): (i.cls, i.distribution) for i in iqcore.list_quantizers()}
    assert found[("uniform", "weights")] == (WeightsUniformInferableQuantizer, "iq-uniform")
    assert found[("uniform", "activation")] == (ActivationUniformInferableQuantizer, "iq-uniform")


@given(low=st.floats(-100, 100), width=st.floats(0.01, 100), num_bits=st.integers(2, 16), narrow=st.booleans())
def test_zero_is_quantized_to_exactly_zero(low, width, num_bits, narrow):
    q = ActivationUniformInferableQuantizer(num_bits=num_bits, min_range=[low], max_range=[low + width],
                                            narrow_range=narrow)
    assert float(q(tf.constant(0.0))) == 0.0


def test_a_positive_range_is_extended_down_to_zero():
    low, high = range_including_zero([2.0], [6.0], 8)
    assert (low[0], high[0]) == (0.0, 6.0)


def test_a_negative_range_is_extended_up_to_zero():
    low, high = range_including_zero([-6.0], [-2.0], 8)
    assert (low[0], high[0]) == (-6.0, 0.0)


def test_a_range_across_zero_keeps_its_width_and_moves_min_onto_a_step():
    low, high = range_including_zero([-1.0], [2.0], 8)
    step = 3.0 / 255
    assert np.isclose(high[0] - low[0], 3.0) and np.isclose(low[0] / step, round(low[0] / step))


def test_per_channel_ranges_apply_on_their_own_channels():
    q = WeightsUniformInferableQuantizer(num_bits=8, min_range=[-1.0, -4.0], max_range=[1.0, 4.0], per_channel=True,
                                         channel_axis=0, input_rank=2)
    y = q(tf.fill((2, 3), 10.0)).numpy()
    assert y[0].max() < 1.01 and y[1].max() > 3.9
