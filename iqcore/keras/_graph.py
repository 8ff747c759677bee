"""Model surgery for :func:`iqcore.keras.quantize_model`: the layer graph of a Sequential or Functional model,
and its rebuild with layers replaced and new layers inserted after others."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable

import tensorflow as tf

from iqcore.keras._integer import IntegerConstantOperation
from iqcore.keras._layers import KERAS_3, QuantizationWrapper

keras = tf.keras


def input_names(model) -> list[str]:
    """The names of the model's input layers, in input order."""
    return [t._keras_history[0].name for t in model.inputs]


def nodes(model) -> list:
    """The model's layers and, on Keras 3, the ``keras.ops`` operations of its graph (``x + 3`` on a tensor),
    which are nodes of a Functional model without being layers."""
    if not KERAS_3:
        return list(model.layers)
    return list(model.layers) + [op for op in getattr(model, "operations", [])
                                 if not isinstance(op, keras.layers.Layer)]


def graph(model):
    """``(producers, consumers)``: node name -> names of the nodes (layers and operations) feeding it / fed by
    it."""
    producers: dict[str, list[str]] = {}
    consumers: dict[str, list[str]] = {}
    for layer in nodes(model):
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


def operation_names(model) -> set[str]:
    """The names of a Keras 3 Functional model's ``keras.ops`` operations (nodes that are not layers)."""
    if not KERAS_3:
        return set()
    return {op.name for op in getattr(model, "operations", []) if not isinstance(op, keras.layers.Layer)}


def operation_arguments(op) -> tuple:
    """The positional arguments a Functional model called the operation ``op`` with (tensors and constants): a
    Keras 3 ``keras.ops`` operation, or a Keras 2 ``TFOpLambda``; ``()`` when it was called more than once."""
    called = getattr(op, "_inbound_nodes", [])
    if len(called) != 1:
        return ()
    return tuple(called[0].arguments.args) if KERAS_3 else tuple(called[0].call_args)


def rebuild(model, replace, insert_after, name=None, drop=frozenset(), constants=None):
    """A copy of a Sequential or Functional model with each layer replaced by ``replace(layer)`` and the layers
    ``insert_after(name)`` (fresh instances) chained after each layer or model input named ``name``.

    The layers named in ``drop`` (each with a single input) are left out: their input goes where their output
    went (layers ``insert_after`` gives for them are still chained there). ``constants`` (Keras 3 Functional
    models) maps a layer or operation name to ``{position: weights quantizer}``: that node's constant operands
    at those positions move into a :class:`QuantizationWrapper` of the node.
    """
    constants = constants or {}
    names = input_names(model)
    if isinstance(model, keras.Sequential):
        inputs = keras.Input(shape=model.inputs[0].shape[1:], dtype=model.inputs[0].dtype, name=names[0])
        x = _chain(inputs, insert_after(names[0]))
        for layer in model.layers:
            x = _chain(x if layer.name in drop else replace(layer)(x), insert_after(layer.name))
        return keras.Model(inputs, x, name=name or model.name)
    if not KERAS_3:
        return _rebuild_functional_keras2(model, replace, insert_after, name or model.name, drop)
    inputs = [keras.Input(shape=t.shape[1:], dtype=t.dtype, name=n) for t, n in zip(model.inputs, names, strict=True)]
    chained = {id(t): _chain(t, insert_after(n)) for t, n in zip(inputs, names, strict=True)}

    def call(layer, *args, **kwargs):
        args = tf.nest.map_structure(lambda t: chained.get(id(t), t), args)
        original = layer.layer.name if isinstance(layer, QuantizationWrapper) else layer.name
        if original in drop:
            return _chain(tf.nest.flatten(args)[0], insert_after(original))
        if original in constants:
            return _chain(_wrap_constants(layer, original, constants[original], args, kwargs),
                          insert_after(original))
        if isinstance(layer, IntegerConstantOperation):  # holds the operation's constant operand itself
            args = tuple(a for a in args if isinstance(a, keras.KerasTensor))
        return _chain(layer(*args, **_accepted(layer, kwargs)), insert_after(original))

    structure = tf.nest.pack_sequence_as(model.input, inputs)
    new = keras.models.clone_model(model, input_tensors=structure, clone_function=replace, call_function=call)
    return keras.Model(new.input, new.output, name=name or model.name)


