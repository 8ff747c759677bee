"""Model metadata: survives .keras and .h5 in a fresh process, goes into TFLite, and tampered or oversized
metadata is refused with a ValueError/TypeError naming it."""

import json

import numpy as np
import pytest
import tensorflow as tf
from keras_models import run_python, tampered

import iqcore
from iqcore.keras import (
    add_metadata,
    add_tflite_metadata,
    get_metadata,
    quantize_model,
    tflite_metadata,
    to_tflite,
)

META = {"author": "iqcore tests", "bits": 8, "ranges": [-1.5, 2.0], "nested": {"ok": True, "none": None},
        "text": "grüße"}


@pytest.fixture(scope="module")
def qmodel():
    inp = tf.keras.Input((6,))
    model = tf.keras.Model(inp, tf.keras.layers.Dense(3)(tf.keras.layers.Dense(4, activation="relu")(inp)))
    data = [np.random.default_rng(0).uniform(-1, 1, (8, 6)).astype("float32")]
    q = quantize_model(model, weights_method="symmetric", activation_method="uniform", representative_data=data)
    assert add_metadata(q, META) is q
    return q


def test_get_metadata_returns_a_copy(qmodel):
    got = get_metadata(qmodel)
    assert got == META
    got["author"] = "changed"
    assert get_metadata(qmodel) == META


@pytest.mark.parametrize("ext", ["keras", "h5"])
def test_metadata_survives_saving_in_a_fresh_process(qmodel, tmp_path, ext):
    path = tmp_path / f"m.{ext}"
    qmodel.save(path)
    proc = run_python(f"""
        import json, iqcore
        from iqcore.keras import get_metadata
        print("META", json.dumps(get_metadata(iqcore.load_model({str(path)!r})), sort_keys=True))
    """)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("META ")), None)
    assert line is not None, proc.stderr[-3000:]
    assert json.loads(line[5:]) == META


def test_metadata_goes_into_the_tflite_file(qmodel):
    flatbuffer = add_tflite_metadata(to_tflite(qmodel), get_metadata(qmodel))
    assert tflite_metadata(flatbuffer) == META
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()  # still a valid model
    again = add_tflite_metadata(flatbuffer, {"v": 2})  # replaces the entry, does not add a second
    assert tflite_metadata(again) == {"v": 2}
    with pytest.raises(ValueError, match="TFLite"):
        tflite_metadata(b"not a model at all")


def test_a_model_without_metadata_has_an_empty_dict(qmodel):
    inp = tf.keras.Input((2,))
    assert get_metadata(tf.keras.Model(inp, tf.keras.layers.Dense(1)(inp))) == {}


@pytest.mark.parametrize("bad, error, match", [
    ({"x": float("nan")}, ValueError, "finite"),
    ({"x": np.float32(1.0)}, TypeError, "JSON data"),
    ({1: "a"}, TypeError, "str keys"),
    (["not", "a", "dict"], TypeError, "dict"),
    ({"big": "x" * (1 << 20)}, ValueError, "1 MiB"),
])
def test_bad_metadata_is_refused(qmodel, bad, error, match):
    with pytest.raises(error, match=match):
        add_metadata(qmodel, bad)
    assert get_metadata(qmodel) == META  # unchanged


def test_a_model_without_iqcore_layers_gets_an_identity_layer_carrying_its_metadata():
    inp = tf.keras.Input((2,))
    model = tf.keras.Model(inp, tf.keras.layers.Dense(1)(inp))
    carrying = add_metadata(model, {"a": 1})
    x = np.ones((3, 2), np.float32)
    assert get_metadata(carrying) == {"a": 1} and get_metadata(model) == {}
    assert np.array_equal(carrying(x).numpy(), model(x).numpy())


def _entry(config):
    for layer in config["config"]["layers"]:
        if "iqcore_model_metadata" in layer["config"]:
            return layer["config"]["iqcore_model_metadata"]
    raise AssertionError("no metadata entry in the saved config")


@pytest.mark.parametrize("edit, match", [
    (lambda c: _entry(c)["data"].update(author="mallory"), "edited after it was written"),
    (lambda c: _entry(c).pop("sha256"), "keys"),
    (lambda c: _entry(c).update(data={"big": "x" * (1 << 20)}), "1 MiB"),
    (lambda c: _entry(c).update(data=[1, 2]), "must be a dict"),
])
def test_tampered_metadata_in_a_saved_file_is_refused(qmodel, tmp_path, edit, match):
    qmodel.save(tmp_path / "m.keras")
    tampered(tmp_path / "m.keras", tmp_path / "bad.keras", edit)
    with pytest.raises((ValueError, TypeError), match=match):
        iqcore.load_model(tmp_path / "bad.keras")


def test_to_tflite_writes_the_models_metadata_into_the_file(qmodel):
    flatbuffer = to_tflite(qmodel)
    assert tflite_metadata(flatbuffer) == META
    tf.lite.Interpreter(model_content=flatbuffer).allocate_tensors()
