"""The NumPy reference (iqcore._grid) against TensorFlow's own fake-quant op."""

import numpy as np
import pytest
import tensorflow as tf
from exact import mismatches
from hypothesis import given
from hypothesis import strategies as st

from iqcore import _grid as g

bits = st.integers(2, 16)
low = st.floats(-1e4, 0, allow_nan=False, width=32)
high = st.floats(2.0**-10, 1e4, allow_nan=False, width=32)


def tf_op(x, gr):
    return tf.quantization.fake_quant_with_min_max_vars(
        x, gr.min, gr.max, num_bits=gr.num_bits, narrow_range=gr.narrow_range).numpy()


@given(num_bits=bits, lo=low, hi=high, narrow=st.booleans())
def test_reference_equals_tf_op_on_ties_neighbours_and_random(num_bits, lo, hi, narrow):
    gr = g.make_grid(lo, hi, num_bits, narrow)
    x = g.probe_tensor(gr)
    assert mismatches(g.fake_quant(x, gr), tf_op(x, gr)) == 0


@pytest.mark.parametrize("num_bits", range(2, 17))
@pytest.mark.parametrize("threshold", [2.0**-10, 0.5, 1.0, 3.0, 0.1, 100.0])
def test_reference_equals_tf_op_on_every_bit_width_for_threshold_ranges(num_bits, threshold):
    gr = g.make_grid(-threshold, threshold - threshold / 2 ** (num_bits - 1), num_bits)
    x = g.probe_tensor(gr, seed=num_bits)
    assert mismatches(g.fake_quant(x, gr), tf_op(x, gr)) == 0


@given(num_bits=bits, narrow=st.booleans(), data=st.data())
def test_per_channel_reference_equals_per_tensor_reference_on_each_channel(num_bits, narrow, data):
    lows = data.draw(st.lists(low, min_size=1, max_size=5))
    highs = data.draw(st.lists(high, min_size=len(lows), max_size=len(lows)))
    gr = g.make_grid(lows, highs, num_bits, narrow, axis=1, rank=2)
    x = g.probe_tensor(gr, per_channel_count=64)
    out = g.fake_quant(x, gr)
    for c, (lo, hi) in enumerate(zip(lows, highs, strict=True)):
        assert mismatches(out[:, c], g.fake_quant(x[:, c], g.make_grid(lo, hi, num_bits, narrow))) == 0


@given(num_bits=bits, lo=low, hi=high, narrow=st.booleans())
def test_dequantized_codes_equal_the_reference_output(num_bits, lo, hi, narrow):
    gr = g.make_grid(lo, hi, num_bits, narrow)
    x = g.probe_tensor(gr)
    x = x[~np.isnan(x)]
    assert mismatches(g.dequantize(g.codes(x, gr), gr), g.fake_quant(x, gr)) == 0


@given(num_bits=bits, lo=low, hi=high, narrow=st.booleans())
def test_codes_stay_within_the_signed_code_range(num_bits, lo, hi, narrow):
    gr = g.make_grid(lo, hi, num_bits, narrow)
    x = g.probe_tensor(gr)
    c = g.codes(x[~np.isnan(x)], gr)
    assert c.min() >= gr.qmin and c.max() <= gr.qmax


def test_codes_of_nan_are_refused():
    gr = g.make_grid(-1.0, 1.0, 8)
    with pytest.raises(ValueError, match="NaN"):
        g.codes(np.array([0.0, np.nan], np.float32), gr)


@pytest.mark.parametrize("lo,hi", [(-2.0**-130, 2.0**-130), (-3e38, 3e38), (1.0, 1.0)])
def test_make_grid_refuses_ranges_without_a_normal_float32_step(lo, hi):
    with pytest.raises(ValueError, match="step"):
        g.make_grid(lo, hi, 8)


def test_zero_point_of_symmetric_signed_grid_is_zero():
    gr = g.make_grid(-1.0, 1.0 - 1 / 128, 8)
    assert gr.zero_point == 0 and (gr.qmin, gr.qmax) == (-128, 127)


def test_narrow_range_raises_qmin_by_one():
    assert g.make_grid(-1.0, 1.0, 8, narrow_range=True).qmin == -127
