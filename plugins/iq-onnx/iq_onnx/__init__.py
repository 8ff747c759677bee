"""ONNX export of quantized Keras models: QuantizeLinear/DequantizeLinear (QDQ) with the quantizers' exact scales.

    iqcore export model.keras model.onnx          # or iqcore.keras.export(model, "model.onnx")

How the file is built (docs/onnx.md):

* tf2onnx converts the model's inference function. Each :class:`~iqcore.keras.ActivationQuantizationHolder`
  computes TensorFlow's ``FakeQuantWithMinMaxVars`` op in a graph; a handler given to tf2onnx turns each such op
  into ``QuantizeLinear -> DequantizeLinear`` (int8) with exactly the holder's ``quantization_params()`` scale
  and zero point, after a ``Clip`` to the grid's range when the grid has fewer than 256 codes (fewer than 8
  bits, or a narrow range). tf2onnx's own handler is not used: it recomputes the scale in float (one ulp off
  for many ranges) and refuses narrow ranges and other bit widths.
* The weights of each :class:`~iqcore.keras.QuantizationWrapper` are already on their quantizer's grid; after
  the conversion each one is found among the ONNX initializers (in the layout the converter gave it: a
  transposed convolution kernel, a depthwise kernel reshaped to ``[C*M, 1, kh, kw]``...) and replaced by int8
  codes (``quantizer.to_int``) and a ``DequantizeLinear`` with the quantizer's scales and zero points, per axis
  where the quantizer is per channel. The dequantized weights are checked to equal the converted ones bit for
  bit. Biases stay float.

Only :mod:`iqcore.plugin` and :mod:`iqcore.keras` (public API) are used.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from iqcore import plugin

__all__ = ["DEFAULT_OPSET", "Agreement", "agreement", "export_onnx", "export_onnx_tf_rounding", "register_exporters",
           "to_onnx"]

#: The ONNX opset written by default (per-axis DequantizeLinear needs 13 or newer; tf2onnx 1.16/1.17 know up
#: to 18).
DEFAULT_OPSET = 17

_FAKE_QUANT_OPS = ("FakeQuantWithMinMaxVars", "FakeQuantWithMinMaxArgs")


# -- activation holders: the FakeQuant handler given to tf2onnx ------------------------------------------------
def _grid_key(num_bits: int, narrow_range: bool, low, high) -> tuple:
    """What a FakeQuant op computes: two ops with the same key compute the same grid."""
    return (int(num_bits), bool(narrow_range), np.float32(np.asarray(low).reshape(-1)[0]).tobytes(),
            np.float32(np.asarray(high).reshape(-1)[0]).tobytes())


@dataclass
class _Activations:
    """The model's holders by the FakeQuant op they compute, and what the conversion found."""

    tf_rounding: bool = False
    by_key: dict[tuple, list] = field(default_factory=dict)
    converted: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


def _activation_plan(holders, tf_rounding: bool) -> _Activations:
    plan = _Activations(tf_rounding=tf_rounding)
    for h in holders:
        q = h.quantizer
        g = q.grid
        params = q.quantization_params()
        where = f"layer {h.name!r} (ActivationQuantizationHolder)"
        if params.axis is not None or np.asarray(params.scale).size != 1:
            raise ValueError(f"{where}: its quantizer is per channel; allowed for ONNX export: per-tensor holders")
        if int(params.qmin) < -128 or int(params.qmax) > 127:
            raise ValueError(f"{where}: {g.num_bits}-bit activations do not fit int8 QuantizeLinear; allowed for "
                             "ONNX export: 2..8 bits")
        plan.by_key.setdefault(_grid_key(g.num_bits, g.narrow_range, g.min, g.max), []).append(h)
    return plan


