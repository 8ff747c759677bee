"""How closely the int8 TFLite interpreter follows the quantized Keras model it was converted from.

    python bench/keras_tflite_agreement.py [--samples 256] [--json out.json]

For the 1.6 M-parameter CNN of bench/keras_latency.py (Conv2D, DepthwiseConv2D, Dense, max pooling, global
average pooling) quantized by ``iqcore.keras.quantize_model`` with uniform 8-bit activations and symmetric or
power-of-two weights (8 and 4 bits), converted by ``iqcore.keras.to_tflite`` (which checks every weight scale
against the quantizer's): the share of output elements where the interpreter differs from Keras by exactly
one output step, and the largest difference in steps, on ``--samples`` random inputs the calibration never saw.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras_latency import float_cnn  # noqa: E402

from iqcore.keras import quantize_model, run_tflite, to_tflite  # noqa: E402


def run_int8(flatbuffer: bytes, x: np.ndarray) -> tuple[np.ndarray, float]:
    y, scale, _ = run_tflite(flatbuffer, x)
    return y, scale


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    model = float_cnn()
    rng = np.random.default_rng(0)
    calibration = [rng.uniform(-1, 1, (8, 64, 64, 3)).astype(np.float32) for _ in range(4)]
    x = np.random.default_rng(1).uniform(-1, 1, (args.samples, 64, 64, 3)).astype(np.float32)
    rows = []
    for method, bits in (("symmetric", 8), ("pot", 8), ("symmetric", 4), ("pot", 4)):
        quantized = quantize_model(model, weights_method=method, weights_bits=bits, activation_method="uniform",
                                   representative_data=calibration)
        flatbuffer = to_tflite(quantized)
        want = quantized.predict(x, batch_size=32, verbose=0)
        got, step = run_int8(flatbuffer, x)
        steps = np.abs(got - want) / step
        rows.append({
            "weights": f"{method} {bits}-bit", "activations": "uniform 8-bit", "outputs": int(steps.size),
            "share_exact": float(np.mean(steps < 0.5)),
            "share_off_by_one_step": float(np.mean((steps >= 0.5) & (steps < 1.5))),
            "max_steps": float(steps.max()), "tflite_bytes": len(flatbuffer),
        })
        print(json.dumps(rows[-1]))
    result = {"tensorflow": tf.__version__, "samples": args.samples, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
