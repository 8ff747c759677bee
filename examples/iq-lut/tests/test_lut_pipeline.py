"""The LUT method goes through every part of iqcore, with no change to iqcore: calibration inside
quantize_model, save and reload in a fresh process, ``iqcore inspect``, the selfcheck and int8 TFLite export."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import iqcore
from iq_lut import WeightsLUTInferableQuantizer
from iqcore import keras as iqkeras
from iqcore.testing import check_identical, run_reload_in_fresh_process

keras = tf.keras
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def digits_cnn():
    """The architecture of ``iqcore demo``'s CNN, with random weights."""
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input(shape=(8, 8, 1)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
        keras.layers.MaxPooling2D(2, name="pool"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(64, activation="relu", name="dense1"),
        keras.layers.Dense(10, name="logits"),
    ])


DATA = [np.random.default_rng(i).uniform(0, 1, (16, 8, 8, 1)).astype(np.float32) for i in range(2)]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    qmodel = iqkeras.quantize_model(digits_cnn(), weights_method="lut", weights_bits=4, activation_method="uniform",
                                    representative_data=DATA, verbose=0)
    path = tmp_path_factory.mktemp("lut") / "lut.keras"
    qmodel.save(str(path))
    return qmodel, path


def test_quantize_model_calibrates_every_kernel_with_a_lut_table(saved):
    qmodel, _ = saved
    wrappers = [layer for layer in qmodel.layers if isinstance(layer, iqkeras.QuantizationWrapper)]
    assert len(wrappers) == 4
    for w in wrappers:
        q = w.weights_quantizers["kernel"]
        assert type(q) is WeightsLUTInferableQuantizer
        assert 2 <= len(q.lut_values) <= 16 and min(q.lut_values) >= -127
        kernel = w.quantized_variables()["kernel"].numpy()
        assert set(np.unique(q.to_int(kernel).numpy()).tolist()) <= set(q.lut_values)


def test_the_calibrated_table_is_closer_to_the_weights_than_a_uniform_4_bit_table():
    w = np.random.default_rng(0).normal(size=(3, 3, 8, 16)).astype(np.float32)
    lut = iqkeras.calibrate_weights(w, "lut", num_bits=4)
    pot = iqkeras.calibrate_weights(w, "pot", num_bits=4)
    assert np.mean((lut(w).numpy() - w) ** 2) < np.mean((pot(w).numpy() - w) ** 2)


def test_the_saved_model_reloads_bit_identically_in_a_fresh_process(saved, tmp_path):
    qmodel, path = saved
    np.save(tmp_path / "x.npy", DATA[0])
    (after,) = run_reload_in_fresh_process([(path, tmp_path / "x.npy", tmp_path / "y.npz")])
    check_identical(after[0], qmodel(DATA[0]).numpy(), "output after reloading")


def test_iqcore_inspect_lists_the_lut_layers(saved):
    _, path = saved
    result = subprocess.run(["iqcore", "inspect", str(path)], capture_output=True, text=True, env=ENV, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()]
    assert sum(1 for row in rows if "lut" in row) == 4, result.stdout


def test_the_selfcheck_reports_the_lut_method_with_no_mismatch():
    result = subprocess.run([sys.executable, "-m", "iqcore.selfcheck", "--quick"], capture_output=True, text=True,
                            env=ENV, timeout=600, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("lut ")]
    assert {row[2] for row in rows} == {"eager", "graph", "xla"}, result.stdout
    assert all(int(row[-1]) == 0 and int(row[-2]) > 0 for row in rows), result.stdout


def test_int8_tflite_export_stores_the_table_values_as_int8_weights(saved, tmp_path):
    qmodel, path = saved
    out = tmp_path / "lut.tflite"
    result = subprocess.run(["iqcore", "export", str(path), str(out)], capture_output=True, text=True, env=ENV,
                            timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    tensors = iqkeras.tflite_weight_tensors(out.read_bytes(), qmodel)
    for w in (layer for layer in qmodel.layers if isinstance(layer, iqkeras.QuantizationWrapper)):
        q = w.weights_quantizers["kernel"]
        stored = tensors[(w.name, "kernel")]["value"]
        if stored is not None:
            assert set(np.unique(stored).tolist()) <= set(q.lut_values)


def test_a_plugin_method_is_listed_by_iqcore_list():
    assert ("lut", "weights") in {(i.method, i.target) for i in iqcore.list_quantizers()}