def _fake_quant_handler(ctx, node, name, args):
    """tf2onnx handler: a FakeQuant op of a holder -> [Clip ->] QuantizeLinear -> DequantizeLinear, exact."""
    from onnx import TensorProto
    from tf2onnx import utils

    plan: _Activations = args[0]
    if node.type == "FakeQuantWithMinMaxVars":
        if not (node.inputs[1].is_const() and node.inputs[2].is_const()):
            plan.problems.append(f"op {node.name!r}: FakeQuantWithMinMaxVars with a non-constant range")
            raise ValueError(plan.problems[-1])
        low, high = node.inputs[1].get_tensor_value(as_list=False), node.inputs[2].get_tensor_value(as_list=False)
    else:
        low, high = node.get_attr("min").f, node.get_attr("max").f
    key = _grid_key(node.get_attr("num_bits").i, node.get_attr("narrow_range").i, low, high)
    holders = plan.by_key.get(key)
    if not holders:
        plan.problems.append(f"op {node.name!r}: a {node.type} op that no ActivationQuantizationHolder of the model "
                             f"computes (range [{float(np.asarray(low).reshape(-1)[0])}, "
                             f"{float(np.asarray(high).reshape(-1)[0])}])")
        raise ValueError(plan.problems[-1])
    plan.converted.update(h.name for h in holders)
    params = holders[0].quantizer.quantization_params()  # same key: same grid, same parameters
    scale = np.asarray(params.scale, np.float32).reshape(())
    zero_point = np.asarray(params.zero_point).astype(np.int8).reshape(())
    qmin, qmax = int(params.qmin), int(params.qmax)
    dtype, shape = ctx.get_dtype(node.input[0]), ctx.get_shape(node.input[0])
    x = node.input[0]
    base = node.name

    def const(suffix, value):
        return ctx.make_const(utils.make_name(f"{base}_iqcore_{suffix}"), np.asarray(value, np.float32)).output[0]

    def op(op_type, *inputs):
        return ctx.make_node(op_type, list(inputs), op_name_scope=base, shapes=[shape], dtypes=[dtype]).output[0]

    if plan.tf_rounding:  # TensorFlow's kernel, op for op: rounding ties up, as FakeQuant does, not to even
        g = holders[0].quantizer.grid
        g_scale, g_min = np.float32(g.scale.reshape(-1)[0]), np.float32(g.nudged_min.reshape(-1)[0])
        x = op("Min", op("Max", x, const("nudged_min", g_min)), const("nudged_max", g.nudged_max.reshape(-1)[0]))
        x = op("Div", op("Sub", x, const("shift", g_min)), const("step", g_scale))
        x = op("Floor", op("Add", op("Sub", x, const("quant_zero", g.quant_zero.reshape(-1)[0])), const("half", 0.5)))
        x = op("Mul", x, const("steps_scale", g_scale))
    elif (qmin, qmax) != (-128, 127):  # fewer codes than int8 has: clamp to the grid's own range first
        x = op("Clip", x, const("min", np.float32(qmin - int(zero_point)) * scale),
               const("max", np.float32(qmax - int(zero_point)) * scale))
    s = ctx.make_const(utils.make_name(f"{base}_iqcore_scale"), scale)
    z = ctx.make_const(utils.make_name(f"{base}_iqcore_zero_point"), zero_point)
    quant = ctx.make_node("QuantizeLinear", [x, s.output[0], z.output[0]], op_name_scope=base, shapes=[shape],
                          dtypes=[TensorProto.INT8])
    output = node.output[0]
    ctx.remove_node(node.name)
    dequant = ctx.make_node("DequantizeLinear", [quant.output[0], s.output[0], z.output[0]], op_name_scope=base,
                            shapes=[shape], dtypes=[dtype])
    ctx.replace_all_inputs(output, dequant.output[0])
    return dequant


# -- wrapped weights: int8 initializers + DequantizeLinear --------------------------------------------------------
@dataclass
class _Weight:
    where: str
    values: np.ndarray  # float32, on the quantizer's grid
    codes: np.ndarray  # int8, same shape
    scale: np.ndarray  # float32, one per channel (or 0-d)
    zero_point: np.ndarray  # int8, same shape as scale
    axis: int | None


def _weight_plan(wrappers) -> list[_Weight]:
    weights = []
    for w in wrappers:
        if not w.built:
            raise ValueError(f"layer {w.name!r} (QuantizationWrapper) is not built; allowed: a built model (call it "
                             "once or give it an Input)")
        variables = w.quantized_variables()
        for name, q in w.weights_quantizers.items():
            where = f"layer {w.name!r} ({type(w.layer).__name__}) weight {name!r}"
            params = q.quantization_params()
            if int(params.qmin) < -128 or int(params.qmax) > 127:
                raise ValueError(f"{where}: {q.grid.num_bits}-bit codes do not fit int8; allowed for ONNX export: "
                                 "weights quantizers of 2..8 bits")
            values = np.asarray(variables[name].numpy(), np.float32)
            codes = np.asarray(q.to_int(values).numpy()).astype(np.int8)
            axis = None if params.axis is None else int(params.axis)
            weights.append(_Weight(where, values, codes, np.asarray(params.scale, np.float32),
                                   np.asarray(params.zero_point).astype(np.int8), axis))
    return weights


