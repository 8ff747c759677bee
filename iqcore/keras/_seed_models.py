"""Loading models that the seed's toolchain (MCT with mct-quantizers) wrote, as iqcore models.

The seed saves ``.keras`` (Keras 2 layout) and ``.h5`` files holding ``KerasQuantizationWrapper`` (the float
kernel kept in the wrapper, quantized at every call), ``KerasActivationQuantizationHolder``, its inferable
quantizers and a ``MetadataLayer``. :func:`load_seed_model` reads the file's config and weights itself (with
``h5py`` and ``zipfile``: no seed code, on Keras 2 and Keras 3 alike), maps

* ``KerasQuantizationWrapper``          -> :class:`iqcore.keras.QuantizationWrapper` (same name, same weights),
* ``KerasActivationQuantizationHolder`` -> :class:`iqcore.keras.ActivationQuantizationHolder`,
* each quantizer class                  -> the installed iqcore class of the same name (``iq-pot``,
  ``iq-symmetric``, ``iq-uniform`` provide the seed's six; a plugin may provide more),
* ``MetadataLayer``                     -> the model's metadata (:func:`iqcore.keras.get_metadata`),

* a wrapper of constant operands (``weights_value``, ``op_call_args``...) -> the same wrapper of iqcore, its
  Keras 2 ``TFOpLambda`` (which Keras 3 lacks) -> :class:`iqcore.keras.TFOperation` on Keras 3,

and refuses, naming the layer, what has no counterpart: the seed's look-up-table quantizers (unless a plugin
registers a class of that name) and TF ops outside :class:`~iqcore.keras.TFOperation`'s table on Keras 3.
:func:`narrow_weights` is the explicit step that moves weights off code -128 (outside int8 TFLite's weight
range) onto the narrow-range grid.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import io
import json
import os
import re
import zipfile
from typing import Any

import numpy as np
import tensorflow as tf

from iqcore import _registry as registry
from iqcore.keras import _metadata
from iqcore.keras._layers import KERAS_3, PACKAGE, ActivationQuantizationHolder, QuantizationWrapper

keras = tf.keras

SEED_WRAPPER = "KerasQuantizationWrapper"
SEED_HOLDER = "KerasActivationQuantizationHolder"
SEED_METADATA = "MetadataLayer"
#: The seed's quantizer classes that iqcore's built-in plugins provide, with the plugin that does.
SEED_QUANTIZERS = {
    "WeightsPOTInferableQuantizer": "iq-pot", "ActivationPOTInferableQuantizer": "iq-pot",
    "WeightsSymmetricInferableQuantizer": "iq-symmetric", "ActivationSymmetricInferableQuantizer": "iq-symmetric",
    "WeightsUniformInferableQuantizer": "iq-uniform", "ActivationUniformInferableQuantizer": "iq-uniform",
}
#: Largest config.json / HDF5 ``model_config`` read (bytes): a model config is far smaller.
MAX_CONFIG_BYTES = 64 << 20
_IGNORED_WEIGHTS = {"optimizer_step"}


class DamagedFile(ValueError):
    """A model file whose container is damaged (a zip member failing its CRC, a truncated archive)."""


@dataclasses.dataclass
class Mapping:
    """One line of what :func:`load_seed_model` mapped: ``layer``, the seed's ``seed`` and iqcore's ``iqcore``."""

    layer: str
    seed: str
    iqcore: str

    def __str__(self) -> str:
        return f"{self.layer}: {self.seed} -> {self.iqcore}"


# -- reading the file ---------------------------------------------------------------------------------------------
def _h5py():
    import h5py  # a TensorFlow dependency

    return h5py


def read_config(path) -> dict[str, Any]:
    """The model config stored in a ``.keras`` (``config.json``) or ``.h5`` (``model_config``) file.

    Raises:
        ValueError: If the file is neither, or its config is missing, too large or not JSON.
        OSError: If the file cannot be read.
    """
    path = os.fspath(path)
    if path.endswith(".keras") and not zipfile.is_zipfile(path) and os.path.isfile(path):
        raise DamagedFile(f"{path}: not a zip archive (a truncated or damaged .keras file)")
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                info = z.getinfo("config.json")
                if info.file_size > MAX_CONFIG_BYTES:
                    raise ValueError(f"{path}: config.json is {info.file_size} bytes; allowed: {MAX_CONFIG_BYTES}")
                text: str | bytes = z.read("config.json")
        except KeyError:
            raise ValueError(f"{path}: a zip file without config.json is not a .keras model") from None
        except (zipfile.BadZipFile, EOFError, NotImplementedError, OSError) as e:
            raise DamagedFile(f"{path}: not a readable .keras file (damaged zip archive): {e}") from None
    else:
        h5py = _h5py()
        if not h5py.is_hdf5(path):
            raise ValueError(f"{path}: neither a .keras (zip) nor an .h5 (HDF5) model file")
        with h5py.File(path, "r") as f:
            text = f.attrs.get("model_config")
        if text is None:
            raise ValueError(f"{path}: the HDF5 file has no model_config (weights only?); allowed: a whole model")
        if len(text) > MAX_CONFIG_BYTES:
            raise ValueError(f"{path}: model_config is {len(text)} bytes; allowed: {MAX_CONFIG_BYTES}")
    try:
        config = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DamagedFile(f"{path}: the model config is not JSON (a damaged file): {e}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: the model config is {type(config).__name__}; allowed: a dict")
    return config


def _walk_layers(config) -> list[dict]:
    inner = config.get("config") if isinstance(config, dict) else None
    layers = inner.get("layers") if isinstance(inner, dict) else None
    return [entry for entry in layers if isinstance(entry, dict)] if isinstance(layers, list) else []


def _class_name(entry: dict) -> str:
    name = entry.get("class_name")
    return name.split(">")[-1] if isinstance(name, str) else ""


def is_seed_model(path, strict: bool = False) -> bool:
    """Whether a saved model holds the seed's layers (``KerasQuantizationWrapper``/``...Holder``).

    Raises:
        DamagedFile: With ``strict``, for a damaged ``.keras`` archive (which no loader can read).
    """
    try:
        config = read_config(path)
    except DamagedFile:
        if strict:
            raise
        return False
    except (ValueError, OSError):
        return False
    return any(_class_name(e) in (SEED_WRAPPER, SEED_HOLDER) for e in _walk_layers(config))


def _keras2_paths(layer_entries: list[dict]) -> dict[str, str]:
    """``{layer name: path in model.weights.h5}`` as Keras 2's saving library names them: the snake-case class
    name, numbered from the second of a class on, in the order of the model's layers."""
    used: dict[str, int] = {}
    paths = {}
    for entry in layer_entries:
        snake = re.sub("(.)([A-Z][a-z0-9]+)", r"\1_\2", _class_name(entry))
        snake = re.sub("([a-z])([A-Z])", r"\1_\2", snake).lower()
        snake = snake if not snake.startswith("_") else "private" + snake
        if snake in used:
            used[snake] += 1
            snake = f"{snake}_{used[snake]}"
        else:
            used[snake] = 0
        name = entry.get("config", {}).get("name") if isinstance(entry.get("config"), dict) else None
        if isinstance(name, str):
            paths[name] = f"layers/{snake}"
    return paths


