"""int8 TFLite conversion of quantized Keras models, and the checks that the file keeps the quantizers' grids.
Public names are re-exported by :mod:`iqcore.keras`."""

from __future__ import annotations

import contextlib
import tempfile
import warnings

import numpy as np
import tensorflow as tf

from iqcore._quantizer import InferableQuantizer
from iqcore.keras._export import is_transposed_conv, transposed_conv_problem
from iqcore.keras._layers import KERAS_3, ActivationQuantizationHolder, QuantizationWrapper, export_form
from iqcore.keras._metadata import add_tflite_metadata, get_metadata, read_tflite, write_tflite


def export_problem(var, q: InferableQuantizer) -> str | None:
    """Why a quantized weight cannot be stored as TFLite int8 (zero point 0, codes in [-127, 127]), or None."""
    g = q.grid
    if g.num_bits > 8:
        return f"num_bits is {g.num_bits}; allowed for TFLite int8 weights: 2..8"
    if np.any(g.zero_point != 0):
        return (f"zero points are {np.unique(g.zero_point).tolist()}; TFLite int8 weights need zero point 0 "
                "(use a symmetric or power-of-two weights quantizer)")
    codes = q.to_int(tf.convert_to_tensor(var)).numpy()
    if codes.min(initial=0) < -127:
        return ("a weight sits on code -128 (the value -threshold), outside TFLite's [-127, 127]; allowed: a "
                "quantizer with narrow_range=True (quantize_model's default)")
    return None


def flatten_layers(model) -> list:
    """Every layer inside ``model`` (nested models and wrappers included), depth first."""
    out = []
    stack = list(getattr(model, "layers", []))[::-1]
    while stack:
        layer = stack.pop()
        out.append(layer)
        inner = list(getattr(layer, "layers", []))
        if isinstance(layer, QuantizationWrapper):
            inner = [layer.layer]
        stack.extend(inner[::-1])
    return out


#: Wrapped layers :func:`to_tflite` exports (tested), and those it refuses.
TFLITE_LAYERS = ("Conv1D", "Conv2D", "DepthwiseConv2D", "Dense", "Conv1DTranspose", "Conv2DTranspose")


#: ``{wrapped layer: its TFLite op}`` for the layers :func:`to_tflite` refuses: TFLite's kernels for these ops
#: take float32 only, so no int8 file can hold them.
UNSUPPORTED_TFLITE = {"Conv3D": "CONV_3D", "Conv3DTranspose": "CONV_3D_TRANSPOSE"}


#: The narrowest activation range the converter keeps: it silently widens narrower ones (a holder's outputs
#: would then not be the file's).
MIN_ACTIVATION_RANGE = 1e-6


class FloatSectionWarning(UserWarning):
    """``to_tflite(allow_float=True)`` produced a file in which some activations stay float."""


def float_tensors(flatbuffer: bytes) -> list[str]:
    """Names of the activations computed in float in ``flatbuffer``: outputs of ops that are float32, and
    the outputs of DEQUANTIZE ops (model inputs and outputs excepted)."""
    reader = interpreter(flatbuffer)
    details = {d["index"]: d for d in reader.get_tensor_details()}
    io = {d["index"] for d in reader.get_input_details() + reader.get_output_details()}
    found = []
    for op in reader._get_ops_details():
        for index in op["outputs"]:
            d = details.get(int(index))
            if d is not None and int(index) not in io and d["dtype"] == np.float32:
                found.append(d["name"])
    return found


def _check_activation_ranges(model) -> None:
    for layer in flatten_layers(model):
        if not isinstance(layer, ActivationQuantizationHolder):
            continue
        g = layer.quantizer.grid
        width = float(g.nudged_max - g.nudged_min)
        if width < MIN_ACTIVATION_RANGE:
            raise ValueError(
                f"{layer.name}: its range [{float(g.nudged_min):.3g}, {float(g.nudged_max):.3g}] is narrower than "
                f"{MIN_ACTIVATION_RANGE:g}, which the TFLite converter widens silently (the file would not compute "
                "what the model computes); allowed: a wider range (calibrate on data that reaches it) or no holder "
                "there"
            )


