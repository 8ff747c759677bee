"""Keras Applications through iqcore: quantize, reload, convert to int8 TFLite, and compare with the interpreter.

    python bench/zoo.py                                  # every architecture, pot and symmetric weights
    python bench/zoo.py --models MobileNetV2 ResNet50 --methods pot
    python bench/zoo.py --docs docs/zoo.md               # also rewrite the table in docs/zoo.md
    python bench/zoo.py --docs docs/zoo.md --block keras2   # Keras 2 (TF 2.15): its own block of docs/zoo.md

No pretrained weights are reachable here: each model is randomly initialised with a fixed seed and its batch
normalisation statistics are set from the calibration data (each layer's moving mean and variance become the
statistics of its input on one batch), so activations have realistic ranges instead of the near-constant
outputs of fresh statistics. Logits (no softmax) are compared, so that agreement is measured where it is hard.

Columns: quantize time; SQNR of the quantized Keras model against float; batch norms folded; weighted layers
quantized out of those present; the int8 interpreter against the quantized Keras model (largest difference
in output steps, share of outputs off by more than half a step, top-1 agreement); file size; ratio of
quantized to float latency (graph mode, batch 1, interleaved medians); the same agreement for the ONNX file of
the quantized model (iq-onnx, run in onnxruntime); whether the saved model, reloaded in a new Python process,
gives the same outputs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

ARCHITECTURES = {
    "MobileNetV2": dict(alpha=0.35, input_shape=(96, 96, 3)),
    "MobileNetV3Small": dict(input_shape=(96, 96, 3), minimalistic=False),  # rescales [0, 255] itself
    "EfficientNetB0": dict(input_shape=(64, 64, 3)),  # rescales and normalises [0, 255] itself
    "ResNet50": dict(input_shape=(64, 64, 3)),
    "DenseNet121": dict(input_shape=(64, 64, 3)),
    "NASNetMobile": dict(input_shape=(96, 96, 3)),
}
#: Models that take pixels in [0, 255] (they rescale inside); the others take [-1, 1].
PIXEL_INPUT = {"MobileNetV3Small", "EfficientNetB0"}
#: The marked blocks of the docs page: the table (Keras 3) and the Keras 2 rows.
MARKS = {"keras3": ("<!-- zoo-table:start -->", "<!-- zoo-table:end -->"),
         "keras2": ("<!-- zoo-keras2:start -->", "<!-- zoo-keras2:end -->")}
#: Run in a new process by :func:`reload_check`: load ``DIR/model.keras``, write its outputs on ``DIR/x.npy``.
RELOAD = """
import sys
import numpy as np
import iqcore
model = iqcore.load_model(sys.argv[1] + "/model.keras")
np.save(sys.argv[1] + "/y.npy", np.asarray(model(np.load(sys.argv[1] + "/x.npy"), training=False)))
"""


def build(keras, name: str, seed: int):
    keras.utils.set_random_seed(seed)
    return getattr(keras.applications, name)(**ARCHITECTURES[name], weights=None, classes=100,
                                             classifier_activation=None)


def set_batch_norm_statistics(keras, model, batch: np.ndarray) -> int:
    """Each BatchNormalization's moving statistics become its input's statistics on ``batch``; draws gamma and
    beta. Returns the number of batch-norm layers."""
    rng = np.random.default_rng(0)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for bn in bns:
        gamma, beta, _, _ = bn.get_weights()
        bn.set_weights([rng.uniform(0.5, 1.5, gamma.shape).astype("float32"),
                        rng.normal(0, 0.2, beta.shape).astype("float32"), *bn.get_weights()[2:]])
        bn.momentum = 0.0
    model(batch, training=True)  # with momentum 0, one training step sets the moving statistics
    for bn in bns:
        bn.momentum = 0.99
    return len(bns)


def sqnr_db(reference: np.ndarray, other: np.ndarray) -> float:
    noise = float(np.sum((reference.astype(np.float64) - other) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(float(np.sum(reference.astype(np.float64) ** 2)) / noise)


def interpreter_outputs(flatbuffer: bytes, x: np.ndarray) -> tuple[np.ndarray, float]:
    from iqcore.keras import run_tflite

    y, scale, _ = run_tflite(flatbuffer, x)
    return y, scale


def latency_ratio(tf, float_model, quantized, x, rounds: int = 15) -> float:
    f = tf.function(lambda t: float_model(t, training=False))
    q = tf.function(lambda t: quantized(t, training=False))
    for fn in (f, q):
        fn(x)
    ratios = []
    for _ in range(rounds):
        times = {}
        for name, fn in (("f", f), ("q", q)):
            start = time.perf_counter()
            for _ in range(5):
                fn(x)
            times[name] = time.perf_counter() - start
        ratios.append(times["q"] / times["f"])
    return statistics.median(ratios)


def run_one(name: str, method: str, seed: int = 0, calibration_images: int = 32) -> dict:
    import tensorflow as tf

    import iqcore
    from iqcore import keras as iqkeras

    keras = tf.keras
    model = build(keras, name, seed)
    shape = model.inputs[0].shape[1:]
    rng = np.random.default_rng(seed)
    low, high = (0.0, 255.0) if name in PIXEL_INPUT else (-1.0, 1.0)
    data = rng.uniform(low, high, (calibration_images + 16, *shape)).astype(np.float32)
    calibration = [data[i:i + 16] for i in range(0, calibration_images, 16)]
    test = data[calibration_images:]
    bn_count = set_batch_norm_statistics(keras, model, calibration[0])
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = iqkeras.quantize_model(model, weights_method=method, activation_method="uniform",
                                           representative_data=calibration, verbose=0)
    seconds = time.perf_counter() - start
    holder = next(layer for layer in quantized.layers if isinstance(layer, iqkeras.ActivationQuantizationHolder))
    test = holder(test).numpy()  # on the input grid: the Keras model and the interpreter read the same codes
    float_out, q_out = model(test, training=False).numpy(), quantized(test, training=False).numpy()
    out_step = holder_step(iqkeras, quantized)
    registered = iqcore._registry.layer_info
    weighted = [layer for layer in model.layers if registered(layer) is not None
                or isinstance(layer, keras.layers.SeparableConv2D)]
    wrappers = [layer for layer in quantized.layers if isinstance(layer, iqkeras.QuantizationWrapper)]
    from iqcore.keras._fold import fold_batch_norms, split_separable

    folded = len(fold_batch_norms(split_separable(model))[1])
    bns_left = sum(isinstance(layer, keras.layers.BatchNormalization) for layer in quantized.layers)
    row = {"model": name, "method": method, "quantize_s": round(seconds, 1),
           "sqnr_db": round(sqnr_db(float_out, q_out), 2), "bn": bn_count, "bn_folded": folded,
           "bn_depthwise": bn_count - folded - bns_left,
           "weighted": len(weighted), "quantized": len(wrappers)}
    row.update(onnx_agreement(quantized, test, q_out, out_step))
    row["reload"] = reload_check(quantized, test, q_out)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flatbuffer = iqkeras.to_tflite(quantized, allow_float=True)
    except Exception as e:  # noqa: BLE001 - the table reports why a model did not convert
        row["tflite"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        return row
    lite, step = interpreter_outputs(flatbuffer, test)
    off = np.abs(lite - q_out) / step
    ops = [op["op_name"] for op in iqkeras._tflite.interpreter(flatbuffer)._get_ops_details()]
    row.update(float_tensors=len(iqkeras._tflite.float_tensors(flatbuffer)), tflite_kb=round(len(flatbuffer) / 1024),
               max_steps=round(float(off.max()), 2),
               off_pct=round(100 * float(np.mean(off > 0.5)), 2),
               top1_pct=round(100 * float(np.mean(np.argmax(lite, -1) == np.argmax(q_out, -1))), 1),
               float_ops=sum(op in ("DEQUANTIZE", "QUANTIZE") for op in ops), mul_ops=ops.count("MUL"),
               latency_ratio=round(latency_ratio(tf, model, quantized, test[:1]), 3))
    row.update(simulated_agreement(iqkeras, model, calibration, method, test))
    return row


def short(e: BaseException, limit: int = 160) -> str:
    """An exception as one short line for a table cell."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:limit] if text else ''}"