def _arrays(group) -> list[np.ndarray]:
    """``vars/0``, ``vars/1``... of a Keras 2 ``.keras`` weights group, in order."""
    if group is None or "vars" not in group:
        return []
    vars_ = group["vars"]
    return [np.asarray(vars_[str(i)]) for i in range(len(vars_))]


def _read_weights(path, entries: list[dict]) -> dict[str, dict[str, Any]]:
    """``{layer name: {"own": [arrays], "inner": [arrays]}}`` (``.keras``) or ``{layer name: {"named": {base
    name: array}}}`` (``.h5``)."""
    h5py = _h5py()
    path = os.fspath(path)
    out: dict[str, dict[str, Any]] = {}
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            try:
                data = z.read("model.weights.h5")
            except KeyError:
                raise ValueError(f"{path}: the .keras file has no model.weights.h5") from None
        with h5py.File(io.BytesIO(data), "r") as f:
            for name, where in _keras2_paths(entries).items():
                group = f.get(where)
                out[name] = {"own": _arrays(group), "inner": _arrays(group.get("layer") if group else None)}
        return out
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        for name in root.attrs.get("layer_names", []):
            name = name.decode() if isinstance(name, bytes) else str(name)
            group = root[name]
            named = {}
            for wname in group.attrs.get("weight_names", []):
                wname = wname.decode() if isinstance(wname, bytes) else str(wname)
                named[wname.split("/")[-1].split(":")[0]] = np.asarray(group[wname])
            out[name] = {"named": named}
    return out


