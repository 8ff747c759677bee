"""What activation holders cost in whole Keras Applications models, against the floor of one copy per holder.

    python bench/holders.py            # MobileNetV2, EfficientNetB0, DenseNet121; batch 1, graph mode
    python bench/holders.py --quick

For each model, three versions run interleaved (medians of per-round ratios): the float model, the quantized
model (``quantize_model``: pot weights, uniform activations, batch norm folded), and the floor: the quantized
model with every holder replaced by one elementwise copy (a negation: one read and one write of the held
activation, what any fake-quantization must at least cost). Reported: quantized / float, floor / float and
quantized / floor (the holders' cost above a copy). The last line of output is the JSON summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings

import numpy as np

MODELS = {"MobileNetV2": dict(alpha=0.35, input_shape=(96, 96, 3)), "EfficientNetB0": dict(input_shape=(64, 64, 3)),
          "DenseNet121": dict(input_shape=(64, 64, 3))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, MobileNetV2 only")
    args = parser.parse_args(argv)
    import tensorflow as tf

    from iqcore import keras as iqkeras
    from iqcore.keras._graph import clone_layer, rebuild

    keras = tf.keras

    class Copy(keras.layers.Layer):
        def call(self, x):
            return tf.negative(x)

    rows = []
    for name in (["MobileNetV2"] if args.quick else list(MODELS)):
        keras.utils.set_random_seed(0)
        model = getattr(keras.applications, name)(weights=None, classes=100, **MODELS[name])
        shape = model.inputs[0].shape[1:]
        data = [np.random.default_rng(i).uniform(0, 1, (8, *shape)).astype(np.float32) for i in range(2)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantized = iqkeras.quantize_model(model, weights_method="pot", activation_method="uniform",
                                               representative_data=data, verbose=0)
        holders = sum(isinstance(layer, iqkeras.ActivationQuantizationHolder) for layer in quantized.layers)
        floor = rebuild(quantized, lambda layer: Copy(name=layer.name) if isinstance(
            layer, iqkeras.ActivationQuantizationHolder) else clone_layer(layer), lambda n: [])
        floor.set_weights(quantized.get_weights())
        x = tf.constant(data[0][:1])
        fns = {k: tf.function(lambda t, m=m: m(t, training=False)) for k, m in
               (("float", model), ("quantized", quantized), ("floor", floor))}
        for fn in fns.values():
            fn(x)
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(7 if args.quick else 21):
            for k, fn in fns.items():
                start = time.perf_counter()
                for _ in range(5):
                    fn(x)
                times[k].append(time.perf_counter() - start)

        def ratio(a, b, times=times):
            return statistics.median(p / q for p, q in zip(times[a], times[b], strict=True))

        rows.append({"model": name, "holders": holders, "quantized/float": round(ratio("quantized", "float"), 3),
                     "floor/float": round(ratio("floor", "float"), 3),
                     "quantized/floor": round(ratio("quantized", "floor"), 3)})
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"cases": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
