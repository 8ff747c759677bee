"""Quantized vs float model latency in graph mode, batch 1 and 8 (the Keras layers of ``iqcore.keras``).

Run by ``run.py`` in a fresh process. The model is a 1.47 M-parameter CNN on 32x32x3 inputs; the quantized
copy comes from ``iqcore.keras.quantize_model`` (symmetric per-channel 8-bit weights, uniform 8-bit
activations after every layer). Both run as ``tf.function`` (graph mode), interleaved. Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import statistics
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import timing  # noqa: E402


def cnn():
    keras = tf.keras
    inputs = keras.Input((32, 32, 3))
    x = inputs
    for filters, stride in ((32, 1), (64, 2), (128, 2), (256, 2), (384, 2)):
        x = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(512, activation="relu")(x)
    outputs = keras.layers.Dense(10)(x)
    return keras.Model(inputs, outputs)


def main() -> None:
    quick = "--quick" in sys.argv
    try:
        from iqcore.keras import quantize_model
    except ImportError as e:
        print(json.dumps({"error": f"iqcore.keras not available: {e}"}))
        return
    tf.keras.utils.set_random_seed(0)
    model = cnn()
    rng = np.random.default_rng(0)
    calib = [rng.normal(size=(8, 32, 32, 3)).astype(np.float32) for _ in range(4)]
    qmodel = quantize_model(model, weights_method="symmetric", activation_method="uniform",
                            representative_data=calib)
    out = {"description": f"{model.count_params() / 1e6:.2f} M-parameter CNN, 32x32x3 input, "
                          "symmetric per-channel weights, uniform activations, 8 bits", "cases": []}
    f_float = tf.function(lambda t: model(t, training=False), autograph=False)
    f_quant = tf.function(lambda t: qmodel(t, training=False), autograph=False)
    for batch in (1, 8):
        x = tf.constant(rng.normal(size=(batch, 32, 32, 3)).astype(np.float32))
        times = timing.interleaved({"float": lambda x=x: f_float(x), "quantized": lambda x=x: f_quant(x)},
                                   5 if quick else 11, 0.05 if quick else 0.1)
        out["cases"].append({"batch": batch, "ratio": timing.ratio(times, "quantized", "float"),
                             "float_ms": statistics.median(times["float"]) * 1e3,
                             "quantized_ms": statistics.median(times["quantized"]) * 1e3})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