# -- mapping the config --------------------------------------------------------------------------------------------
def _quantizer(entry, where: str) -> tuple[dict[str, Any], str]:
    """The iqcore form of a stored seed quantizer, and its description."""
    if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
        raise ValueError(f"{where} must be a dict with 'class_name' and 'config'; got {entry!r:.200}")
    name = _class_name(entry)
    try:
        cls = registry.class_by_name(name)
    except AttributeError:
        if "LUT" in name:
            raise ValueError(
                f"{where} is the seed's look-up-table quantizer {name}, which iqcore's plugins (iq-pot, "
                f"iq-symmetric, iq-uniform) do not provide: it loads once a plugin registering a quantizer class "
                f"named {name!r} is installed (a LUT plugin such as the example examples/iq-lut, extended to the "
                f"seed's parameters); convert the layer to a uniform method first, or install such a plugin"
            ) from None
        plugin = SEED_QUANTIZERS.get(name)
        hint = f"install {plugin}" if plugin else "install a plugin that registers a quantizer class of that name"
        raise ValueError(f"{where} is the quantizer class {name!r}, which no installed plugin provides: {hint}") \
            from None
    method, target = getattr(cls, "method", ""), getattr(cls, "target", "")
    info = registry.entries().get((method, target))
    dist = info.distribution if info is not None and info.cls is cls else "unknown"
    return ({"method": method, "target": target, "distribution": dist, "config": dict(entry["config"])},
            f"{name} -> {method}/{target} ({dist})")


#: Layer-config keys every Keras 3 layer accepts besides its constructor's own parameters.
_BASE_KEYS = {"name", "trainable", "dtype", "batch_input_shape", "input_shape", "batch_size", "input_dim",
              "activity_regularizer", "autocast"}


def _tf_operation(entry, where: str, mapped: list[Mapping]) -> dict[str, Any]:
    """A Keras 2 ``TFOpLambda`` entry as an :class:`iqcore.keras.TFOperation` (Keras 3 has no TFOpLambda)."""
    from iqcore.keras._tf_ops import FUNCTIONS, TFOperation

    c = entry["config"]
    function = c.get("function")
    if function not in FUNCTIONS:
        raise ValueError(f"layer {where!r}: a Keras 2 TFOpLambda of tf.{function}, which iqcore cannot run on Keras 3; "
                         f"allowed: tf.{', tf.'.join(sorted(FUNCTIONS))} (or load the file with Keras 2)")
    mapped.append(Mapping(where, f"TFOpLambda(tf.{function})", "TFOperation (Keras 3 has no TFOpLambda)"))
    return {**_registered(TFOperation), "config": {"name": c.get("name", where), "function": function,
                                                   "trainable": c.get("trainable", True),
                                                   "dtype": c.get("dtype", "float32")}}


def _keras3_layer(entry, where: str, mapped: list[Mapping]):
    """A built-in Keras layer entry with the Keras 2 config keys that Keras 3's class does not take (e.g.
    DepthwiseConv2D's ``groups``) removed, each removal reported in ``mapped``; other entries unchanged."""
    if KERAS_3 and isinstance(entry, dict) and _class_name(entry) == "TFOpLambda" and \
            isinstance(entry.get("config"), dict):
        return _tf_operation(entry, where, mapped)
    if not KERAS_3 or not isinstance(entry, dict) or not isinstance(entry.get("config"), dict) or \
            entry.get("module") not in ("keras.layers", None) or entry.get("registered_name") not in (None, ""):
        return entry
    cls = getattr(keras.layers, str(entry.get("class_name")), None)
    if not isinstance(cls, type) or cls.__name__ == "InputLayer":
        return entry
    params = set(inspect.signature(cls).parameters) | _BASE_KEYS
    dropped = sorted(k for k in entry["config"] if k not in params)
    if not dropped:
        return entry
    mapped.append(Mapping(where, f"{cls.__name__} config keys {dropped}", "dropped (Keras 2 only, not in Keras 3)"))
    return {**entry, "config": {k: v for k, v in entry["config"].items() if k not in dropped}}