def _wrap_constants(layer, name: str, quantizers: dict, args: tuple, kwargs: dict):
    """Call a :class:`QuantizationWrapper` of ``layer`` holding the constant operands of ``args`` that
    ``quantizers`` names by position, on the remaining (tensor) operands."""
    as_list = len(args) == 1 and isinstance(args[0], (list, tuple))
    operands = list(args[0]) if as_list else list(args)
    values = {}
    for pos in quantizers:
        if not 0 <= pos < len(operands) or isinstance(operands[pos], keras.KerasTensor):
            kinds = ["tensor" if isinstance(o, keras.KerasTensor) else "constant" for o in operands]
            raise ValueError(f"weights_quantizers[{name!r}] names operand {pos}, but {name!r} has operands {kinds}; "
                             "allowed: the positions of its constant operands")
        values[pos] = operands[pos]
    tensors = [o for i, o in enumerate(operands) if i not in values]
    wrapper = QuantizationWrapper(layer, quantizers, values, op_call_kwargs=kwargs, is_inputs_as_list=as_list,
                                  name=f"{name}_quantized")
    return wrapper(tensors if as_list or len(tensors) != 1 else tensors[0])


def _accepted(layer, kwargs: dict) -> dict:
    """The call arguments ``layer`` takes: a replacement of another class (a 1x1 convolution for a batch norm)
    does not take the ``mask`` Keras passed to the original."""
    target = layer.layer if isinstance(layer, QuantizationWrapper) else layer
    params = inspect.signature(target.call).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def _chain(x, layers):
    for layer in layers:
        x = layer(x)
    return x


def _rebuild_functional_keras2(model, replace, insert_after, name, drop):
    """Keras 2: rewrite the Functional config (layer entries with ``[[name, node, tensor, kwargs], ...]``
    inbound nodes), replacing, dropping and inserting layers, and rebuild it with ``Model.from_config``."""
    config = model.get_config()
    by_name = {layer.name: layer for layer in model.layers}
    entries, inserted = [], set()
    renames: dict[tuple[str, int], tuple[str, int, int | None]] = {}

    def is_ref(obj) -> bool:
        return (isinstance(obj, list) and len(obj) >= 3 and isinstance(obj[0], str) and obj[0] in by_name
                and isinstance(obj[1], int) and isinstance(obj[2], int))

    def rename(obj):
        """``obj`` with every tensor reference ``[layer, node, tensor, ...]`` in it renamed: a plain inbound
        node, or a TF op's (``TFOpLambda``) arguments, where references nest in lists and keyword dicts."""
        if is_ref(obj):
            new = renames.get((obj[0], obj[1]))
            rest = [rename(x) for x in obj[3:]]
            if new is None:
                return [*obj[:3], *rest]
            return [new[0], new[1], obj[2] if new[2] is None else new[2], *rest]
        if isinstance(obj, list):
            return [rename(x) for x in obj]
        if isinstance(obj, dict):
            return {k: rename(v) for k, v in obj.items()}
        return obj

    def first_ref(node):
        """The first tensor reference of an inbound node (its layer's main input)."""
        while isinstance(node, list) and node and not is_ref(node):
            node = node[0]
        if not is_ref(node):
            raise ValueError(f"unexpected Keras 2 inbound node {node!r}; quantize this model with Keras 3")
        return node

    for entry in config["layers"]:
        layer_name = entry["name"]
        layer = by_name[layer_name]
        nodes = max(1, len(entry["inbound_nodes"]))
        sources = [[layer_name, i, 0] for i in range(nodes)]
        if isinstance(layer, keras.layers.InputLayer):
            entries.append(entry)
        elif layer_name in drop:  # its consumers read its (already renamed) input instead
            sources = [rename(first_ref(node))[:3] for node in entry["inbound_nodes"]]
            renames.update({(layer_name, i): tuple(source) for i, source in enumerate(sources)})
        else:
            new = replace(layer)
            inbound = entry["inbound_nodes"]
            if isinstance(new, IntegerConstantOperation):  # holds the TF op's constant operand itself
                inbound = [[[*first_ref(node)[:3], {}]] for node in inbound]
            inbound = rename(inbound)
            entries.append({**keras.layers.serialize(new), "name": new.name, "inbound_nodes": inbound})
            sources = [[new.name, i, 0] for i in range(nodes)]
            if new.name != layer_name:
                renames.update({(layer_name, i): (new.name, i, None) for i in range(nodes)})
        for extra in insert_after(layer_name):
            inserted.add(extra.name)
            entries.append({**keras.layers.serialize(extra), "name": extra.name,
                            "inbound_nodes": [[[*source, {}]] for source in sources]})
            sources = [[extra.name, i, 0] for i in range(len(sources))]
            renames.update({(layer_name, i): (extra.name, i, 0) for i in range(len(sources))})

    config = {**config, "name": name, "layers": entries,
              "output_layers": [rename(ref) for ref in config["output_layers"]]}
    # A user's layer class that is not registered with Keras is found by its class name.
    custom = {type(layer).__name__: type(layer) for layer in model.layers}
    return keras.Model.from_config(config, custom_objects=custom)


