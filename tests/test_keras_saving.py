"""Saving and loading quantized Keras models: .keras in a fresh process, SavedModel, .h5, missing plugins,
and configs edited by hand."""

import os

import numpy as np
import pytest
import tensorflow as tf
from keras_models import batches, quantized_cnn, run_python, tampered

import iqcore
from iqcore.keras import KERAS_3

keras = tf.keras


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A quantized CNN saved as .keras, with an input batch and the model's output on it."""
    d = tmp_path_factory.mktemp("keras_saving")
    model = quantized_cnn()
    x = batches((16, 16, 3), n=1, seed=7)[0]
    y = model(x).numpy()
    model.save(d / "m.keras")
    np.save(d / "x.npy", x)
    np.save(d / "y.npy", y)
    return d, model, x, y


def test_keras_file_loads_in_a_fresh_process_with_bit_identical_outputs(saved):
    d, _, _, _ = saved
    proc = run_python(f"""
        import numpy as np, iqcore
        model = iqcore.load_model({str(d / "m.keras")!r}, safe_mode=True)
        x, y = np.load({str(d / "x.npy")!r}), np.load({str(d / "y.npy")!r})
        got = model.predict(x, verbose=0)
        print("MISMATCHES", int(np.count_nonzero(got.view(np.uint32) != y.view(np.uint32))))
    """)
    assert "MISMATCHES 0" in proc.stdout, proc.stderr[-3000:]


def test_reloaded_model_keeps_the_quantizers(saved):
    d, model, _, _ = saved
    loaded = iqcore.load_model(d / "m.keras")
    for name in ("conv_quantized", "dw_quantized", "fc_quantized"):
        assert loaded.get_layer(name).weights_quantizers == model.get_layer(name).weights_quantizers


def test_saved_model_reloads_and_serves_the_same_numbers(saved, tmp_path):
    _, model, x, y = saved
    if KERAS_3:
        model.export(str(tmp_path / "sm"))
        loaded = tf.saved_model.load(str(tmp_path / "sm"))
        served = loaded.serve(x)
    else:
        tf.saved_model.save(model, str(tmp_path / "sm"))
        loaded = tf.saved_model.load(str(tmp_path / "sm"))
        served = loaded.signatures["serving_default"](tf.constant(x))
        served = next(iter(served.values()))
    np.testing.assert_array_equal(np.asarray(served), y)


def test_tf_saved_model_save_reloads_and_serves_the_same_numbers(saved, tmp_path):
    _, model, x, y = saved
    serve = tf.function(lambda t: model(t), input_signature=[tf.TensorSpec((None, 16, 16, 3), tf.float32)])
    module = tf.Module()
    module.model = model
    module.serve = serve
    tf.saved_model.save(module, str(tmp_path / "sm"))
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    np.testing.assert_array_equal(loaded.serve(x).numpy(), y)


def test_h5_file_reloads_with_bit_identical_outputs(saved, tmp_path):
    _, model, x, y = saved
    model.save(tmp_path / "m.h5")
    np.testing.assert_array_equal(iqcore.load_model(tmp_path / "m.h5")(x).numpy(), y)


def test_missing_plugin_error_names_the_method_and_the_distribution(saved):
    d, _, _, _ = saved
    proc = run_python(f"""
        import iqcore
        try:
            iqcore.load_model({str(d / "m.keras")!r})
        except Exception as e:
            print("ERROR", type(e).__name__, e)
    """, env={"IQCORE_BLOCK_PLUGINS": "symmetric"})
    assert "ERROR ValueError" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "method 'symmetric'" in proc.stdout and "pip install iq-symmetric" in proc.stdout


def _layer(config, name):
    return next(layer for layer in config["config"]["layers"] if layer["config"]["name"] == name)["config"]


def _kernel_quantizer(config):
    return _layer(config, "conv_quantized")["weights_quantizers"]["kernel"]


TAMPERINGS = {
    "num_bits 64": (lambda c: _kernel_quantizer(c)["config"].update(num_bits=64), ValueError, "num_bits"),
    "num_bits 8.5": (lambda c: _kernel_quantizer(c)["config"].update(num_bits=8.5), TypeError, "num_bits"),
    "NaN threshold": (lambda c: _kernel_quantizer(c)["config"]["threshold"].__setitem__(0, float("nan")),
                      ValueError, r"threshold\[0\]"),
    "negative threshold": (lambda c: _kernel_quantizer(c)["config"]["threshold"].__setitem__(1, -1.0),
                           ValueError, r"threshold\[1\]"),
    "string per_channel": (lambda c: _kernel_quantizer(c)["config"].update(per_channel="yes"), TypeError,
                           "per_channel"),
    "unknown quantizer key": (lambda c: _kernel_quantizer(c)["config"].update(scale=3.0), ValueError,
                              "unknown config keys.*scale"),
    "unknown wrapper entry key": (lambda c: _kernel_quantizer(c).update(extra=1), ValueError, "unknown keys.*extra"),
    "activation min above max": (lambda c: _layer(c, "image_activation")["activation_holder_quantizer"]["config"]
                                 .update(min_range=[5.0]), ValueError, "min_range"),
    "non power-of-two pot threshold": (lambda c: _kernel_quantizer(c).update(method="pot"), ValueError,
                                       "not a power of two"),
}


@pytest.mark.parametrize("tampering", sorted(TAMPERINGS))
def test_tampered_config_is_refused_at_load_naming_the_parameter(saved, tmp_path, tampering):
    d, _, _, _ = saved
    edit, error, pattern = TAMPERINGS[tampering]
    path = tampered(d / "m.keras", tmp_path / "t.keras", edit)
    with pytest.raises(error, match=pattern):
        iqcore.load_model(path)


def test_load_model_accepts_a_path_object(saved):
    d, _, x, y = saved
    assert os.path.exists(d / "m.keras")
    np.testing.assert_array_equal(iqcore.load_model(d / "m.keras", compile=False)(x).numpy(), y)
