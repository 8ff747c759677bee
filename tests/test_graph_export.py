"""A graph that calls a per-channel quantizer directly survives SavedModel and float TFLite conversion exactly."""

import numpy as np
import pytest
import tensorflow as tf
from exact import mismatches

import iqcore
from iqcore import _grid as g


@pytest.fixture(scope="module")
def module():
    q = iqcore.get_quantizer("symmetric", "weights", num_bits=8, threshold=[0.3, 1.7, 2.9], per_channel=True,
                             channel_axis=1, input_rank=2)
    m = tf.Module()
    m.quantize = tf.function(lambda x: q(x), input_signature=[tf.TensorSpec([None, 3], tf.float32)])
    x = g.probe_tensor(q.grid, per_channel_count=512)
    return m, q, x


def test_saved_model_with_a_per_channel_quantizer_reloads_bit_exact(module, tmp_path):
    m, q, x = module
    tf.saved_model.save(m, str(tmp_path))
    loaded = tf.saved_model.load(str(tmp_path))
    assert mismatches(loaded.quantize(x), g.fake_quant(x, q.grid)) == 0


def run_float_tflite(m, x):
    converter = tf.lite.TFLiteConverter.from_concrete_functions([m.quantize.get_concrete_function()], m)
    interpreter = tf.lite.Interpreter(model_content=converter.convert())
    interpreter.resize_tensor_input(0, list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def test_float_tflite_conversion_of_a_per_channel_quantizer_is_exact_off_ties(module):
    m, q, _ = module
    x = np.random.default_rng(0).normal(0, 2, (4096, 3)).astype(np.float32)
    assert mismatches(run_float_tflite(m, x), g.fake_quant(x, q.grid)) == 0


def test_float_tflite_conversion_stays_within_one_step_on_exact_ties(module):
    # TFLite's converter and kernels do their own float arithmetic (division by a constant becomes a
    # multiplication): on ties and their 1-ulp neighbours a value may land on the adjacent grid point.
    m, q, x = module
    finite = x[np.isfinite(x).all(axis=1)]
    diff = np.abs(run_float_tflite(m, finite) - g.fake_quant(finite, q.grid))
    assert np.all(diff <= q.grid.scale * 1.0001)