def copy_weights(model, new, skip=frozenset()) -> None:
    """Set each layer of ``new`` to the weights of ``model``'s layer of the same name (except ``skip``)."""
    by_name = {}
    for layer in new.layers:
        if isinstance(layer, QuantizationWrapper):
            by_name[layer.layer.name] = layer
        else:
            by_name[layer.name] = layer
    for layer in model.layers:
        target = by_name.get(layer.name)
        if target is not None and layer.weights and layer.name not in skip:
            target.set_weights(layer.get_weights())


@dataclasses.dataclass
class Rewrite:
    """Changes to a model that one :func:`rebuild` applies, so that several rewrites cost one rebuild.

    Attributes:
        replace: Layer name -> function of the old layer giving its replacement (other layers are cloned).
        drop: Names of single-input layers left out.
        after: Layer name -> functions giving the new layers chained after it, in order.
        weights: Layer name -> function ``(old model, new model)`` that sets that layer's weights in the new
            model (and those of the layers chained after it); the other layers' weights are copied by name.
    """

    replace: dict[str, Callable] = dataclasses.field(default_factory=dict)
    drop: frozenset[str] = frozenset()
    after: dict[str, list[Callable]] = dataclasses.field(default_factory=dict)
    weights: dict[str, Callable] = dataclasses.field(default_factory=dict)

    def touched(self) -> set[str]:
        return set(self.replace) | set(self.drop) | set(self.after)

    def __add__(self, other: Rewrite) -> Rewrite:
        overlap = self.touched() & other.touched()
        if overlap:
            raise ValueError(f"two model rewrites change the same layers {sorted(overlap)}")
        return Rewrite({**self.replace, **other.replace}, self.drop | other.drop, {**self.after, **other.after},
                       {**self.weights, **other.weights})

    def apply(self, model):
        """The rewritten copy of ``model``, or ``model`` itself when there is nothing to change."""
        if not self.touched():
            return model

        def replace(layer):
            return self.replace[layer.name](layer) if layer.name in self.replace else clone_layer(layer)

        new = rebuild(model, replace, lambda name: [make() for make in self.after.get(name, [])], drop=self.drop)
        copy_weights(model, new, skip=frozenset(self.weights))
        for set_weights in self.weights.values():
            set_weights(model, new)
        return new
