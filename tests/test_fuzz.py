"""Hypothesis fuzzes parameter sets and tensors (shapes, dtypes, NaN/inf, ties) against the reference."""

import numpy as np
import tensorflow as tf
from exact import mismatches
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import iqcore
from iqcore import _grid as g

floats32 = st.floats(width=32, allow_nan=True, allow_infinity=True)


@st.composite
def quantizer_and_tensor(draw):
    method = draw(st.sampled_from(["pot", "symmetric", "uniform"]))
    num_bits = draw(st.integers(2, 16))
    rank = draw(st.integers(1, 4))
    shape = draw(hnp.array_shapes(min_dims=rank, max_dims=rank, min_side=0, max_side=5))
    per_channel = draw(st.booleans())
    axis = draw(st.integers(-rank, rank - 1))
    channels = shape[axis] if per_channel else 1
    if channels == 0:
        per_channel, channels = False, 1
    if method == "uniform":
        lows = draw(st.lists(st.floats(-1e3, 0), min_size=channels, max_size=channels))
        widths = draw(st.lists(st.floats(1e-2, 1e3), min_size=channels, max_size=channels))
        params = dict(min_range=lows, max_range=[lo + w for lo, w in zip(lows, widths, strict=True)])
    elif method == "pot":
        params = dict(threshold=[2.0**e for e in draw(st.lists(st.integers(-20, 20), min_size=channels,
                                                                max_size=channels))])
    else:
        params = dict(threshold=draw(st.lists(st.floats(1e-3, 1e3), min_size=channels, max_size=channels)))
    layout = dict(per_channel=True, channel_axis=axis, input_rank=rank) if per_channel else {}
    q = iqcore.get_quantizer(method, "weights", num_bits=num_bits, narrow_range=draw(st.booleans()), **params,
                             **layout)
    values = hnp.arrays(np.float32, shape, elements=st.one_of(floats32, st.sampled_from(
        [float(v) for v in g.probe_values(q.grid)[0][:64]])))
    return q, draw(values)


@given(case=quantizer_and_tensor(), dtype=st.sampled_from([tf.float32, tf.float64]))
def test_fuzzed_quantizers_and_tensors_match_the_reference(case, dtype):
    q, x = case
    got = q(tf.constant(x, dtype=dtype))
    assert got.dtype == dtype and got.shape == x.shape
    assert mismatches(tf.cast(got, tf.float32), g.fake_quant(x, q.grid)) == 0


@given(case=quantizer_and_tensor())
def test_fuzzed_codes_stay_in_range_and_dequantize_to_the_output(case):
    q, x = case
    x = np.where(np.isnan(x), np.float32(0), x)
    codes = q.to_int(tf.constant(x)).numpy()
    assert codes.size == 0 or (codes.min() >= q.grid.qmin and codes.max() <= q.grid.qmax)
    assert mismatches(g.dequantize(codes, q.grid), q(tf.constant(x))) == 0
