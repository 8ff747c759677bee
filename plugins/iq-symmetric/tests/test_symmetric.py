"""The symmetric method: any positive threshold, signed or unsigned grids."""

import numpy as np
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

import iqcore
from iq_symmetric import ActivationSymmetricInferableQuantizer, WeightsSymmetricInferableQuantizer


def test_symmetric_classes_are_registered_under_symmetric_by_the_iq_symmetric_distribution():
    found = {(i.method, i.target): (i.cls, i.distribution) for i in iqcore.list_quantizers()}
    assert found[("symmetric", "weights")] == (WeightsSymmetricInferableQuantizer, "iq-symmetric")
    assert found[("symmetric", "activation")] == (ActivationSymmetricInferableQuantizer, "iq-symmetric")


@given(threshold=st.floats(1e-3, 1e3), num_bits=st.integers(2, 16))
def test_signed_grid_range_is_minus_threshold_to_threshold_minus_one_step(threshold, num_bits):
    q = WeightsSymmetricInferableQuantizer(num_bits=num_bits, threshold=[threshold])
    step = threshold / 2 ** (num_bits - 1)
    assert np.isclose(float(q.grid.nudged_min), -threshold, rtol=1e-6)
    assert np.isclose(float(q.grid.nudged_max), threshold - step, rtol=1e-6, atol=step * 1e-3)


def test_unsigned_activation_clamps_negatives_to_zero():
    q = ActivationSymmetricInferableQuantizer(num_bits=8, threshold=[3.0], signed=False)
    assert float(tf.reduce_min(q(tf.constant([-5.0, -0.1, 0.2])))) == 0.0


def test_signed_activation_keeps_negative_values():
    q = ActivationSymmetricInferableQuantizer(num_bits=8, threshold=[3.0], signed=True)
    assert float(q(tf.constant(-1.5))) == -1.5


def test_narrow_range_unsigned_activation_drops_the_top_code():
    wide = ActivationSymmetricInferableQuantizer(num_bits=4, threshold=[1.6], signed=False)
    narrow = ActivationSymmetricInferableQuantizer(num_bits=4, threshold=[1.6], signed=False, narrow_range=True)
    assert narrow.grid.scale == wide.grid.scale and narrow.grid.nudged_max < wide.grid.nudged_max