def _registered(cls) -> dict[str, Any]:
    return {"module": cls.__module__, "class_name": cls.__name__, "registered_name": f"{PACKAGE}>{cls.__name__}"}


def convert_config(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None, list[Mapping]]:
    """The iqcore form of a seed model config: ``(config, metadata or None, what was mapped)``.

    Raises:
        ValueError: For a model that is not Functional, a quantizer with no installed counterpart (naming the
            layer and the plugin that would load it), a TF op Keras 3 cannot run, or a malformed entry.
    """
    if _class_name(config) not in ("Functional", "Model") or not isinstance(config.get("config"), dict):
        raise ValueError(
            f"the model is a {config.get('class_name')!r}; allowed: a Functional model (what MCT writes)"
        )
    layers, metadata, mapped = [], None, []
    for i, entry in enumerate(config["config"].get("layers") or []):
        if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
            raise ValueError(f"layers[{i}] is not a layer entry (a dict with 'class_name' and 'config')")
        kind, c = _class_name(entry), entry["config"]
        lname = c.get("name", f"layers[{i}]")
        if kind == SEED_METADATA:
            if entry.get("inbound_nodes"):
                raise ValueError(f"layer {lname!r}: a MetadataLayer with inbound nodes; allowed: a detached one")
            metadata = _metadata.check_metadata(c.get("metadata") or {}, f"layer {lname!r}: metadata")
            mapped.append(Mapping(lname, SEED_METADATA, "model metadata (iqcore.keras.get_metadata)"))
            continue
        if kind == SEED_WRAPPER:
            quantizers = c.get("weights_quantizer", c.get("weights_quantizers"))
            if not isinstance(quantizers, dict) or not quantizers:
                raise ValueError(f"layer {lname!r}: a KerasQuantizationWrapper with weights_quantizer "
                                 f"{quantizers!r:.100}; allowed: a non-empty dict")
            new = {}
            for key, q in quantizers.items():
                new[key], text = _quantizer(q, f"layer {lname!r}: weights_quantizer[{key!r}]")
                inner = c.get("layer", {}).get("class_name", "?") if isinstance(c.get("layer"), dict) else "?"
                what = f"constant operand {key}" if str(key).isdigit() else key
                mapped.append(Mapping(lname, f"{SEED_WRAPPER}({inner}).{what}", f"QuantizationWrapper: {text}"))
            wrapper_config = {"name": lname, "trainable": False, "dtype": c.get("dtype", "float32"),
                              "layer": _keras3_layer(c.get("layer"), lname, mapped), "weights_quantizers": new}
            if "weights_value" in c:  # positional constants
                wrapper_config.update({
                    "weight_values": c["weights_value"], "op_call_args": c.get("op_call_args", []),
                    "op_call_kwargs": c.get("op_call_kwargs", {}),
                    "is_inputs_as_list": c.get("is_inputs_as_list", False)})
            entry = {**entry, **_registered(QuantizationWrapper), "config": wrapper_config}
        elif kind == SEED_HOLDER:
            q, text = _quantizer(c.get("activation_holder_quantizer"), f"layer {lname!r}: activation_holder_quantizer")
            mapped.append(Mapping(lname, SEED_HOLDER, f"ActivationQuantizationHolder: {text}"))
            entry = {**entry, **_registered(ActivationQuantizationHolder), "config": {
                "name": lname, "trainable": c.get("trainable", True), "dtype": c.get("dtype", "float32"),
                "activation_holder_quantizer": q}}
        else:
            entry = _keras3_layer(entry, lname, mapped)
        layers.append(entry)
    new_config = {**config, "config": {**config["config"], "layers": layers}}
    if KERAS_3:  # one input or output stored as a list of one makes Keras 3 expect a list when called
        for key in ("input_layers", "output_layers"):
            refs = new_config["config"].get(key)
            if isinstance(refs, list) and len(refs) == 1 and isinstance(refs[0], list) and len(refs[0]) == 3:
                new_config["config"][key] = refs[0]
    return new_config, metadata, mapped


