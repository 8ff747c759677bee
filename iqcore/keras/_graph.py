"""Model surgery for :func:`iqcore.keras.quantize_model`: the layer graph of a Sequential or Functional model,
and its rebuild with layers replaced and new layers inserted after others."""

from __future__ import annotations

import tensorflow as tf

from iqcore.keras._layers import KERAS_3, QuantizationWrapper

keras = tf.keras


def input_names(model) -> list[str]:
    """The names of the model's input layers, in input order."""
    return [t._keras_history[0].name for t in model.inputs]


def graph(model):
    """``(producers, consumers)``: layer name -> names of the layers feeding it / fed by it."""
    producers: dict[str, list[str]] = {}
    consumers: dict[str, list[str]] = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        try:
            tensors = tf.nest.flatten(layer.input)
        except (AttributeError, ValueError, RuntimeError):  # a shared layer (several inputs): no single answer
            continue
        names = [t._keras_history[0].name for t in tensors if getattr(t, "_keras_history", None)]
        producers[layer.name] = names
        for n in names:
            consumers.setdefault(n, []).append(layer.name)
    return producers, consumers


def clone_layer(layer):
    return layer.__class__.from_config(layer.get_config())


def rebuild(model, replace, insert_after, name=None):
    """A copy of a Sequential or Functional model with each layer replaced by ``replace(layer)`` and the layers
    ``insert_after(name)`` (fresh instances) chained after each layer or model input named ``name``."""
    names = input_names(model)
    if isinstance(model, keras.Sequential):
        inputs = keras.Input(shape=model.inputs[0].shape[1:], dtype=model.inputs[0].dtype, name=names[0])
        x = _chain(inputs, insert_after(names[0]))
        for layer in model.layers:
            x = _chain(replace(layer)(x), insert_after(layer.name))
        return keras.Model(inputs, x, name=name or model.name)
    if not KERAS_3:
        return _rebuild_functional_keras2(model, replace, insert_after, name or model.name)
    inputs = [keras.Input(shape=t.shape[1:], dtype=t.dtype, name=n) for t, n in zip(model.inputs, names, strict=True)]
    chained = {id(t): _chain(t, insert_after(n)) for t, n in zip(inputs, names, strict=True)}

    def call(layer, *args, **kwargs):
        args = tf.nest.map_structure(lambda t: chained.get(id(t), t), args)
        original = layer.layer.name if isinstance(layer, QuantizationWrapper) else layer.name
        return _chain(layer(*args, **kwargs), insert_after(original))

    structure = tf.nest.pack_sequence_as(model.input, inputs)
    new = keras.models.clone_model(model, input_tensors=structure, clone_function=replace, call_function=call)
    return keras.Model(new.input, new.output, name=name or model.name)


def _chain(x, layers):
    for layer in layers:
        x = layer(x)
    return x


def _rebuild_functional_keras2(model, replace, insert_after, name):
    """Keras 2: rewrite the Functional config (layer entries with ``[[name, node, tensor, kwargs], ...]``
    inbound nodes), replacing layers and inserting new ones, and rebuild it with ``Model.from_config``."""
    config = model.get_config()
    by_name = {layer.name: layer for layer in model.layers}
    entries, inserted, renames = [], set(), {}
    for entry in config["layers"]:
        name = entry["name"]
        layer = by_name[name]
        nodes = max(1, len(entry["inbound_nodes"]))
        if isinstance(layer, keras.layers.InputLayer):
            last = name
            entries.append(entry)
        else:
            new = replace(layer)
            last = new.name
            entries.append({**keras.layers.serialize(new), "name": last, "inbound_nodes": entry["inbound_nodes"]})
        for extra in insert_after(name):
            inserted.add(extra.name)
            entries.append({**keras.layers.serialize(extra), "name": extra.name,
                            "inbound_nodes": [[[last, i, 0, {}]] for i in range(nodes)]})
            last = extra.name
        if last != name:
            renames.update({(name, i): last for i in range(nodes)})

    def rename(ref):
        if not isinstance(ref, list) or len(ref) < 3 or not isinstance(ref[0], str):
            raise ValueError(f"unexpected Keras 2 inbound node {ref!r}; quantize this model with Keras 3")
        return [renames.get((ref[0], ref[1]), ref[0]), *ref[1:]]

    for entry in entries:
        if entry["name"] not in inserted:
            entry["inbound_nodes"] = [[rename(ref) for ref in node] for node in entry["inbound_nodes"]]
    config = {**config, "name": name, "layers": entries,
              "output_layers": [rename(ref) for ref in config["output_layers"]]}
    # A user's layer class that is not registered with Keras is found by its class name.
    custom = {type(layer).__name__: type(layer) for layer in model.layers}
    return keras.Model.from_config(config, custom_objects=custom)


def copy_weights(model, new) -> None:
    by_name = {}
    for layer in new.layers:
        if isinstance(layer, QuantizationWrapper):
            by_name[layer.layer.name] = layer
        else:
            by_name[layer.name] = layer
    for layer in model.layers:
        target = by_name.get(layer.name)
        if target is not None and layer.weights:
            target.set_weights(layer.get_weights())
