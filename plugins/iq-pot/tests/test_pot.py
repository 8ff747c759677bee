"""The power-of-two method: thresholds must be powers of two, so every step is one too."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import iqcore
from iq_pot import ActivationPOTInferableQuantizer, WeightsPOTInferableQuantizer


def test_pot_classes_are_registered_under_pot_by_the_iq_pot_distribution():
    found = {(i.method, i.target): (i.cls, i.distribution) for i in iqcore.list_quantizers()}
    assert found[("pot", "weights")] == (WeightsPOTInferableQuantizer, "iq-pot")
    assert found[("pot", "activation")] == (ActivationPOTInferableQuantizer, "iq-pot")


@given(exponent=st.integers(-60, 60), num_bits=st.integers(2, 16), signed=st.booleans())
def test_every_step_of_a_pot_grid_is_a_power_of_two(exponent, num_bits, signed):
    q = ActivationPOTInferableQuantizer(num_bits=num_bits, threshold=[2.0**exponent], signed=signed)
    assert math.frexp(float(q.grid.scale))[0] == 0.5


@given(value=st.floats(1e-30, 1e30).filter(lambda v: math.frexp(v)[0] != 0.5))
def test_any_threshold_that_is_not_a_power_of_two_is_refused(value):
    with pytest.raises(ValueError, match="not a power of two"):
        WeightsPOTInferableQuantizer(num_bits=8, threshold=[value])


def test_per_channel_refusal_names_the_offending_channel():
    with pytest.raises(ValueError, match=r"threshold\[2\] is 3.0"):
        WeightsPOTInferableQuantizer(num_bits=8, threshold=[1.0, 2.0, 3.0], per_channel=True, channel_axis=0,
                                     input_rank=2)


def test_signed_pot_grid_spans_minus_threshold_to_threshold_minus_one_step():
    q = WeightsPOTInferableQuantizer(num_bits=4, threshold=[2.0])
    assert float(q.grid.nudged_min) == -2.0 and float(q.grid.nudged_max) == 2.0 - 2.0 / 8


def test_unsigned_pot_activation_grid_starts_at_zero():
    q = ActivationPOTInferableQuantizer(num_bits=8, threshold=[4.0], signed=False)
    assert float(q.grid.nudged_min) == 0.0 and np.float32(q.grid.scale) == np.float32(4.0 / 256)
