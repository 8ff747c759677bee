"""MCT's post-training quantization of the digits CNN: the seed toolchain's calibration baseline.

A standalone script (it does not import iqcore): it runs in an environment with TensorFlow 2.15 (tf.keras is
Keras 2) and Sony's Model Compression Toolkit (``model-compression-toolkit``, MCT), which needs TensorFlow
2.15 or older. ``nox -s calibration_mct`` builds that environment and runs it.

What it does:

1. Loads scikit-learn's bundled 8x8 digits and splits them exactly as ``iqcore demo`` does (75/25, stratified,
   ``random_state=0``).
2. Builds the demo's CNN (``digits_cnn``) and loads its float weights from ``--weights`` (an ``.npz`` of
   ``arr_0..arr_N`` in ``model.get_weights()`` order); if that file does not exist, trains the model with the
   demo's recipe (seed 0, Adam 1e-2, 30 epochs of batch 64) and saves the weights there.
3. For each bit width and each method (power-of-two, symmetric, uniform; the same method and bit width for
   weights and activations) quantizes the float model with ``mct.ptq.keras_post_training_quantization`` on
   the first 256 training images (4 batches of 64, the images iqcore calibrates on), in two configurations:

   * ``minmax``: ``QuantizationErrorMethod.NOCLIPPING`` (min/max) for weights and activations, bias
     correction off;
   * ``mse+bc``: ``QuantizationErrorMethod.MSE`` for weights and activations, bias correction on.

   Everything else is MCT's default ``QuantizationConfig`` (shift-negative correction on, linear collapsing
   on, no z-threshold outlier filter...).
4. Measures the SQNR of the softmax outputs on the test images,
   ``10 log10(sum(p^2) / sum((p - q)^2))`` with ``p``/``q`` the float/quantized softmax (float64), and the
   top-1 accuracy of the float and the quantized models, and the wall time of each
   ``keras_post_training_quantization`` call (``seconds``); writes them to ``--out`` as JSON and prints a
   table. A combination that MCT refuses gets a row with ``error`` (a one-line reason) instead of numbers.

The target platform capabilities (TPC) are built here rather than taken from MCT's IMX500/TFLite models,
whose methods are fixed (power-of-two activations, symmetric weights): every Conv2D and Dense kernel is
quantized per output channel with the row's method and bit width (biases stay float), every tensor that an
int8 model would requantize (the input and each layer's output; a ReLU is fused into the Conv2D/Dense before
it) with the same method and bit width, and max pooling and flatten keep their input's grid.

Usage::

    python bench/calibration_mct.py --weights bench/results/digits_cnn_float.npz \\
        --out bench/results/calibration_mct.json [--bits 8 6 4]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TQDM_DISABLE", "1")  # MCT's progress bars

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

keras = tf.keras

METHODS = ("pot", "symmetric", "uniform")
STRATEGIES = ("minmax", "mse+bc")
CALIBRATION_SAMPLES = 256
CALIBRATION_BATCH = 64


def load_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits, split as ``iqcore demo`` splits them.

    Returns:
        ``(x_train, y_train, x_test, y_test)``: images as 8x8x1 float32 in [0, 1], labels as int64.
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    data = sk_load_digits()
    x = (data.images / 16.0).astype(np.float32)[..., None]
    y = data.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    return x_train, y_train, x_test, y_test


def build_model() -> keras.Model:
    """The float CNN of ``iqcore demo``: two 3x3 convolutions, max pooling, a hidden Dense and 10 logits.

    Returns:
        The (untrained) Keras model ``digits_cnn``.
    """
    return keras.Sequential([
        keras.Input(shape=(8, 8, 1)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
        keras.layers.MaxPooling2D(2, name="pool"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(64, activation="relu", name="dense1"),
        keras.layers.Dense(10, name="logits"),
    ], name="digits_cnn")


def float_model(weights: Path, x_train: np.ndarray, y_train: np.ndarray) -> tuple[keras.Model, str]:
    """The float model with weights from ``weights``, trained (and saved there) if the file does not exist.

    Args:
        weights: An ``.npz`` of ``arr_0..arr_N`` in ``model.get_weights()`` order.
        x_train: Training images (used only when training).
        y_train: Training labels (used only when training).

    Returns:
        The model and ``"loaded"`` or ``"trained"``.

    Raises:
        ValueError: If the file's arrays do not match the model's weights in number or shapes.
    """
    if weights.exists():
        model = build_model()
        with np.load(weights) as npz:
            arrays = [npz[f"arr_{i}"] for i in range(len(npz.files))]
        expected = [w.shape for w in model.get_weights()]
        if [a.shape for a in arrays] != expected:
            raise ValueError(f"{weights} holds arrays of shapes {[a.shape for a in arrays]}; "
                             f"the digits CNN needs {expected}")
        model.set_weights(arrays)
        return model, "loaded"
    keras.utils.set_random_seed(0)
    model = build_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, batch_size=64, epochs=30, verbose=0)
    weights.parent.mkdir(parents=True, exist_ok=True)
    np.savez(weights, *model.get_weights())
    return model, "trained"


def build_tpc(mct: Any, method: str, bits: int) -> Any:
    """Target platform capabilities with one quantization method and bit width for weights and activations.

    Conv2D and Dense kernels are quantized per output channel (biases stay float); the model input and every
    layer's output are quantized (a ReLU is fused into the Conv2D/Dense before it, so the pre-activation is
    not); max pooling and flatten preserve their input's quantization.

    Args:
        mct: The ``model_compression_toolkit`` module.
        method: ``"pot"``, ``"symmetric"`` or ``"uniform"``.
        bits: Bit width of weights and activations.

    Returns:
        A ``TargetPlatformCapabilities`` for ``keras_post_training_quantization``.
    """
    from mct_quantizers import QuantizationMethod
    from model_compression_toolkit.target_platform_capabilities.constants import BIAS_ATTR, KERNEL_ATTR

    tpc = mct.target_platform_capabilities
    qmethod = {"pot": QuantizationMethod.POWER_OF_TWO, "symmetric": QuantizationMethod.SYMMETRIC,
               "uniform": QuantizationMethod.UNIFORM}[method]
    no_weights = tpc.AttributeQuantizationConfig(weights_quantization_method=qmethod, weights_n_bits=32,
                                                 weights_per_channel_threshold=False,
                                                 enable_weights_quantization=False)
    kernel = tpc.AttributeQuantizationConfig(weights_quantization_method=qmethod, weights_n_bits=bits,
                                             weights_per_channel_threshold=True, enable_weights_quantization=True)
    common = dict(default_weight_attr_config=no_weights, activation_quantization_method=qmethod,
                  activation_n_bits=bits, supported_input_activation_n_bits=bits,
                  enable_activation_quantization=True, signedness=tpc.Signedness.AUTO)
    default = tpc.OpQuantizationConfig(attr_weights_configs_mapping={}, quantization_preserving=False, **common)
    linear = tpc.OpQuantizationConfig(attr_weights_configs_mapping={KERNEL_ATTR: kernel, BIAS_ATTR: no_weights},
                                      quantization_preserving=False, **common)
    default_options = tpc.QuantizationConfigOptions(quantization_configurations=(default,))
    linear_options = tpc.QuantizationConfigOptions(quantization_configurations=(linear,), base_config=linear)
    # MCT refuses a preserving config that also enables activation quantization (its TFLite TPC does just that).
    preserving = default_options.clone_and_edit(enable_activation_quantization=False, quantization_preserving=True)

    names = tpc.OperatorSetNames
    conv = tpc.OperatorsSet(name=names.CONV, qc_options=linear_options)
    dense = tpc.OperatorsSet(name=names.FULLY_CONNECTED, qc_options=linear_options)
    relu = tpc.OperatorsSet(name=names.RELU)
    operator_set = (conv, dense, relu,
                    tpc.OperatorsSet(name=names.MAXPOOL, qc_options=preserving),
                    tpc.OperatorsSet(name=names.FLATTEN, qc_options=preserving),
                    tpc.OperatorsSet(name=names.RESHAPE, qc_options=preserving))
    kernels = tpc.OperatorSetGroup(operators_set=(conv, dense))
    return tpc.TargetPlatformCapabilities(default_qco=default_options, operator_set=operator_set,
                                          fusing_patterns=(tpc.Fusing(operator_groups=(kernels, relu)),),
                                          tpc_minor_version=1, tpc_patch_version=0,
                                          tpc_platform_type="iqcore_baseline", add_metadata=False,
                                          name=f"{method}_{bits}bit")


def core_config(mct: Any, strategy: str) -> Any:
    """MCT's ``CoreConfig`` for a strategy.

    Args:
        mct: The ``model_compression_toolkit`` module.
        strategy: ``"minmax"`` (no clipping, no bias correction) or ``"mse+bc"`` (MSE thresholds, bias
            correction).

    Returns:
        A ``CoreConfig`` whose ``QuantizationConfig`` is MCT's default but for the error methods and the
        weights bias correction.
    """
    error = mct.core.QuantizationErrorMethod
    if strategy == "minmax":
        qc = mct.core.QuantizationConfig(weights_error_method=error.NOCLIPPING,
                                         activation_error_method=error.NOCLIPPING, weights_bias_correction=False)
    else:
        qc = mct.core.QuantizationConfig(weights_error_method=error.MSE, activation_error_method=error.MSE,
                                         weights_bias_correction=True)
    return mct.core.CoreConfig(quantization_config=qc)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis in float64.

    Args:
        logits: Logits of any float dtype.

    Returns:
        Probabilities as float64.
    """
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def sqnr_db(reference: np.ndarray, quantized: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB: ``10 log10(sum(ref^2) / sum((ref - q)^2))`` (inf if equal).

    Args:
        reference: The float model's outputs.
        quantized: The quantized model's outputs.

    Returns:
        The SQNR in dB.
    """
    ref = np.asarray(reference, np.float64)
    noise = float(np.sum((ref - np.asarray(quantized, np.float64)) ** 2))
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(float(np.sum(ref**2)) / noise)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy.

    Args:
        logits: Model outputs, one row per image.
        labels: Integer labels.

    Returns:
        The fraction of rows whose argmax is the label.
    """
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def representative_data(x_train: np.ndarray) -> Callable[[], Iterator[list[np.ndarray]]]:
    """MCT's representative data generator: the first 256 training images in batches of 64.

    Args:
        x_train: Training images.

    Returns:
        A callable that yields ``[batch]`` lists, as MCT expects.
    """
    def generate() -> Iterator[list[np.ndarray]]:
        for start in range(0, CALIBRATION_SAMPLES, CALIBRATION_BATCH):
            yield [x_train[start:start + CALIBRATION_BATCH]]

    return generate


def one_line(error: BaseException) -> str:
    """The first line of an exception's message, prefixed with its type.

    Args:
        error: The exception.

    Returns:
        ``"Type: first line"``.
    """
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def table(results: dict[str, Any]) -> str:
    """The results as a fixed-width text table.

    Args:
        results: The JSON document written to ``--out``.

    Returns:
        The table, one row per strategy, method and bit width.
    """
    lines = [f"{results['toolchain']}, TensorFlow {results['tensorflow']}; float accuracy "
             f"{results['float_accuracy']:.4f} on {results['test_images']} test images", "",
             f"{'strategy':<8} {'method':<9} {'bits':>4} {'SQNR (dB)':>9} {'accuracy':>8} {'seconds':>7}",
             f"{'-' * 8} {'-' * 9} {'-' * 4} {'-' * 9} {'-' * 8} {'-' * 7}"]
    for r in results["rows"]:
        head = f"{r['strategy']:<8} {r['method']:<9} {r['bits']:>4}"
        if "error" in r:
            lines.append(f"{head} error: {r['error']}")
        else:
            lines.append(f"{head} {r['sqnr_db']:>9.2f} {r['accuracy']:>8.4f} {r['seconds']:>7.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the baseline and write its JSON.

    Args:
        argv: Command-line arguments (``sys.argv[1:]`` when None).

    Returns:
        The exit status: 0, or 1 if no combination could be quantized.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=Path("bench/results/digits_cnn_float.npz"),
                        help="float weights (.npz, model.get_weights() order); trained and saved if missing")
    parser.add_argument("--out", type=Path, default=Path("bench/results/calibration_mct.json"),
                        help="the JSON results file")
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 6, 4], help="bit widths (default: 8 6 4)")
    args = parser.parse_args(argv)

    import model_compression_toolkit as mct
    from mct_quantizers.logger import Logger as QuantizersLogger
    from model_compression_toolkit.logger import Logger

    Logger.get_logger().setLevel("ERROR")
    QuantizersLogger.get_logger().setLevel("ERROR")  # not its notes on moving uniform ranges to hold zero

    x_train, y_train, x_test, y_test = load_digits()
    model, origin = float_model(args.weights, x_train, y_train)
    float_logits = np.asarray(model(x_test, training=False))
    float_probs = softmax(float_logits)
    float_acc = accuracy(float_logits, y_test)
    print(f"float model {origin} ({args.weights}): accuracy {float_acc:.4f} on {len(x_test)} test images",
          flush=True)

    data = representative_data(x_train)
    rows: list[dict[str, Any]] = []
    for bits in args.bits:
        for method in METHODS:
            for strategy in STRATEGIES:
                row: dict[str, Any] = {"strategy": strategy, "method": method, "bits": bits}
                try:
                    start = time.perf_counter()
                    qmodel, _ = mct.ptq.keras_post_training_quantization(
                        model, data, core_config=core_config(mct, strategy),
                        target_platform_capabilities=build_tpc(mct, method, bits))
                    seconds = time.perf_counter() - start
                    logits = np.asarray(qmodel(x_test, training=False))
                except Exception as error:  # MCT raises plain Exceptions (Logger.critical) for what it refuses
                    row["error"] = one_line(error)
                    print(f"{strategy:<8} {method:<9} {bits} bits: error {row['error']}", flush=True)
                else:
                    row.update(sqnr_db=sqnr_db(float_probs, softmax(logits)), accuracy=accuracy(logits, y_test),
                               seconds=round(seconds, 2))
                    print(f"{strategy:<8} {method:<9} {bits} bits: SQNR {row['sqnr_db']:.2f} dB, "
                          f"accuracy {row['accuracy']:.4f} ({seconds:.1f} s)", flush=True)
                rows.append(row)

    results = {"toolchain": f"MCT {mct.__version__}", "tensorflow": tf.__version__,
               "mct_quantizers": version("mct-quantizers"), "test_images": int(len(x_test)),
               "calibration_images": CALIBRATION_SAMPLES, "weights": f"{args.weights} ({origin})",
               "float_accuracy": float_acc, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(table(results))
    print(f"\nwritten: {args.out}")
    return 0 if any("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
