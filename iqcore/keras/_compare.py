"""Where a quantized Keras model and its int8 TFLite file part ways, layer by layer.

Each :class:`ActivationQuantizationHolder` of the Keras model is matched to the tensor of the file that carries
the same grid (shape, scale and zero point); both models run on the same inputs (the interpreter keeps every
intermediate tensor) and each matched pair is compared in steps of its grid.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import tensorflow as tf

from iqcore.keras._layers import ActivationQuantizationHolder
from iqcore.keras._tflite import flatten_layers, run_tflite

keras = tf.keras


@dataclasses.dataclass(frozen=True)
class LayerAgreement:
    """One holder of the Keras model against its tensor in the file.

    Attributes:
        layer: The holder's name.
        tensor: The matched tensor's name in the file (None when no tensor carries the holder's grid: the
            converter fused the op or rescaled its output).
        values: The number of values compared.
        differ: How many differ.
        max_steps: The largest difference, in steps of the holder's grid.
    """

    layer: str
    tensor: str | None
    values: int
    differ: int
    max_steps: float


def _grid_key(shape, zero_point: int):
    return tuple(int(d) for d in shape[1:]), int(zero_point)


def _same_scale(a: float, b: float) -> bool:
    """Equal up to a few float32 ulps: the converter derives an activation's scale from its range in its own
    float arithmetic, which can land an ulp away from the holder's."""
    return abs(float(a) / float(b) - 1.0) <= 2.0**-21


def _signature(layer) -> tuple | None:
    """What makes two layers compute the same tensor: class, configuration (name aside) and input tensors."""
    try:
        inputs = tuple(id(t) for t in tf.nest.flatten(layer.input))
        config = {k: v for k, v in layer.get_config().items() if k != "name"}
    except (AttributeError, ValueError, RuntimeError, NotImplementedError):
        return None
    return type(layer).__name__, repr(sorted(config.items())), inputs


def _duplicates(model) -> dict[str, list[str]]:
    """``{layer name: names of the layers computing the same tensor}``: TensorFlow merges such layers (NASNet
    applies one ReLU to a tensor in several branches), so the file names their one tensor after one of them."""
    groups: dict[tuple, list[str]] = {}
    for layer in flatten_layers(model):
        key = _signature(layer)
        if key is not None:
            groups.setdefault(key, []).append(layer.name)
    return {name: names for names in groups.values() if len(names) > 1 for name in names}


def _named(d: dict, name: str, suffixed: bool) -> bool:
    """Whether the file tensor ``d`` is named after the Keras layer ``name``, exactly or (``suffixed``) with the
    ``_<n>`` the converter adds to repeated names."""
    suffix = r"_\d+" if suffixed else ""
    return re.search(rf"/{re.escape(name)}{suffix}[/;]", d["name"] + ";") is not None


def _pick(candidates: list[dict], holder, duplicates: dict[str, list[str]]) -> dict | None:
    """The tensor on the holder's grid that the holder (or the layer feeding it, or a layer computing the same
    tensor) produced: several tensors can share one grid (every ReLU6 output calibrated to [0, 6]), so names
    decide; a lone candidate is taken."""
    producer = getattr(holder.input, "_keras_history", [None])[0]
    names = [holder.name] + ([producer.name] if producer is not None else [])
    names += [n for name in list(names) for n in duplicates.get(name, []) if n not in names]
    for suffixed in (False, True):
        for name in names:
            for d in candidates:
                if _named(d, name, suffixed):
                    return d
    return candidates[0] if len(candidates) == 1 else None


def compare(model, flatbuffer: bytes, x: np.ndarray) -> list[LayerAgreement]:
    """Run ``model`` and the int8 ``flatbuffer`` on the float inputs ``x`` and compare every holder.

    Args:
        model: The quantized Keras model (one input).
        flatbuffer: Its int8 TFLite file (from :func:`iqcore.keras.to_tflite`).
        x: A batch of float inputs.

    Returns:
        One :class:`LayerAgreement` per holder, in the model's layer order.
    """
    x = np.asarray(x, np.float32)
    holders = [layer for layer in flatten_layers(model) if isinstance(layer, ActivationQuantizationHolder)]
    probe = keras.Model(model.inputs[0] if len(model.inputs) == 1 else model.inputs, [h.output for h in holders])
    keras_values = probe(x, training=False)
    keras_values = [np.asarray(v) for v in (keras_values if isinstance(keras_values, list) else [keras_values])]
    _, _, reader = run_tflite(flatbuffer, x, experimental_preserve_all_tensors=True)
    by_grid: dict[tuple, list[dict]] = {}
    for d in reader.get_tensor_details():
        scales = d["quantization_parameters"]["scales"]
        if d["dtype"] == np.int8 and scales.size == 1 and len(d["shape"]) >= 1:
            key = _grid_key(d["shape"], d["quantization_parameters"]["zero_points"][0])
            by_grid.setdefault(key, []).append(d)
    duplicates = _duplicates(model)
    rows = []
    for holder, value in zip(holders, keras_values, strict=True):
        params = holder.quantizer.quantization_params()
        scale, zp = np.float32(params.scale), int(params.zero_point)
        candidates = [d for d in by_grid.get(_grid_key(value.shape, zp), [])
                      if _same_scale(d["quantization_parameters"]["scales"][0], scale)]
        d = _pick(candidates, holder, duplicates)
        if d is None:
            rows.append(LayerAgreement(holder.name, None, 0, 0, float("nan")))
            continue
        try:
            got = reader.get_tensor(d["index"])
        except ValueError:
            rows.append(LayerAgreement(holder.name, None, 0, 0, float("nan")))
            continue
        lite = (got.astype(np.float32) - zp) * scale
        if lite.shape != value.shape:
            rows.append(LayerAgreement(holder.name, None, 0, 0, float("nan")))
            continue
        steps = np.abs(lite.astype(np.float64) - value) / float(scale)
        rows.append(LayerAgreement(holder.name, d["name"], int(value.size), int(np.sum(steps > 0.5)),
                                   float(steps.max(initial=0.0))))
    return rows