# -- building and filling the model -----------------------------------------------------------------------------------
def _assign(variable, value, where: str) -> None:
    if tuple(variable.shape) != tuple(np.shape(value)):
        raise ValueError(f"{where}: the stored weight has shape {np.shape(value)}; the layer needs "
                         f"{tuple(variable.shape)}")
    variable.assign(np.asarray(value, dtype=variable.dtype.name if hasattr(variable.dtype, "name")
                               else variable.dtype))


def _base(variable) -> str:
    return getattr(variable, "name", "").split("/")[-1].split(":")[0]


def _fill_constants(wrapper, data: dict[str, Any] | None) -> None:
    """Give a wrapper of constant operands the float constants its file stores (``positional_weight_{i}``),
    as the seed does after building them from the config."""
    positions = sorted(wrapper.weight_values)
    if data is None:
        raise ValueError(f"layer {wrapper.name!r}: the file holds no weights for it")
    if "named" in data:
        values = [data["named"].get(f"positional_weight_{pos}") for pos in positions]
    else:  # .keras: the step counter (int32 scalar) and the constants in position order
        floats = [v for v in data["own"] if not (v.ndim == 0 and v.dtype.kind == "i")]
        values = floats if len(floats) == len(positions) else [None] * len(positions)
    for pos, value in zip(positions, values, strict=True):
        if value is None:
            raise ValueError(f"layer {wrapper.name!r}: the file has no value for positional_weight_{pos}")
        _assign(wrapper.quantized_variables()[pos], value, f"layer {wrapper.name!r}: positional_weight_{pos}")
    wrapper.requantize()


def _fill(model, stored: dict[str, dict[str, Any]], quantized: dict[str, list[str]]) -> None:
    for layer in model.layers:
        data = stored.get(layer.name)
        if isinstance(layer, QuantizationWrapper) and layer.weight_values:
            _fill_constants(layer, data)
            continue
        inner = layer.layer if isinstance(layer, QuantizationWrapper) else layer
        variables = list(inner.weights)
        if not variables:
            continue
        if data is None:
            raise ValueError(f"layer {layer.name!r}: the file holds no weights for it")
        if "named" in data:  # .h5: by weight name
            named = {k: v for k, v in data["named"].items() if k not in _IGNORED_WEIGHTS}
            for var in variables:
                base = _base(var)
                key = base if base in named else {"kernel": "depthwise_kernel", "depthwise_kernel": "kernel"}.get(base)
                if key not in named:
                    raise ValueError(f"layer {layer.name!r}: the file has no weight {base!r}; it has "
                                     f"{sorted(named)}")
                _assign(var, named.pop(key), f"layer {layer.name!r}: weight {base!r}")
            if named:
                raise ValueError(f"layer {layer.name!r}: the file has weights the layer lacks: {sorted(named)}")
        else:  # Keras 2 .keras: the wrapper's own variables are the quantized weights, then optimizer_step
            names = quantized.get(layer.name, [])
            own, rest = data["own"][:len(names)], list(data["inner"] if names else data["own"])
            values = {}
            for name, value in zip(names, own, strict=False):
                values[name] = value
            if len(own) != len(names):
                raise ValueError(f"layer {layer.name!r}: the file holds {len(own)} quantized weights; the "
                                 f"config names {len(names)}")
            for var in variables:
                base = _base(var)
                alias = {"kernel": "depthwise_kernel", "depthwise_kernel": "kernel"}.get(base)
                if base in values or alias in values:
                    value = values.pop(base if base in values else alias)  # type: ignore[arg-type]
                elif rest:
                    value = rest.pop(0)
                else:
                    raise ValueError(f"layer {layer.name!r}: the file has no value for the weight {base!r}")
                _assign(var, value, f"layer {layer.name!r}: weight {base!r}")
            if rest or values:
                raise ValueError(f"layer {layer.name!r}: the file holds {len(rest) + len(values)} more weights "
                                 f"than the layer has ({[_base(v) for v in variables]})")
        if isinstance(layer, QuantizationWrapper):
            layer.requantize()


#: What a damaged file can make the readers and Keras raise; reported as a ValueError naming the stage.
_DAMAGE = (KeyError, IndexError, AttributeError, AssertionError, RuntimeError, NotImplementedError, EOFError,
           OverflowError, RecursionError, UnicodeError, zipfile.BadZipFile)


