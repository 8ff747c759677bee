"""Latency of a quantized Keras model relative to its float model (batch 1, graph mode, CPU).

    python bench/keras_latency.py [--rounds 15] [--calls 200] [--json out.json]

Model: a CNN of about 1.5 M parameters (Conv2D, DepthwiseConv2D, Dense) on a 64x64x3 input. Candidates:

* ``float``: the float model;
* ``quantized``: ``iqcore.keras.quantize_model`` output (weights quantized once, activation holders after
  every layer: the deployable model);
* ``weights_only``: wrappers only (no activation holders): the cost of the wrappers themselves;
* ``requantize_each_call``: the same model re-quantizing its constant weights on every call (what the seed's
  library does), for comparison.

Each round times every candidate (shuffled order); the figures are medians over rounds of per-round ratios to
``float``, so a slow moment of the shared machine hits numerator and denominator alike, and the ratios of each
candidate's best round (the least disturbed one). Not a test: timings on a shared 2-core machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import iqcore  # noqa: E402
from iqcore.keras import QuantizationWrapper, quantize_model  # noqa: E402

keras = tf.keras


def float_cnn():
    keras.utils.set_random_seed(0)
    inp = keras.Input((64, 64, 3))
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(inp)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(128, 3, padding="same", activation="relu")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(256, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(256, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(512, activation="relu")(x)
    x = keras.layers.Dense(1000)(x)
    return keras.Model(inp, x)


class RequantizingWrapper(keras.layers.Layer):
    """Quantizes the wrapped layer's kernel on every call (the seed's behaviour), for comparison only."""

    def __init__(self, layer, quantizer, float_kernel):
        super().__init__()
        self.layer, self.quantizer = layer, quantizer
        self.float_kernel = self.add_weight(name="float_kernel", shape=float_kernel.shape, trainable=False)
        self.float_kernel.assign(float_kernel)

    def call(self, x):
        kernel = iqcore.keras.find_weight(self.layer, "kernel")
        q = self.quantizer(tf.convert_to_tensor(self.float_kernel))
        if iqcore.keras.KERAS_3:
            with keras.StatelessScope(state_mapping=[(kernel, q)]):
                return self.layer(x)
        raise SystemExit("requantize_each_call needs Keras 3")


def requantizing(model, quantized):
    """``quantized``'s graph, but each wrapper re-quantizes its float kernel on every call."""
    floats = {layer.name: layer for layer in model.layers}

    def clone(layer):
        if isinstance(layer, QuantizationWrapper):
            original = floats[layer.layer.name]
            inner = original.__class__.from_config(original.get_config())
            inner.build(original.input.shape)
            inner.set_weights(original.get_weights())
            return RequantizingWrapper(inner, layer.weights_quantizers["kernel"],
                                       iqcore.keras.find_weight(original, "kernel").numpy())
        return layer

    return keras.models.clone_model(quantized, clone_function=clone)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=200, help="calls per candidate per round")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    model = float_cnn()
    data = [np.random.default_rng(i).uniform(-1, 1, (4, 64, 64, 3)).astype(np.float32) for i in range(4)]
    quantized = quantize_model(model, weights_method="symmetric", activation_method="uniform",
                               representative_data=data)
    weights_only = quantize_model(model, weights_method="symmetric")
    candidates = {"float": model, "quantized": quantized, "weights_only": weights_only}
    if iqcore.keras.KERAS_3:
        candidates["requantize_each_call"] = requantizing(model, weights_only)
    x = tf.constant(data[0][:1])
    fns = {}
    for name, m in candidates.items():
        fn = tf.function(m)
        fn(x)
        fns[name] = fn
    want = fns["weights_only"](x).numpy()
    if "requantize_each_call" in fns and not np.array_equal(fns["requantize_each_call"](x).numpy(), want):
        raise SystemExit("requantize_each_call and weights_only disagree: the comparison would be meaningless")

    rng = random.Random(0)
    times = {name: [] for name in fns}
    names = list(fns)
    for _ in range(args.rounds):
        rng.shuffle(names)
        for name in names:
            fn = fns[name]
            start = time.perf_counter()
            for _ in range(args.calls):
                fn(x)
            times[name].append((time.perf_counter() - start) / args.calls)
    ratios = {n: [a / b for a, b in zip(t, times["float"], strict=True)] for n, t in times.items() if n != "float"}
    result = {
        "model_params": int(model.count_params()),
        "batch": 1,
        "mode": "tf.function (graph)",
        "tensorflow": tf.__version__,
        "keras_3": iqcore.keras.KERAS_3,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "ms_per_call_median": {n: statistics.median(t) * 1e3 for n, t in times.items()},
        "ratio_to_float_median": {n: statistics.median(ratios[n]) for n in ratios},
        "ms_per_call_best_round": {n: min(t) * 1e3 for n, t in times.items()},
        "ratio_of_best_rounds_to_float": {n: min(t) / min(times["float"]) for n, t in times.items() if n != "float"},
        "ratio_to_float_min_max": {n: [min(ratios[n]), max(ratios[n])] for n in ratios},
        "rounds": args.rounds,
        "calls_per_round": args.calls,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
