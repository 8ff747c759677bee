"""Agreement of the ONNX export with the Keras model, in onnxruntime: the table of docs/onnx.md.

    python -m iq_onnx.bench [--seed 0] [--epochs 4] [--json out.json]

Trains a small CNN (Conv2D, DepthwiseConv2D, max and average pooling, Dense) on scikit-learn's bundled digits
(no download; random data when scikit-learn is missing), quantizes it with several methods and bit widths,
exports each to ONNX in both rounding forms and compares onnxruntime's outputs on the 360 held-out digits with
the Keras model's, in steps of the output holder's grid.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from typing import Any

import numpy as np

import iq_onnx

#: (weights method, weights bits, activation method, activation bits)
CONFIGS = [("symmetric", 8, "uniform", 8), ("pot", 8, "pot", 8), ("symmetric", 8, "symmetric", 8),
           ("symmetric", 4, "uniform", 4)]


def data(seed: int):
    """``(x_train, y_train, x_test, y_test)``: digits 8x8x1 in [0, 1], or random data without scikit-learn."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        rng = np.random.default_rng(seed)
        x = rng.uniform(0, 1, (1797, 8, 8, 1)).astype(np.float32)
        y = rng.integers(0, 10, 1797)
    else:
        digits = load_digits()
        x = (digits.images / 16.0).astype(np.float32)[..., None]
        y = digits.target
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    return x[:-360], y[:-360], x[-360:], y[-360:]


def small_cnn(seed: int, average: bool = True):
    import tensorflow as tf

    keras = tf.keras
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    x = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, activation="relu")(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(16, 3, activation="relu")(x)
    x = (keras.layers.AveragePooling2D if average else keras.layers.MaxPooling2D)(2)(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inp, keras.layers.Dense(10)(x), name="small_cnn" if average else "small_cnn_max")


def run(seed: int = 0, epochs: int = 4, configs=None) -> list[dict]:
    import tensorflow as tf

    from iqcore.keras import quantize_model

    x_train, y_train, x_test, y_test = data(seed)
    calibration = [x_train[i:i + 64] for i in range(0, 512, 64)]
    rows: list[dict] = []
    models: dict[bool, Any] = {}
    for average, (w_method, w_bits, a_method, a_bits) in itertools.product((True, False), configs or CONFIGS):
        model = models.get(average)
        if model is None:
            model = models[average] = small_cnn(seed, average)
            model.compile(optimizer="adam", loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
        q = quantize_model(model, weights_method=w_method, weights_bits=w_bits, activation_method=a_method,
                           activation_bits=a_bits, representative_data=calibration, verbose=0)
        keras_top1 = float(np.mean(np.argmax(q(x_test), -1) == y_test))
        for rounding in ("onnx", "tensorflow"):
            start = time.perf_counter()
            proto = iq_onnx.to_onnx(q, rounding=rounding)
            seconds = time.perf_counter() - start
            for optimized in (False, True):
                a = iq_onnx.agreement(q, proto, x_test, optimized=optimized)
                rows.append({"model": model.name, "weights": f"{w_method} {w_bits}-bit",
                             "activations": f"{a_method} {a_bits}-bit",
                             "rounding": rounding, "ort_optimizations": "all" if optimized else "none",
                             "outputs": a.outputs, "off": a.off, "percent_off": round(a.percent_off, 2),
                             "max_steps": round(a.max_steps, 3), "keras_top1": round(keras_top1, 4),
                             "export_seconds": round(seconds, 2)})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m iq_onnx.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    rows = run(args.seed, args.epochs)
    print("| model | weights | activations | rounding | ORT optimizations | outputs off | max diff (steps) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['model']} | {r['weights']} | {r['activations']} | {r['rounding']} | {r['ort_optimizations']} | "
              f"{r['off']}/{r['outputs']} ({r['percent_off']:.2f} %) | {r['max_steps']:g} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