def load_seed_model(path) -> tuple[Any, list[Mapping]]:
    """Load a ``.keras``/``.h5`` file the seed's toolchain wrote as an iqcore model; also returns what was mapped.

    Raises:
        ValueError: For anything that cannot be mapped or read (the message names the layer, or the stage and
            what the reader found wrong), or a file that is neither format.
        TypeError: For a stored value of the wrong type (naming the parameter).
        OSError: If the file cannot be read.
    """
    stage = "reading the file"
    try:
        stage = "reading the model config"
        config = read_config(path)
        stage = "mapping the layers"
        new_config, metadata, mapped = convert_config(config)
        stage = "rebuilding the model"
        model = _build(new_config)
        stage = "reading the weights"
        _fill(model, _read_weights(path, list(config["config"].get("layers") or [])), _quantized(new_config))
    except _DAMAGE as e:
        raise ValueError(f"{os.fspath(path)}: damaged seed model ({stage}): {type(e).__name__}: {e}"[:2000]) \
            from None
    except TypeError as e:
        if type(e) is TypeError:
            raise
        # NumPy's subclasses (a ufunc given a string from an edited shape) name neither the file nor the stage.
        raise TypeError(f"{os.fspath(path)}: damaged seed model ({stage}): {type(e).__name__}: {e}"[:2000]) \
            from None
    if metadata is not None:
        _metadata.add_metadata(model, metadata)
    return model, mapped


def _quantized(new_config) -> dict[str, list[str]]:
    return {e["config"]["name"]: list(e["config"]["weights_quantizers"])
            for e in new_config["config"]["layers"] if _class_name(e) == QuantizationWrapper.__name__}


def _build(new_config):
    from iqcore.keras._tf_ops import TFOperation

    classes = (QuantizationWrapper, ActivationQuantizationHolder, TFOperation)
    custom = {f"{PACKAGE}>{c.__name__}": c for c in classes}
    custom.update({c.__name__: c for c in classes})
    try:
        return keras.Model.from_config(copy.deepcopy(new_config["config"]), custom_objects=custom)
    except TypeError as e:
        # Keras 3 re-raises a layer's TypeError as a generic "could not be deserialized" one carrying the whole
        # config; the error naming the layer and the parameter is its context.
        root: BaseException = e
        while "could not be deserialized" in str(root) and isinstance(root.__context__, (TypeError, ValueError)):
            root = root.__context__
        raise root from None


# -- narrow range for int8 TFLite -------------------------------------------------------------------------------------
@dataclasses.dataclass
class Moved:
    """What :func:`narrow_weights` changed in one weight: how many values moved, and the largest move."""

    layer: str
    weight: str | int
    moved: int
    total: int
    max_shift: float

    def __str__(self) -> str:
        return (f"{self.layer}/{self.weight}: {self.moved} of {self.total} weights moved to the narrow-range grid, "
                f"by at most {self.max_shift:.6g}")


def narrow_weights(model) -> list[Moved]:
    """Re-grid every quantized weight that sits on code -128 (which int8 TFLite weights cannot hold) onto its
    quantizer's narrow-range grid (``narrow_range=True``), in place; returns what moved.

    Threshold grids keep their step (only values at ``-T`` move, by one step); uniform grids get
    ``2**num_bits - 2`` steps, so most values move, by less than a step. Never called implicitly:
    ``iqcore convert --narrow-range`` and the caller decide.
    """
    from iqcore.keras._tflite import export_problem, flatten_layers

    report = []
    for layer in flatten_layers(model):
        if not isinstance(layer, QuantizationWrapper):
            continue
        for name, q in layer.weights_quantizers.items():
            var = layer.quantized_variables().get(name)
            if var is None or q.narrow_range or export_problem(var, q) is None:
                continue
            narrow = type(q).from_config({**q.get_config(), "narrow_range": True})
            old = np.asarray(var.numpy(), dtype=np.float64)
            var.assign(tf.cast(narrow(tf.convert_to_tensor(var)), var.dtype))
            new = np.asarray(var.numpy(), dtype=np.float64)
            layer._quantizers[name] = narrow
            diff = np.abs(new - old)
            report.append(Moved(layer.name, name, int(np.count_nonzero(diff)), int(diff.size),
                                float(diff.max()) if diff.size else 0.0))
    return report