def _channel_index(weight: _Weight) -> np.ndarray:
    """For each element of the weight, the index of its quantizer channel (0 everywhere per tensor)."""
    if weight.axis is None:
        return np.zeros(weight.values.shape, np.int64)
    shape = [1] * weight.values.ndim
    shape[weight.axis] = weight.values.shape[weight.axis]
    return np.broadcast_to(np.arange(shape[weight.axis]).reshape(shape), weight.values.shape)


def _layout(weight: _Weight, target: np.ndarray, sorted_target: np.ndarray, sorted_weight: np.ndarray):
    """``(permutation, onnx axis, channel of each index along it)`` such that
    ``weight.values.transpose(permutation).reshape(target.shape) == target`` and the channels vary along one
    axis only; None if no permutation does."""
    if not np.array_equal(sorted_target, sorted_weight):  # cheap test first: the same values in any layout
        return None
    index = _channel_index(weight)
    for perm in itertools.permutations(range(weight.values.ndim)):
        if not np.array_equal(weight.values.transpose(perm).reshape(target.shape), target):
            continue
        moved = index.transpose(perm).reshape(target.shape)
        if weight.axis is None:
            return perm, None, None
        for axis in range(target.ndim):
            rows = np.moveaxis(moved, axis, 0).reshape(target.shape[axis], -1)
            if np.all(rows == rows[:, :1]):
                return perm, axis, rows[:, 0]
    return None


def _attach_weights(model_proto, weights: list[_Weight]) -> None:
    """Replace each wrapped weight's float initializer by int8 codes and a DequantizeLinear with exact scales."""
    from onnx import helper, numpy_helper

    graph = model_proto.graph
    arrays = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    arrays = {name: a for name, a in arrays.items() if a.dtype == np.float32}
    sorted_arrays: dict[str, np.ndarray] = {}
    done: dict[str, str] = {}
    new_nodes = []
    for weight in weights:
        found = None
        sorted_weight = np.sort(weight.values, axis=None)
        for init_name, array in arrays.items():
            if init_name in done or array.size != weight.values.size:
                continue
            if init_name not in sorted_arrays:
                sorted_arrays[init_name] = np.sort(array, axis=None)
            layout = _layout(weight, array, sorted_arrays[init_name], sorted_weight)
            if layout is not None:
                found = init_name, layout
                break
        if found is None:
            raise ValueError(f"{weight.where}: the converted graph holds no tensor equal to the quantized weight "
                             "(the converter folded it into another op), so its scales cannot be attached; allowed: "
                             "layers whose weights reach the ONNX graph unchanged (Conv1D/2D/3D, DepthwiseConv2D, "
                             "Conv2DTranspose, Dense)")
        init_name, (perm, axis, channels) = found
        target = arrays[init_name]
        codes = weight.codes.transpose(perm).reshape(target.shape)
        shape = [1] * target.ndim
        if axis is None:
            scale, zero_point = weight.scale.reshape(()), weight.zero_point.reshape(())
        else:
            scale, zero_point = weight.scale.reshape(-1)[channels], weight.zero_point.reshape(-1)[channels]
            shape[axis] = -1
        check_scale, check_zero = scale.reshape(shape), zero_point.reshape(shape)
        back = ((codes.astype(np.int32) - check_zero.astype(np.int32)).astype(np.float32) * check_scale)
        if not np.array_equal(back.astype(np.float32), target):
            raise RuntimeError(f"{weight.where}: the int8 codes and scales do not give back the weight bit for bit")
        prefix = f"iqcore/{init_name}"
        graph.initializer.extend([
            numpy_helper.from_array(codes.astype(np.int8), f"{prefix}/codes"),
            numpy_helper.from_array(np.asarray(scale, np.float32), f"{prefix}/scale"),
            numpy_helper.from_array(np.asarray(zero_point, np.int8), f"{prefix}/zero_point"),
        ])
        attrs: dict[str, Any] = {} if axis is None else {"axis": axis}
        # The DequantizeLinear's output takes the float initializer's name: its consumers are unchanged.
        new_nodes.append(helper.make_node("DequantizeLinear", [f"{prefix}/codes", f"{prefix}/scale",
                                                               f"{prefix}/zero_point"], [init_name],
                                          name=f"{prefix}/DequantizeLinear", **attrs))
        done[init_name] = weight.where
    kept = [init for init in graph.initializer if init.name not in done]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = new_nodes + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)


