"""Every quantizer equals the NumPy reference (and so TensorFlow's fake-quant kernel) bit for bit.

Inputs are iqcore._grid.probe_tensor: every rounding tie (sampled above 9 bits), its ±1-ulp neighbours,
range ends, ±inf, NaN, extremes and random values; in eager, tf.function and XLA modes.
"""

import itertools

import numpy as np
import pytest
import tensorflow as tf
from exact import MODES, mismatches, run
from hypothesis import given
from hypothesis import strategies as st

import iqcore
from iqcore import _grid as g


def params(method, target, num_bits, rng, channels=1, **layout):
    """Random parameters for a quantizer of ``method``/``target`` (thresholds often not powers of two)."""
    if method == "uniform":
        lows = (-rng.uniform(0, 8, channels)).tolist()
        highs = rng.uniform(0.01, 8, channels).tolist()
        p = dict(num_bits=num_bits, min_range=lows, max_range=highs)
    else:
        if method == "pot":
            thresholds = (2.0 ** rng.integers(-8, 8, channels)).tolist()
        else:
            thresholds = rng.uniform(0.01, 8, channels).tolist()
        p = dict(num_bits=num_bits, threshold=thresholds)
        if target == "activation":
            p["signed"] = bool(rng.integers(0, 2))
    return {**p, **layout}


METHODS = ("pot", "symmetric", "uniform")
CASES = list(itertools.product(METHODS, ("weights", "activation"), range(2, 17)))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method,target,num_bits", CASES)
def test_per_tensor_quantizer_is_bit_exact(method, target, num_bits, mode):
    rng = np.random.default_rng(num_bits)
    q = iqcore.get_quantizer(method, target, narrow_range=bool(num_bits % 2), **params(method, target, num_bits, rng))
    x = g.probe_tensor(q.grid, seed=num_bits)
    assert mismatches(run(q, tf.constant(x), mode), g.fake_quant(x, q.grid)) == 0


LAYOUTS = [(rank, axis) for rank in range(1, 5) for axis in range(-rank, rank)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("rank,axis", LAYOUTS)
@pytest.mark.parametrize("method", METHODS)
def test_per_channel_weights_quantizer_is_bit_exact_on_every_axis(method, rank, axis, mode):
    rng = np.random.default_rng(rank * 10 + axis)
    channels = 1200 if rank == 1 else 5
    num_bits = int(rng.integers(2, 17))
    q = iqcore.get_quantizer(method, "weights", **params(
        method, "weights", num_bits, rng, channels, per_channel=True, channel_axis=axis, input_rank=rank))
    x = g.probe_tensor(q.grid, per_channel_count=256)
    assert mismatches(run(q, tf.constant(x), mode), g.fake_quant(x, q.grid)) == 0


@given(method=st.sampled_from(METHODS), num_bits=st.integers(2, 16), narrow=st.booleans(),
       seed=st.integers(0, 2**32 - 1), layout=st.sampled_from(LAYOUTS))
def test_random_per_channel_parameter_sets_are_bit_exact_eagerly(method, num_bits, narrow, seed, layout):
    rng = np.random.default_rng(seed)
    rank, axis = layout
    channels = 64 if rank == 1 else int(rng.integers(1, 6))
    q = iqcore.get_quantizer(method, "weights", narrow_range=narrow, **params(
        method, "weights", num_bits, rng, channels, per_channel=True, channel_axis=axis, input_rank=rank))
    x = g.probe_tensor(q.grid, per_channel_count=64, seed=seed)
    assert mismatches(q(tf.constant(x)), g.fake_quant(x, q.grid)) == 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", METHODS)
def test_integer_codes_dequantize_to_the_output_bit_for_bit(method, mode):
    rng = np.random.default_rng(7)
    q = iqcore.get_quantizer(method, "weights", **params(
        method, "weights", 8, rng, 3, per_channel=True, channel_axis=1, input_rank=3))
    x = g.probe_tensor(q.grid, per_channel_count=128)
    x = np.where(np.isnan(x), np.float32(0), x)
    p = q.quantization_params()
    codes = run(q.to_int, tf.constant(x), mode).numpy()
    shape = [1, -1, 1]
    deq = ((codes.astype(np.int64) - p.zero_point.reshape(shape)).astype(np.float32) * p.scale.reshape(shape))
    assert mismatches(deq, run(q, tf.constant(x), mode)) == 0


@pytest.mark.parametrize("mode", MODES)
def test_per_channel_call_with_channel_dimension_unknown_at_trace_time_is_exact(mode):
    q = iqcore.get_quantizer("symmetric", "weights", num_bits=8, threshold=[0.3, 1.7, 2.9], per_channel=True,
                             channel_axis=1, input_rank=2)
    x = g.probe_tensor(q.grid)
    fn = tf.function(q, input_signature=[tf.TensorSpec([None, None], tf.float32)], jit_compile=(mode == "xla"))
    got = q(tf.constant(x)) if mode == "eager" else fn(tf.constant(x))
    assert mismatches(got, g.fake_quant(x, q.grid)) == 0
