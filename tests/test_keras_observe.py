"""The calibration pass of quantize_model: the statistics it keeps equal NumPy's on the same tensors."""

import numpy as np
import pytest
import tensorflow as tf
from keras_models import batches, cnn

from iqcore import calibration
from iqcore.keras._observe import Sampler, observe

keras = tf.keras
DATA = batches((16, 16, 3))
OUTPUTS = ["image", "conv", "dw", "fc"]
INPUTS_OF = ["dw", "fc"]


@pytest.fixture(scope="module")
def observed():
    """``(model, outputs seen, inputs seen)`` for one pass of :func:`cnn` over ``DATA``, with samples."""
    model = cnn()
    seen_out, seen_in = observe(model, OUTPUTS, INPUTS_OF, DATA, keep_samples=True, verbose=0)
    return model, seen_out, seen_in


def _values(model, tensor) -> np.ndarray:
    """``tensor`` of ``model`` on each batch of ``DATA``, concatenated along the batch axis."""
    probe = keras.Model(model.inputs[0], tensor)
    return np.concatenate([np.asarray(probe(b, training=False)) for b in DATA])


def _output(model, name) -> np.ndarray:
    return np.concatenate(DATA) if name == "image" else _values(model, model.get_layer(name).output)


@pytest.mark.parametrize("name", OUTPUTS)
def test_observed_min_and_max_are_the_smallest_and_largest_output_values(observed, name):
    model, seen_out, _ = observed
    values = _output(model, name)
    observation = seen_out[name].observation()
    assert observation.min == float(values.min()) and observation.max == float(values.max())


@pytest.mark.parametrize("name", OUTPUTS)
def test_observed_mean_is_the_float64_mean_of_the_output_values(observed, name):
    model, seen_out, _ = observed
    values = _output(model, name)
    np.testing.assert_allclose(seen_out[name].observation().mean, values.mean(dtype=np.float64), rtol=1e-12)


@pytest.mark.parametrize("name", INPUTS_OF)
def test_observed_channel_means_are_the_per_channel_float64_means_of_the_layer_input(observed, name):
    model, _, seen_in = observed
    values = _values(model, model.get_layer(name).input)
    expected = values.reshape(-1, values.shape[-1]).mean(axis=0, dtype=np.float64)
    np.testing.assert_allclose(seen_in[name].channel_mean(), expected, rtol=1e-12)


@pytest.mark.parametrize("name", OUTPUTS)
def test_observed_samples_are_values_the_output_took(observed, name):
    model, seen_out, _ = observed
    samples = seen_out[name].observation().samples
    assert samples.size > 0 and np.all(np.isin(samples, _output(model, name)))


@pytest.mark.parametrize("size", [calibration.MAX_SAMPLES // 2, calibration.MAX_SAMPLES, 3 * calibration.MAX_SAMPLES])
def test_sampler_draws_what_calibration_subsample_draws_for_each_seed(size):
    rng = np.random.default_rng(size)
    sampler = Sampler()
    for seed in (1, 1, 2, 0, 2, 0, 1):  # repeated seeds draw from the kept positions, or again after another batch
        values = rng.normal(size=size).astype(np.float32)
        np.testing.assert_array_equal(sampler(values, seed), calibration.subsample(values, calibration.MAX_SAMPLES,
                                                                                   seed))


def test_sampler_keeps_the_positions_of_the_latest_batch_and_of_the_final_draw_only():
    sampler = Sampler()
    values = np.zeros(2 * calibration.MAX_SAMPLES, np.float32)
    for seed in range(6):
        sampler(values, seed)
    assert sorted(sampler.positions) == [0, 5]


def test_empty_representative_data_is_refused():
    with pytest.raises(ValueError, match="representative_data is empty"):
        observe(cnn(), ["conv"], [], [], keep_samples=False, verbose=0)