# -- conversion --------------------------------------------------------------------------------------------------
def _layer_of(op_name: str, names: set[str], skip: str) -> str | None:
    """The Keras layer an op of the traced function belongs to, from its name scopes (``model/layer_1/op``)."""
    for part in op_name.split("/"):
        for candidate in (part, re.sub(r"_\d+$", "", part)):
            if candidate in names and candidate != skip:
                return candidate
    return None


def _input_signature(model):
    import tensorflow as tf

    inputs = getattr(model, "inputs", None)
    if not inputs:
        raise ValueError(f"model {getattr(model, 'name', model)!r} has no defined inputs; allowed: a functional or "
                         "Sequential model built on an Input")
    spec = []
    for i, x in enumerate(inputs):
        shape = [None, *list(x.shape)[1:]]
        spec.append(tf.TensorSpec(shape, tf.as_dtype(getattr(x, "dtype", "float32")), name=f"input_{i}"))
    return spec


def to_onnx(model, *, opset: int = DEFAULT_OPSET, rounding: str = "onnx"):
    """Convert a quantized Keras model to an ONNX ``ModelProto`` with QDQ nodes carrying the exact scales.

    Args:
        model: A built Keras model (functional or Sequential) holding QuantizationWrapper and
            ActivationQuantizationHolder layers.
        opset: The ONNX opset (13..18).
        rounding: ``"onnx"``: each holder is ``[Clip ->] QuantizeLinear -> DequantizeLinear``, which rounds ties
            to even (the ONNX rule) where TensorFlow's FakeQuant rounds them up; the form integer runtimes fuse.
            ``"tensorflow"``: TensorFlow's kernel arithmetic (Max, Min, Sub, Div, Sub, Add 0.5, Floor, Mul) before
            each QuantizeLinear, so that a float runtime computes what the Keras model computes, ties included.

    Returns:
        The ONNX model (``onnx.ModelProto``), checked with ``onnx.checker``.

    Raises:
        ValueError: For a model or layer the exporter or the converter cannot handle (the message names the
            layer): weights or activations of more than 8 bits, an op tf2onnx has no converter for, a weight the
            converter folded into another op, a holder whose quantizer is not TensorFlow's fake-quant op.
    """
    import onnx
    import tensorflow as tf
    import tf2onnx

    from iqcore import keras as iqkeras

    if rounding not in ("onnx", "tensorflow"):
        raise ValueError(f"rounding is {rounding!r}; allowed: 'onnx', 'tensorflow'")
    if not 13 <= int(opset) <= 18:
        raise ValueError(f"opset is {opset!r}; allowed: 13..18 (per-axis DequantizeLinear needs 13)")
    layers = iqkeras.flatten_layers(model)
    wrappers = [x for x in layers if isinstance(x, iqkeras.QuantizationWrapper)]
    holders = [x for x in layers if isinstance(x, iqkeras.ActivationQuantizationHolder)]
    weights = _weight_plan(wrappers)
    activations = _activation_plan(holders, rounding == "tensorflow")
    spec = _input_signature(model)

    @tf.function
    def forward(*xs):
        with iqkeras.deployment_form(model):  # integer-simulating layers as the float graph ONNX quantizes
            return model(list(xs) if len(xs) > 1 else xs[0], training=False)

    # tf2onnx's handler table: (function, [ONNX op type to rename the node to (None: keep), *args])
    handlers = {op: (_fake_quant_handler, [None, activations]) for op in _FAKE_QUANT_OPS}
    names = {x.name for x in layers}
    logger = logging.getLogger("tf2onnx")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # its own error log repeats what is raised below
    try:
        model_proto, _ = tf2onnx.convert.from_function(forward, input_signature=spec, opset=int(opset),
                                                       custom_op_handlers=handlers)
    except Exception as e:
        if activations.problems:
            problem = activations.problems[0]
            layer = _layer_of(problem.split("'")[1], names, model.name)
            raise ValueError(f"layer {layer!r}: {problem}; allowed: ActivationQuantizationHolder outputs on "
                             "TensorFlow's fake-quant grid") from None
        raise ValueError(f"model {model.name!r}: tf2onnx {tf2onnx.__version__} failed: {e}") from e
    finally:
        logger.setLevel(level)
    unknown = [n for n in model_proto.graph.node if not onnx.defs.has(n.op_type, n.domain or "")]
    if unknown:
        n = unknown[0]
        layer = _layer_of(n.name, names, model.name)
        raise ValueError(f"layer {layer!r}: tf2onnx {tf2onnx.__version__} has no ONNX conversion for the TensorFlow "
                         f"op {n.op_type!r} ({n.name}); allowed: layers made of ops tf2onnx converts "
                         f"({len(unknown)} unconverted op(s) in all)")
    missing = [h.name for h in holders if h.name not in activations.converted]
    if missing:
        raise ValueError(f"layer {missing[0]!r}: no FakeQuant op of this ActivationQuantizationHolder reached the "
                         "converted graph (its quantizer does not compute with TensorFlow's fake-quant op, or the "
                         "converter removed it); allowed: holders of fake-quant methods (pot, symmetric, uniform)")
    _attach_weights(model_proto, weights)
    model_proto.producer_name = "iqcore iq-onnx"
    onnx.checker.check_model(model_proto)
    return model_proto


