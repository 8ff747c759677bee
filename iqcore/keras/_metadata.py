"""Model metadata: a JSON-able dict that travels with a quantized model through ``.keras``, ``.h5`` and TFLite.

    from iqcore.keras import add_metadata, get_metadata
    model = add_metadata(model, {"author": "me", "calibration": "minmax", "bits": 8})
    model.save("m.keras")
    get_metadata(iqcore.load_model("m.keras"))        # the same dict, in a fresh process too

The dict rides in the saved config of the model's first iqcore layer (a :class:`QuantizationWrapper` or an
:class:`ActivationQuantizationHolder`; a model with none gets a :class:`ModelMetadata` identity layer after its
first output) under the key ``iqcore_model_metadata``, with the SHA-256 of its canonical
JSON: the model's graph is untouched, Keras 2 and Keras 3 save and load it as any layer config, and an entry
edited by hand (the digest no longer matches), one that is not JSON data, or one larger than
:data:`MAX_METADATA_BYTES` is refused with a ``ValueError``. :func:`add_tflite_metadata` writes the dict into a
TFLite file's metadata table (entry ``iqcore_metadata``) and :func:`tflite_metadata` reads it back.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import tensorflow as tf

#: The layer-config key the metadata is stored under.
METADATA_KEY = "iqcore_model_metadata"
#: The name of the entry in a TFLite file's metadata table.
TFLITE_METADATA_NAME = "iqcore_metadata"
#: The largest metadata accepted: its canonical JSON, in bytes (1 MiB).
MAX_METADATA_BYTES = 1 << 20
#: How deeply lists and dicts may nest.
MAX_DEPTH = 32

# The layer attribute holding the metadata as canonical JSON text: a str, so that Keras 2 does not wrap it in
# its tracked DictWrapper/ListWrapper (which json cannot encode).
_ATTR = "_iqcore_model_metadata"


def _canonical(data) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def _digest(data) -> str:
    return hashlib.sha256(_canonical(data).encode("utf-8")).hexdigest()


def _check_value(value, path: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValueError(f"{path} nests deeper than {MAX_DEPTH} levels; allowed: JSON data up to that depth")
    if value is None or isinstance(value, (bool, str, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path} is {value!r}; allowed: finite numbers (JSON has no NaN or Infinity)")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_value(item, f"{path}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{path} has the key {key!r} ({type(key).__name__}); allowed: str keys")
            _check_value(item, f"{path}[{key!r}]", depth + 1)
        return
    raise TypeError(
        f"{path} is {type(value).__name__} ({value!r:.80}); allowed: JSON data (dict, list, str, int, float, "
        "bool, None)"
    )


def check_metadata(metadata, where: str = "metadata") -> dict[str, Any]:
    """A validated deep copy of ``metadata`` (tuples become lists).

    Raises:
        TypeError: If ``metadata`` is not a dict, or holds a key that is not a str or a value that is not
            JSON data.
        ValueError: For NaN/Infinity, nesting deeper than :data:`MAX_DEPTH`, or JSON larger than
            :data:`MAX_METADATA_BYTES`.
    """
    if not isinstance(metadata, dict):
        raise TypeError(f"{where} must be a dict; got {type(metadata).__name__}")
    _check_value(metadata, where, 0)
    text = _canonical(metadata)
    size = len(text.encode("utf-8"))
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"{where} is {size} bytes of JSON; allowed: at most {MAX_METADATA_BYTES} bytes (1 MiB)")
    return json.loads(text)


# -- in layer configs -----------------------------------------------------------------------------------------
def config_entry(layer) -> dict[str, Any]:
    """``{METADATA_KEY: {"data", "sha256"}}`` for a layer carrying metadata, else ``{}`` (for ``get_config``)."""
    text = getattr(layer, _ATTR, None)
    if text is None:
        return {}
    data = json.loads(text)
    return {METADATA_KEY: {"data": data, "sha256": _digest(data)}}


def attach(layer, stored, where: str) -> None:
    """Put the metadata stored by :func:`config_entry` back on ``layer`` (from a layer's ``from_config``).

    Raises:
        ValueError, TypeError: If the entry is malformed, oversized, or was edited (its digest does not match).
    """
    if not isinstance(stored, dict) or set(stored) != {"data", "sha256"}:
        keys = sorted(stored) if isinstance(stored, dict) else type(stored).__name__
        raise ValueError(f"{where} must be a dict with the keys ['data', 'sha256']; got {keys}")
    data = check_metadata(stored["data"], f"{where}['data']")
    if not isinstance(stored["sha256"], str) or stored["sha256"] != _digest(data):
        raise ValueError(
            f"{where}: the metadata does not match its sha256 digest: it was edited after it was written; "
            "allowed: metadata written by iqcore.keras.add_metadata"
        )
    setattr(layer, _ATTR, _canonical(data))


def _iqcore_layers(model) -> list:
    from iqcore.keras._layers import ActivationQuantizationHolder, QuantizationWrapper
    from iqcore.keras._tflite import flatten_layers

    return [layer for layer in flatten_layers(model)
            if isinstance(layer, (QuantizationWrapper, ActivationQuantizationHolder, ModelMetadata))]


@tf.keras.utils.register_keras_serializable(package="iqcore")
class ModelMetadata(tf.keras.layers.Layer):
    """An identity layer that carries the metadata of a model with no iqcore layer (:func:`add_metadata` puts
    one after the model's first output)."""

    def __init__(self, **kwargs):
        stored = kwargs.pop(METADATA_KEY, None)
        super().__init__(**kwargs)
        if stored is not None:
            attach(self, stored, where=f"{self.name}: {METADATA_KEY}")

    def call(self, inputs):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), **config_entry(self)}


