"""A saved .keras model tampered with in each of issue 6's ways is refused by iqcore.load_model, naming the
parameter; a valid file still loads bit-identically afterwards in the same process."""

import numpy as np
import pytest
import tensorflow as tf
from keras_models import batches, quantized_cnn, tampered

import iqcore


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("tampered")
    model = quantized_cnn()
    x = batches((16, 16, 3), n=1, seed=3)[0]
    model.save(d / "m.keras")
    return d / "m.keras", x, model(x).numpy()


def layer(config, name):
    return next(entry for entry in config["config"]["layers"] if entry["config"]["name"] == name)["config"]


def kernel(config):
    return layer(config, "conv_quantized")["weights_quantizers"]["kernel"]["config"]


def activation(config):
    return layer(config, "image_activation")["activation_holder_quantizer"]["config"]


def setting(getter, key, value):
    return lambda c: getter(c).update({key: value})


def dropping(getter, key):
    return lambda c: getter(c).pop(key)


TAMPERINGS = {
    **{f"num_bits {v!r}": (setting(kernel, "num_bits", v), "num_bits")
       for v in [0, 1, 17, 64, -1, True, 8.0, 8.5, "8", [8]]},
    "narrow_range 1": (setting(kernel, "narrow_range", 1), "narrow_range"),
    "per_channel 'yes'": (setting(kernel, "per_channel", "yes"), "per_channel"),
    **{f"threshold {v!r}": (setting(kernel, "threshold", v), "threshold")
       for v in [[0.0] * 8, [-1.0] * 8, [float("nan")] * 8, [float("inf")] * 8, [float("-inf")] * 8,
                 [2.0**-140] * 8, [3.4e38] * 8, [], [[1.0]] * 8, ["1.0"] * 8, "1.0"]},
    "threshold count 3 for 8 channels": (setting(kernel, "threshold", [1.0, 1.0, 1.0]), "threshold"),
    "channel_axis 4 for rank 4": (setting(kernel, "channel_axis", 4), "channel_axis"),
    "input_rank 2 for a 4-d kernel": (lambda c: kernel(c).update(input_rank=2, channel_axis=-1), "rank"),
    "unknown key": (setting(kernel, "thresholds", [1.0]), "thresholds"),
    "missing key": (dropping(kernel, "threshold"), "threshold"),
    "future config_version": (setting(kernel, "config_version", 99), "config_version"),
    "uniform min above max": (setting(activation, "min_range", [10.0]), "min_range"),
    "uniform NaN bound": (setting(activation, "max_range", [float("nan")]), "max_range"),
    "uniform several ranges per tensor": (lambda c: activation(c).update(min_range=[-1.0, -1.0],
                                                                         max_range=[1.0, 1.0]), "min_range"),
}


@pytest.mark.parametrize("name", list(TAMPERINGS))
def test_tampered_model_is_refused_naming_the_parameter(saved, tmp_path, name):
    path, _, _ = saved
    edit, param = TAMPERINGS[name]
    with pytest.raises((ValueError, TypeError)) as caught:
        iqcore.load_model(tampered(path, tmp_path / "t.keras", edit))
    assert param in str(caught.value)[:300], str(caught.value)[:300]


def test_valid_model_loads_bit_identically_after_tampered_ones_were_refused(saved, tmp_path):
    path, x, y = saved
    for i, (edit, _) in enumerate(TAMPERINGS.values()):
        with pytest.raises((ValueError, TypeError)):
            iqcore.load_model(tampered(path, tmp_path / f"t{i}.keras", edit))
    got = iqcore.load_model(path)(tf.constant(x)).numpy()
    assert np.array_equal(got.view(np.uint32), y.view(np.uint32))