def holder_step(iqkeras, quantized) -> float:
    """The step of the output holder's grid (1.0 when the model does not end with a holder)."""
    last = quantized.layers[-1]
    if not isinstance(last, iqkeras.ActivationQuantizationHolder):
        return 1.0
    return float(np.asarray(last.quantizer.quantization_params().scale).reshape(-1)[0])


def onnx_agreement(quantized, test: np.ndarray, q_out: np.ndarray, step: float) -> dict:
    """The quantized model exported by iq-onnx (``to_onnx``, default rounding) and run in onnxruntime without
    graph optimizations, against the Keras model: ``onnx_max_steps`` from ``iq_onnx.agreement``, the share of
    outputs off by more than half a step and top-1 agreement; ``{"onnx_error": why}`` when it cannot be run."""
    try:
        import onnxruntime as ort

        import iq_onnx
    except Exception as e:  # noqa: BLE001 - a missing or broken exporter is a cell, not the end of the row
        return {"onnx_error": f"iq-onnx not usable here: {short(e)}"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            proto = iq_onnx.to_onnx(quantized)
        checked = iq_onnx.agreement(quantized, proto, test)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        out = session.run(None, {session.get_inputs()[0].name: test})[0]
    except Exception as e:  # noqa: BLE001 - the cell says why the architecture did not export
        return {"onnx_error": short(e)}
    off = np.abs(out.astype(np.float64) - q_out) / step
    return {"onnx_max_steps": round(checked.max_steps if checked.step else checked.max_abs / step, 2),
            "onnx_off_pct": round(100 * float(np.mean(off > 0.5)), 2),
            "onnx_top1_pct": round(100 * float(np.mean(np.argmax(out, -1) == np.argmax(q_out, -1))), 1)}


def reload_check(quantized, test: np.ndarray, q_out: np.ndarray) -> str:
    """``"identical"`` if the model saved as ``.keras`` and loaded by ``iqcore.load_model`` in a new Python
    process gives ``q_out`` on ``test`` bit for bit; else the largest absolute difference, or the error."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantized.save(os.path.join(tmp, "model.keras"))
        except Exception as e:  # noqa: BLE001 - the cell says why the model was not saved
            return f"not saved: {short(e)}"
        np.save(os.path.join(tmp, "x.npy"), test)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        try:
            run = subprocess.run([sys.executable, "-c", RELOAD, tmp], capture_output=True, text=True, env=env,
                                 timeout=1800)
        except subprocess.TimeoutExpired:
            return "not reloaded: the new process took more than 30 minutes"
        if run.returncode != 0:
            lines = [line for line in run.stderr.splitlines() if line.strip()]
            return f"not reloaded: {lines[-1][:160] if lines else f'exit code {run.returncode}'}"
        out = np.load(os.path.join(tmp, "y.npy"))
    if out.shape == q_out.shape and np.array_equal(out, q_out):
        return "identical"
    if out.shape != q_out.shape:
        return f"output shape {out.shape} instead of {q_out.shape}"
    return f"max abs diff {float(np.max(np.abs(out.astype(np.float64) - q_out))):.3g}"


def simulated_agreement(iqkeras, model, calibration, method: str, test: np.ndarray) -> dict:
    """Agreement of the model quantized with ``integer_simulation="xnnpack"`` with its int8 file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        simulated = iqkeras.quantize_model(model, weights_method=method, activation_method="uniform",
                                           representative_data=calibration, integer_simulation="xnnpack", verbose=0)
        flatbuffer = iqkeras.to_tflite(simulated, allow_float=True)
    out = simulated(test, training=False).numpy()
    lite, step = interpreter_outputs(flatbuffer, test)
    off = np.abs(lite - out) / step
    return {"sim_max_steps": round(float(off.max()), 2), "sim_off_pct": round(100 * float(np.mean(off > 0.5)), 2),
            "sim_top1_pct": round(100 * float(np.mean(np.argmax(lite, -1) == np.argmax(out, -1))), 1)}


HEADER = ("model", "weights", "quantize (s)", "SQNR (dB)", "BN folded / as 1x1 depthwise", "layers quantized",
          "TFLite max steps", "% outputs off", "top-1 agree %", "simulated: max steps / % off / top-1 %",
          "float tensors", "TFLite KB", "latency vs float", "ONNX: max steps / % off / top-1 %", "reload")


def onnx_cell(r: dict) -> str:
    if "onnx_error" in r:
        return f"not exported: {r['onnx_error']}"
    if "onnx_max_steps" not in r:
        return ""
    return f"{r['onnx_max_steps']} / {r['onnx_off_pct']} / {r['onnx_top1_pct']}"


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in rows:
        if "tflite" in r:
            tail = [f"not converted: {r['tflite']}"] + [""] * 6
        else:
            tail = [r["max_steps"], r["off_pct"], r["top1_pct"],
                    f"{r['sim_max_steps']} / {r['sim_off_pct']} / {r['sim_top1_pct']}", r["float_tensors"],
                    r["tflite_kb"], r["latency_ratio"]]
        cells = [r["model"], r["method"], r["quantize_s"], r["sqnr_db"],
                 f"{r['bn_folded']} / {r['bn_depthwise']} of {r['bn']}",
                 f"{r['quantized']}/{r['weighted']}", *tail, onnx_cell(r), r.get("reload", "")]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def keras_version(tf) -> str:
    """The version of the Keras that ``tf.keras`` is (Keras 3, Keras 2 of TF 2.15, or tf-keras)."""
    from importlib import metadata

    return metadata.version(tf.keras.layers.Layer.__module__.split(".")[0])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(ARCHITECTURES), choices=list(ARCHITECTURES))
    parser.add_argument("--methods", nargs="+", default=["pot", "symmetric"])
    parser.add_argument("--out", default="bench/results/zoo.json")
    parser.add_argument("--docs", help="rewrite the block between the zoo markers of this Markdown file")
    parser.add_argument("--block", choices=list(MARKS),
                        help="which marked block --docs rewrites (default: that of the running Keras)")
    parser.add_argument("--env-label", help="names the TensorFlow/Keras pair in the rows and the docs stamp "
                        "(default: from the installed versions)")
    parser.add_argument("--update", action="store_true",
                        help="keep the rows of --out for the models and methods not run now")
    args = parser.parse_args(argv)
    import tensorflow as tf

    from iqcore.keras import KERAS_3

    label = args.env_label or f"tf{tf.__version__}-keras{3 if KERAS_3 else 2}"
    rows = []
    for name in args.models:
        for method in args.methods:
            start = time.perf_counter()
            try:
                row = run_one(name, method)
            except Exception as e:  # noqa: BLE001 - one architecture's failure is a row, not the end of the run
                row = {"model": name, "method": method, "error": f"{type(e).__name__}: {str(e)[:300]}"}
            row["seconds"] = round(time.perf_counter() - start, 1)
            row["env"] = label
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.update and os.path.exists(args.out):
        fresh = {(r["model"], r["method"]) for r in rows}
        with open(args.out) as f:
            rows += [r for r in json.load(f) if (r["model"], r["method"]) not in fresh]
        order = list(ARCHITECTURES)
        rows.sort(key=lambda r: (order.index(r["model"]) if r["model"] in order else len(order), r["method"]))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=2)
    table = markdown([r for r in rows if "error" not in r])
    errors = [f"- {r['model']} ({r['method']}): {r['error']}" for r in rows if "error" in r]
    print(table)
    if args.docs:
        command = " ".join(["python bench/zoo.py", *(sys.argv[1:] if argv is None else argv)])
        stamp = (f"Measured {datetime.date.today()} with TensorFlow {tf.__version__}, Keras {keras_version(tf)} "
                 f"({label}): `{command}`.")
        if args.update:
            stamp += " Rows of models not named there come from the run before it (the same command without them)."
        text = open(args.docs).read()
        mark_start, mark_end = MARKS[args.block or ("keras3" if KERAS_3 else "keras2")]
        if mark_start not in text or mark_end not in text:
            raise SystemExit(f"{args.docs} has no {mark_start} ... {mark_end} block")
        start, end = text.index(mark_start) + len(mark_start), text.index(mark_end)
        block = "\n".join([table, "", *errors, "" if errors else "", stamp])
        with open(args.docs, "w") as f:
            f.write(text[:start] + "\n" + block + "\n" + text[end:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