def to_tflite(model, *, int8_io: bool = True, check: bool = True, allow_float: bool = False) -> bytes:
    """Convert a quantized Keras model to a fully int8 TFLite flatbuffer that keeps the quantizers' grids.

    Weights of every :class:`QuantizationWrapper` become int8 with exactly their quantizer's scales (zero point
    0, per channel where the quantizer is), activations take their :class:`ActivationQuantizationHolder`'s
    range. A Dense with per-channel weights becomes a 1x1 CONV_2D between two RESHAPEs; a Conv1DTranspose or
    Conv2DTranspose becomes an int8 TRANSPOSE_CONV (:func:`write_transposed_weights`).

    Args:
        model: A Keras model holding wrappers and holders (put a holder right after the input for int8 input).
        int8_io: Make the model's input and output int8 (else float32 with QUANTIZE/DEQUANTIZE ops).
        check: Re-open the flatbuffer and check every wrapped weight's scales and zero points against the
            quantizer's ``quantization_params()`` (RuntimeError on a difference).
        allow_float: Accept a file in which some activations stay float (listed in a
            :class:`FloatSectionWarning`); by default such a file is refused, naming them.

    Returns:
        The TFLite model as bytes.

    Raises:
        ValueError: If a weight cannot be int8 with zero point 0 (uniform weights with a zero point, more than
            8 bits, a code at -128), a wrapped layer has no int8 TFLite op (Conv3D, Conv3DTranspose; a dilated
            transposed convolution), a holder's range is narrower than the converter keeps, or (without
            ``allow_float``) some activations stay float; the message names the layer and the fix.
        RuntimeError: If ``check`` finds a scale that differs from the quantizer's, or the converter returns an
            empty file.
    """
    wrappers = [layer for layer in flatten_layers(model) if isinstance(layer, QuantizationWrapper)]
    for w in wrappers:
        if not w.built:
            raise ValueError(f"{w.name} is not built; allowed: a built model (call it once or give it an Input)")
        kind = type(w.layer).__name__
        if kind in UNSUPPORTED_TFLITE:
            raise ValueError(
                f"{w.name}: a wrapped {kind} cannot be exported to int8 TFLite: TFLite's {UNSUPPORTED_TFLITE[kind]} "
                f"kernel runs in float32 only; allowed: leave {w.layer.name!r} in float (quantize_model(..., "
                f"weights_quantizers={{{w.layer.name!r}: {{}}}}) and to_tflite(..., allow_float=True)), or the "
                f"layers {', '.join(TFLITE_LAYERS)}"
            )
        if kind == "Conv1DTranspose" and not KERAS_3:
            raise ValueError(f"{w.name}: a wrapped Conv1DTranspose cannot be exported to int8 TFLite on Keras 2: the "
                             "converter keeps Keras 2's conv1d_transpose filter in float; allowed: Keras 3, or leave "
                             f"{w.layer.name!r} in float with to_tflite(..., allow_float=True)")
        if is_transposed_conv(w.layer):
            problem = transposed_conv_problem(w.layer, w.weights_quantizers)
            if problem:
                raise ValueError(f"{w.name}: a wrapped {kind} cannot be exported to TFLite: {problem}")
        variables = w.quantized_variables()
        for name, q in w.weights_quantizers.items():
            problem = export_problem(variables[name], q)
            if problem:
                raise ValueError(f"{w.name}: weights_quantizers[{name!r}] cannot be exported to TFLite: {problem}")
    _check_activation_ranges(model)
    with export_form(wrappers), deployment_form(model):
        converter = _converter(model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        flatbuffer = converter.convert()
    if not flatbuffer:
        raise RuntimeError("the TFLite converter returned an empty file (run with TF_CPP_MIN_LOG_LEVEL=0 for its log)")
    if any(is_transposed_conv(w.layer) for w in wrappers):
        flatbuffer = write_transposed_weights(flatbuffer, model)
    flatbuffer = restore_scales(restore_activation_scales(flatbuffer, model), model)
    metadata = get_metadata(model)
    if metadata:  # the model's metadata goes into the file's metadata table
        flatbuffer = add_tflite_metadata(flatbuffer, metadata)
    if check:
        check_tflite(flatbuffer, model)
    floats = float_tensors(flatbuffer)
    if floats:
        shown = ", ".join(floats[:5]) + (f" and {len(floats) - 5} more" if len(floats) > 5 else "")
        message = (f"{len(floats)} activations stay float in the TFLite file ({shown}): an op the converter "
                   "cannot run in int8, or a layer without a holder after it")
        if not allow_float:
            raise ValueError(f"{message}; allowed: to_tflite(..., allow_float=True) to accept float sections")
        warnings.warn(message, FloatSectionWarning, stacklevel=2)
    return flatbuffer


@contextlib.contextmanager
def deployment_form(model):
    """Within the block, the layers of ``model`` that simulate a runtime's integer arithmetic (wrappers with an
    :class:`~iqcore.keras.IntegerSimulation`, :class:`~iqcore.keras.IntegerAdd`) compute in float on grid
    values, the graph that converters (TFLite, ONNX) turn into int8 ops."""
    simulating = [layer for layer in flatten_layers(model) if hasattr(layer, "_deploy")]
    for layer in simulating:
        layer._deploy = True
    try:
        yield
    finally:
        for layer in simulating:
            layer._deploy = False


def _converter(model) -> tf.lite.TFLiteConverter:
    """The TFLite converter for ``model``.

    TF 2.16's ``from_keras_model`` aborts the whole process on Keras 3 models ("missing attribute 'value'"
    on a ReadVariableOp, then "LLVM ERROR: Failed to infer result type(s)"); exporting a SavedModel first
    and converting that works there.
    """
    if tf.__version__.startswith("2.16.") and hasattr(model, "export"):
        folder = tempfile.mkdtemp(prefix="iqcore-tflite-")
        model.export(folder)
        return tf.lite.TFLiteConverter.from_saved_model(folder)
    return tf.lite.TFLiteConverter.from_keras_model(model)


def output_channel_scales(wrapper, name, stored: int) -> np.ndarray:
    """One scale per output channel of a wrapped weight with ``stored`` output channels (as TFLite stores it,
    and as the bias is laid out): the quantizer's scales, each repeated per depthwise multiplier; one scale (per
    tensor, or one channel) stands for every channel."""
    scale = np.repeat(wrapper.weights_quantizers[name].grid.scale.reshape(-1), _export_repeat(wrapper, name))
    return np.repeat(scale, stored) if scale.size == 1 and stored > 1 else scale


def restore_scales(flatbuffer: bytes, model) -> bytes:
    """Write the quantizers' exact scales over weight scales the converter derived one float32 ulp off.

    The converter derives each weight scale from the FakeQuant range in float32; for about one channel in a
    hundred no float32 range gives back a non-power-of-two scale exactly (:func:`symmetric_bound`). The int8
    weights are the same either way (each is ``code * scale`` to within far less than half a step); only the
    stored scale vector is replaced, where its bytes occur exactly once in the file. Anything else is left for
    :func:`check_tflite` to report.
    """
    buffer = bytearray(flatbuffer)
    tensors = tflite_weight_tensors(flatbuffer, model)
    for w in (layer for layer in flatten_layers(model) if isinstance(layer, QuantizationWrapper)):
        for name in w.weights_quantizers:
            d = tensors.get((w.name, name))
            if d is None:
                continue
            got = d["quantization_parameters"]["scales"].astype("<f4")
            want = output_channel_scales(w, name, got.size).astype("<f4")
            if got.shape != want.shape or np.array_equal(got, want):
                continue
            if np.any(np.abs(got.astype(np.float64) / want - 1) > 2.0**-22):
                continue  # not an ulp: a real difference, reported by check_tflite
            old = got.tobytes()
            if buffer.count(old) == 1:
                start = buffer.find(old)
                buffer[start:start + len(old)] = want.tobytes()
    return bytes(buffer)


def restore_activation_scales(flatbuffer: bytes, model) -> bytes:
    """Give each int8 activation tensor whose scale is within two float32 ulps of a holder's scale (with the
    same zero point) that holder's exact scale.

    The converter derives an activation's scale from its FakeQuant range in another precision than
    TensorFlow's kernel, and lands one ulp away about once in a few tensors; the interpreter's requantization
    multipliers (``input scale * weight scale / output scale``) then differ from the ones the holders define,
    and values within a few millionths of a step of a half step round the other way.
    """
    from tensorflow.lite.python import schema_py_generated as schema

    exact: dict[int, list[np.float32]] = {}
    for h in (layer for layer in flatten_layers(model) if isinstance(layer, ActivationQuantizationHolder)):
        p = h.quantizer.quantization_params()
        exact.setdefault(int(p.zero_point), []).append(np.float32(p.scale))
    if not exact:
        return flatbuffer
    tflite = read_tflite(flatbuffer, schema)
    changed = False
    for graph in tflite.subgraphs or []:
        for tensor in graph.tensors or []:
            q = tensor.quantization
            data = tflite.buffers[tensor.buffer].data
            if tensor.type != schema.TensorType.INT8 or q is None or q.scale is None or len(q.scale) != 1 or \
                    q.zeroPoint is None or (data is not None and len(data) > 0):
                continue
            got = np.float32(q.scale[0])
            near = [s for s in exact.get(int(q.zeroPoint[0]), []) if abs(s - got) <= 2 * np.spacing(s)]
            if near:
                best = min(near, key=lambda s: abs(s - got))
                if best != got:
                    q.scale = np.asarray([best], np.float32)
                    changed = True
    return write_tflite(tflite, len(flatbuffer)) if changed else flatbuffer


def write_transposed_weights(flatbuffer: bytes, model) -> bytes:
    """Write each wrapped transposed convolution's int8 codes and scales into its TRANSPOSE_CONV filter.

    The export form (:func:`iqcore.keras._export.transposed_conv_form`) leaves the converter to quantize the
    filter on scales of its own (``max|w| / 127`` per output channel); here the filter becomes the quantizer's
    codes in TFLite's ``[out, ..., in]`` layout with the quantizer's scales, and a fused int32 bias is
    requantized on the new ``input scale * weight scale`` steps.

    Raises:
        RuntimeError: If a wrapper's filter is not found as an int8 TRANSPOSE_CONV input, or the fused bias is
            not the layer's own.
    """
    from tensorflow.lite.python import schema_py_generated as schema

    tflite = read_tflite(flatbuffer, schema)
    codes = tflite.operatorCodes or []
    uses: dict = {}
    for graph in tflite.subgraphs or []:
        for tensor in graph.tensors or []:
            uses[tensor.buffer] = uses.get(tensor.buffer, 0) + 1
    for w in (layer for layer in flatten_layers(model) if isinstance(layer, QuantizationWrapper)):
        if not is_transposed_conv(w.layer):
            continue
        tag = f"iqcore_{w.name}_kernel".encode()
        found = [(graph, op) for graph in tflite.subgraphs or [] for op in graph.operators or []
                 if max(codes[op.opcodeIndex].builtinCode, codes[op.opcodeIndex].deprecatedBuiltinCode)
                 == schema.BuiltinOperator.TRANSPOSE_CONV and tag in (graph.tensors[op.inputs[1]].name or b"")]
        if len(found) != 1:
            raise RuntimeError(f"{w.name}: {len(found)} TRANSPOSE_CONV ops with its filter in the TFLite model; "
                               "expected 1")
        graph, op = found[0]
        filt = graph.tensors[op.inputs[1]]
        if filt.type != schema.TensorType.INT8 or filt.quantization is None:
            raise RuntimeError(f"{w.name}: the converter left the TRANSPOSE_CONV filter unquantized")
        q = w.weights_quantizers["kernel"]
        values = q.to_int(tf.convert_to_tensor(w.quantized_variables()["kernel"])).numpy()
        values = np.moveaxis(values, -2, 0)  # [..., out, in] -> [out, ..., in]
        shape = [int(d) for d in filt.shape]
        if [d for d in values.shape if d != 1] != [d for d in shape if d != 1] or values.shape[0] != shape[0]:
            raise RuntimeError(f"{w.name}: the TRANSPOSE_CONV filter has shape {shape}; the kernel {values.shape}")
        scale = output_channel_scales(w, "kernel", shape[0]).astype(np.float32)
        _set_buffer(tflite, filt, np.ascontiguousarray(values.reshape(shape)).astype(np.int8), uses)
        _set_quantization(filt, scale, 0)
        bias_index = op.inputs[3] if len(op.inputs) > 3 else -1
        if bias_index >= 0:
            _requantize_bias(tflite, graph, op, bias_index, w, scale, uses)
    return write_tflite(tflite, len(flatbuffer))


def _set_buffer(tflite, tensor, values: np.ndarray, uses: dict) -> None:
    """Store ``values`` as ``tensor``'s data (in a buffer of its own if the converter shared one)."""
    from tensorflow.lite.python import schema_py_generated as schema

    data = values.reshape(-1).view(np.uint8)
    if (tflite.buffers[tensor.buffer].offset or 0) > 1:
        raise RuntimeError(f"{tensor.name!r} is stored outside the flatbuffer (a model above 2 GB); cannot rewrite it")
    if uses.get(tensor.buffer, 0) > 1:
        uses[tensor.buffer] -= 1
        buffer = schema.BufferT()
        tflite.buffers.append(buffer)
        tensor.buffer = len(tflite.buffers) - 1
        uses[tensor.buffer] = 1
    tflite.buffers[tensor.buffer].data = data


def _set_quantization(tensor, scale: np.ndarray, dimension: int) -> None:
    params = tensor.quantization
    params.scale = np.asarray(scale, np.float32)
    params.zeroPoint = np.zeros(scale.size, np.int64)
    params.quantizedDimension = dimension
    params.min = params.max = None


def _requantize_bias(tflite, graph, op, index: int, w, scale, uses) -> None:
    """The fused int32 bias of ``w``'s TRANSPOSE_CONV on the steps ``input scale * scale``."""
    tensor = graph.tensors[index]
    old_step = np.asarray(tensor.quantization.scale, np.float64)
    stored = np.frombuffer(bytes(bytearray(tflite.buffers[tensor.buffer].data)), "<i4").astype(np.float64)
    layer_bias = getattr(w.layer, "bias", None) if getattr(w.layer, "use_bias", False) else None
    bias = np.zeros(stored.size) if layer_bias is None else np.asarray(layer_bias, np.float64).reshape(-1)
    if bias.size != stored.size or old_step.size not in (1, stored.size) or \
            np.any(np.abs(stored * old_step - bias) > old_step):
        raise RuntimeError(f"{w.name}: the int32 bias of its TRANSPOSE_CONV is not the layer's bias")
    step = np.float64(graph.tensors[op.inputs[2]].quantization.scale[0]) * scale.astype(np.float64)
    info = np.iinfo(np.int32)
    _set_buffer(tflite, tensor, np.clip(np.round(bias / step), info.min, info.max).astype("<i4"), uses)
    _set_quantization(tensor, step.astype(np.float32), 0)


def interpreter(flatbuffer: bytes, **kwargs):
    """A TFLite interpreter for ``flatbuffer``: LiteRT's (``ai-edge-litert``) where it is installed, else
    ``tf.lite.Interpreter`` (deprecated by TensorFlow in favour of LiteRT)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = tf.lite.Interpreter  # noqa: N806
    return Interpreter(model_content=flatbuffer, **kwargs)


def run_tflite(flatbuffer: bytes, x, **interpreter_kwargs):
    """Run a one-input TFLite model on the float batch ``x``.

    An integer input is quantized with the file's input scale and zero point (rounding half up, clipped to the
    dtype); an integer output is dequantized.

    Args:
        flatbuffer: The TFLite model.
        x: A float array, the whole batch.
        **interpreter_kwargs: Passed to the interpreter (``experimental_preserve_all_tensors=True``...).

    Returns:
        ``(outputs as float32, output scale or None for a float output, the interpreter after the run)``.
    """
    reader = interpreter(flatbuffer, **interpreter_kwargs)
    inp = reader.get_input_details()[0]
    reader.resize_tensor_input(inp["index"], list(np.shape(x)))
    reader.allocate_tensors()
    inp, out = reader.get_input_details()[0], reader.get_output_details()[0]
    data = np.asarray(x, np.float32)
    if inp["dtype"] != np.float32:
        scale, zero = inp["quantization"]
        info = np.iinfo(inp["dtype"])
        data = np.clip(np.floor(data / scale + 0.5) + zero, info.min, info.max).astype(inp["dtype"])
    reader.set_tensor(inp["index"], data)
    reader.invoke()
    y = reader.get_tensor(out["index"])
    if out["dtype"] == np.float32:
        return y, None, reader
    scale, zero = out["quantization"]
    return (y.astype(np.float32) - zero) * np.float32(scale), float(scale), reader


def tflite_weight_tensors(flatbuffer: bytes, model) -> dict[tuple[str, str | int], dict]:
    """``{(wrapper name, weight name or constant position): tensor details}`` of the wrapped weights in a
    :func:`to_tflite` file."""
    reader = interpreter(flatbuffer)
    details = reader.get_tensor_details()
    produced = {int(i) for op in reader._get_ops_details() for i in op["outputs"]}
    produced |= {d["index"] for d in reader.get_input_details()}
    constants = {d["index"] for d in details} - produced
    found = {}
    for w in (layer for layer in flatten_layers(model) if isinstance(layer, QuantizationWrapper)):
        for name in w.weights_quantizers:
            tag = f"iqcore_{w.name}_{name}"
            hits = [d for d in details if tag in d["name"] and d["dtype"] == np.int8 and d["index"] in constants]
            if len(hits) == 1:
                d = dict(hits[0])
                try:
                    d["value"] = reader.get_tensor(d["index"])
                except ValueError:
                    d["value"] = None
                found[(w.name, name)] = d
    return found


def check_tflite(flatbuffer: bytes, model) -> None:
    """Check that each wrapped weight in ``flatbuffer`` has its quantizer's scales and zero point 0.

    Raises:
        RuntimeError: For a missing weight tensor or a scale/zero point that differs.
    """
    tensors = tflite_weight_tensors(flatbuffer, model)
    for w in (layer for layer in flatten_layers(model) if isinstance(layer, QuantizationWrapper)):
        for name in w.weights_quantizers:
            d = tensors.get((w.name, name))
            if d is None:
                raise RuntimeError(f"{w.name}/{name}: no int8 weight tensor found in the TFLite model")
            params = d["quantization_parameters"]
            got = params["scales"].astype(np.float32)
            want = output_channel_scales(w, name, got.size)
            if got.shape != want.shape or not np.array_equal(got, want) or np.any(params["zero_points"] != 0):
                raise RuntimeError(
                    f"{w.name}/{name}: TFLite scales {got[:4]}... (zero points {params['zero_points'][:4]}) differ "
                    f"from the quantizer's {want[:4]}..."
                )


def _export_repeat(wrapper, name) -> int:
    """How many TFLite channels each quantizer channel becomes (a DepthwiseConv2D's depth multiplier)."""
    q = wrapper.weights_quantizers[name]
    var = wrapper.quantized_variables()[name]
    g = q.grid
    if g.axis is not None and g.rank == 4 and g.axis == 2 and not is_transposed_conv(wrapper.layer):
        return int(var.shape[-1])
    return 1