def export_onnx(model, path) -> None:
    """The ``onnx`` exporter: :func:`to_onnx` written to ``path``."""
    import onnx

    onnx.save(to_onnx(model), os.fspath(path))


def export_onnx_tf_rounding(model, path) -> None:
    """The ``onnx_tf_rounding`` exporter: :func:`to_onnx` with ``rounding="tensorflow"`` written to ``path``."""
    import onnx

    onnx.save(to_onnx(model, rounding="tensorflow"), os.fspath(path))


# -- agreement with the Keras model -------------------------------------------------------------------------------
@dataclass
class Agreement:
    """How an ONNX file's outputs compare with the Keras model's, in steps of the output holder's grid."""

    outputs: int
    max_steps: float
    off: int
    step: float | None
    max_abs: float

    @property
    def percent_off(self) -> float:
        return 100.0 * self.off / max(self.outputs, 1)


def agreement(model, onnx_model, data, *, optimized: bool = False) -> Agreement:
    """Run ``onnx_model`` (a path, bytes or ModelProto) in onnxruntime on ``data`` and compare with ``model``.

    The difference is counted in steps of the grid of the holder that produces the model's (first) output when
    there is one (``step``), else in absolute values (``step`` None, ``max_steps`` then equals ``max_abs``).
    ``optimized`` runs onnxruntime with all graph optimizations (it may fuse QDQ groups into integer kernels);
    by default none, so that the file's own ops run as written.
    """
    import onnxruntime as ort

    from iqcore import keras as iqkeras

    if not isinstance(onnx_model, (str, bytes, os.PathLike)):
        onnx_model = onnx_model.SerializeToString()
    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimized
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    session = ort.InferenceSession(os.fspath(onnx_model) if isinstance(onnx_model, os.PathLike) else onnx_model,
                                   options, providers=["CPUExecutionProvider"])
    x = np.asarray(data, np.float32)
    got = np.asarray(session.run(None, {session.get_inputs()[0].name: x})[0], np.float64)
    want = np.asarray(model(x, training=False), np.float64)
    last = model.layers[-1]
    step = None
    if isinstance(last, iqkeras.ActivationQuantizationHolder):
        step = float(np.asarray(last.quantizer.quantization_params().scale).reshape(-1)[0])
    diff = np.abs(got - want)
    steps = diff / step if step else diff
    return Agreement(outputs=int(diff.size), max_steps=float(np.round(steps.max(initial=0.0), 6)),
                     off=int(np.count_nonzero(diff)), step=step, max_abs=float(diff.max(initial=0.0)))


@plugin.hookimpl
def register_exporters(register):
    register(plugin.Exporter("onnx", export_onnx, ".onnx",
                             "ONNX (tf2onnx) with QuantizeLinear/DequantizeLinear carrying the quantizers' exact "
                             "scales and zero points"))
    # No suffix: chosen by name only (`iqcore export m.keras m.onnx --format onnx_tf_rounding`).
    register(plugin.Exporter("onnx_tf_rounding", export_onnx_tf_rounding, "",
                             "ONNX as 'onnx', with TensorFlow's round-half-up arithmetic before each QuantizeLinear "
                             "(bit-exact in a float runtime; not fusable into integer kernels)"))