def add_metadata(model, metadata: dict[str, Any]):
    """Attach ``metadata`` (JSON data, at most 1 MiB) to a model, replacing any it had; returns the model: the
    same object, as the seed's ``add_metadata`` does, when it has an iqcore layer to carry the metadata, else a
    new model with the same layers and a :class:`ModelMetadata` identity layer after its first output.

    Raises:
        TypeError, ValueError: For metadata that is not JSON data or is too large (see :func:`check_metadata`),
            or a model with neither an iqcore layer nor known inputs and outputs.
    """
    data = check_metadata(metadata)
    layers = _iqcore_layers(model)
    if not layers:
        outputs = list(getattr(model, "outputs", None) or [])
        if not outputs or not getattr(model, "inputs", None):
            raise ValueError(f"model {getattr(model, 'name', model)!r} has no iqcore layer and no known outputs to "
                             "put a ModelMetadata layer after; allowed: a quantized or a built functional model")
        outputs[0] = ModelMetadata(name=f"{model.name}_metadata")(outputs[0])
        model = tf.keras.Model(model.inputs, outputs if len(outputs) > 1 else outputs[0], name=model.name)
        layers = _iqcore_layers(model)
    for layer in layers:
        if hasattr(layer, _ATTR):
            delattr(layer, _ATTR)
    setattr(layers[0], _ATTR, _canonical(data))
    return model


def get_metadata(model) -> dict[str, Any]:
    """A copy of the metadata attached to ``model`` (``{}`` when it has none)."""
    for layer in _iqcore_layers(model):
        text = getattr(layer, _ATTR, None)
        if text is not None:
            return json.loads(text)
    return {}


# -- in TFLite files --------------------------------------------------------------------------------------------
def add_tflite_metadata(flatbuffer: bytes, metadata: dict[str, Any]) -> bytes:
    """``flatbuffer`` (a TFLite file) with ``metadata`` as UTF-8 JSON in its metadata table, under
    :data:`TFLITE_METADATA_NAME` (replacing an entry of that name).

    Raises:
        TypeError, ValueError: For metadata that :func:`check_metadata` refuses, or bytes that are not a TFLite
            model.
    """
    from tensorflow.lite.python import schema_py_generated as schema

    data = check_metadata(metadata)
    model = read_tflite(flatbuffer, schema)
    buffer = schema.BufferT()
    buffer.data = list(_canonical(data).encode("utf-8"))
    model.buffers = list(model.buffers or [])
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = TFLITE_METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    kept = [m for m in (model.metadata or []) if _name(m.name) != TFLITE_METADATA_NAME]
    model.metadata = [*kept, entry]
    return write_tflite(model, len(flatbuffer) + len(buffer.data))


def tflite_metadata(flatbuffer: bytes) -> dict[str, Any]:
    """The metadata :func:`add_tflite_metadata` wrote into a TFLite file (``{}`` when there is none).

    Raises:
        ValueError: If the entry is not valid metadata, or the bytes are not a TFLite model.
    """
    from tensorflow.lite.python import schema_py_generated as schema

    model = read_tflite(flatbuffer, schema)
    for m in model.metadata or []:
        if _name(m.name) == TFLITE_METADATA_NAME:
            raw = bytes(bytearray(model.buffers[m.buffer].data))
            try:
                data = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ValueError(f"TFLite metadata {TFLITE_METADATA_NAME!r} is not JSON: {e}") from None
            return check_metadata(data, f"TFLite metadata {TFLITE_METADATA_NAME!r}")
    return {}


def _name(name) -> str:
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)


def write_tflite(model, size: int) -> bytes:
    """The flatbuffer of a TFLite object-API model (``schema.ModelT``), about ``size`` bytes."""
    import flatbuffers

    builder = flatbuffers.Builder(size + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def read_tflite(flatbuffer: bytes, schema):
    """The object-API model (``schema.ModelT``) of a TFLite flatbuffer.

    Raises:
        ValueError: If the bytes are not a readable TFLite model.
    """
    if not isinstance(flatbuffer, (bytes, bytearray)) or len(flatbuffer) < 8 or bytes(flatbuffer[4:8]) != b"TFL3":
        raise ValueError("flatbuffer is not a TFLite model (no 'TFL3' identifier)")
    try:
        return schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytearray(flatbuffer), 0))
    except Exception as e:  # noqa: BLE001 - a corrupt flatbuffer raises anything from struct to IndexError
        raise ValueError(f"flatbuffer is not a readable TFLite model: {type(e).__name__}: {e}") from None
