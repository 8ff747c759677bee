"""What ``quantize_model`` costs against one float forward pass over the same calibration data.

    python bench/quantize_cost.py                         # chains of 10, 100, 1000 layers and three CNNs
    python bench/quantize_cost.py --models ResNet50 --depths 10 100

Reports, per model, the median time of ``quantize_model`` (symmetric weights, uniform activations, 32
calibration images in batches of 16) and of one float forward pass over the same batches (eager, as the
calibration pass runs), and their ratio; the part of it spent rebuilding Keras models (``rebuild`` and
``copy_weights``), and the rest (observing, calibrating, bias snapping) as a ratio to the float pass; the
observation pass alone as a ratio to the float pass; the time Python's cyclic garbage collector ran during
``quantize_model`` (whichever part it interrupted); and the rebuild time per layer, which stays flat when the
rebuild grows linearly with the layer count.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import warnings

import numpy as np

CNNS = {"ResNet50": (64, 64, 3), "DenseNet121": (64, 64, 3), "NASNetMobile": (96, 96, 3)}


def chain(keras, depth: int):
    """``depth`` layers: Dense + ReLU blocks with identity kernels, so activations neither vanish nor explode."""
    inp = keras.Input((16,))
    x = inp
    for i in range(depth // 2):
        x = keras.layers.Dense(16, kernel_initializer="identity", name=f"d{i}")(x)
        x = keras.layers.ReLU(name=f"r{i}")(x)
    return keras.Model(inp, x)


class RebuildClock:
    """Adds up the time ``quantize_model`` spends rebuilding Keras models and copying weights into them (the
    part that grows with the layer count), by timing iqcore's two model-surgery functions where they are used;
    also the time of the observation pass (``observe_seconds``) and of Python's cyclic garbage collector, in
    all (``gc_seconds``) and while rebuilding (``rebuild_gc_seconds``). A full collection walks every object
    of the process (TensorFlow's and Keras' included), so its cost depends on the process, not on the model;
    it runs when the objects created since the last one reach a quarter of the older ones."""

    def __init__(self):
        from iqcore.keras import _graph, _quantize

        self.seconds = self.observe_seconds = self.gc_seconds = self.rebuild_gc_seconds = 0.0
        self.gc_start = 0.0
        self.rebuilding = 0
        self.patched = []
        for module in (_graph, _quantize):
            for name in ("rebuild", "copy_weights"):
                self._patch(module, name, "seconds")
        self._patch(_quantize, "observe", "observe_seconds")
        gc.callbacks.append(self._gc)

    def _patch(self, module, name: str, total: str) -> None:
        original = getattr(module, name)
        setattr(module, name, self._timed(original, total))
        self.patched.append((module, name, original))

    def _timed(self, fn, total: str):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            self.rebuilding += total == "seconds"
            try:
                return fn(*args, **kwargs)
            finally:
                self.rebuilding -= total == "seconds"
                setattr(self, total, getattr(self, total) + time.perf_counter() - start)
        return timed

    def _gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self.gc_start = time.perf_counter()
        else:
            seconds = time.perf_counter() - self.gc_start
            self.gc_seconds += seconds
            if self.rebuilding:
                self.rebuild_gc_seconds += seconds

    def close(self):
        gc.callbacks.remove(self._gc)
        for module, name, original in self.patched:
            setattr(module, name, original)


def measure(model, data, rounds: int) -> dict:
    from iqcore import keras as iqkeras

    float_times, quant_times, rebuild_times, observe_times, gc_times, rebuild_gc_times = [], [], [], [], [], []
    for _ in range(rounds):
        start = time.perf_counter()
        for batch in data:
            model(batch, training=False)
        float_times.append(time.perf_counter() - start)
        clock = RebuildClock()
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                iqkeras.quantize_model(model, weights_method="symmetric", activation_method="uniform",
                                       representative_data=data, verbose=0)
            quant_times.append(time.perf_counter() - start)
        finally:
            clock.close()
        rebuild_times.append(clock.seconds)
        observe_times.append(clock.observe_seconds)
        gc_times.append(clock.gc_seconds)
        rebuild_gc_times.append(clock.rebuild_gc_seconds)
    f, q, r, o, g, rg = (statistics.median(t) for t in (float_times, quant_times, rebuild_times, observe_times,
                                                          gc_times, rebuild_gc_times))
    return {"layers": len(model.layers), "float_pass_s": round(f, 3), "quantize_s": round(q, 3),
            "ratio": round(q / f, 1), "rebuild_s": round(r, 3), "calibration_ratio": round((q - r) / f, 2),
            "observe_ratio": round(o / f, 2), "gc_s": round(g, 3), "rebuild_gc_s": round(rg, 3),
            "rebuild_ms_per_layer": round(1000 * r / len(model.layers), 2),
            "rebuild_ms_per_layer_without_gc": round(1000 * (r - rg) / len(model.layers), 2),
            "ms_per_layer": round(1000 * q / len(model.layers), 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="*", default=[10, 100, 1000])
    parser.add_argument("--models", nargs="*", default=list(CNNS), choices=list(CNNS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="")
    parser.add_argument("--quick", action="store_true", help="chains of 10 and 100 layers, ResNet50 only, 1 round")
    args = parser.parse_args(argv)
    if args.quick:
        args.depths, args.models, args.rounds = [10, 100], ["ResNet50"], 1
    # Keras builds and clones a functional graph recursively: a 1000-layer chain needs more than Python's default.
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20 * max(args.depths, default=0) + 1000))
    import tensorflow as tf

    keras = tf.keras
    rows = []
    rng = np.random.default_rng(0)
    for depth in args.depths:
        data = [rng.uniform(0, 1, (16, 16)).astype(np.float32) for _ in range(2)]
        rows.append({"model": f"chain of {depth}", **measure(chain(keras, depth), data, args.rounds)})
        print(json.dumps(rows[-1]), flush=True)
    for name in args.models:
        shape = CNNS[name]
        model = getattr(keras.applications, name)(weights=None, input_shape=shape, classes=10)
        data = [rng.uniform(-1, 1, (16, *shape)).astype(np.float32) for _ in range(2)]
        rows.append({"model": name, **measure(model, data, max(1, args.rounds - 2))})
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)
    print("\n| model | layers | float pass (s) | quantize_model (s) | ratio | rebuild (s) | rest / float pass | "
          "observe / float pass | gc (s) | rebuild ms per layer | without gc |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['layers']} | {r['float_pass_s']} | {r['quantize_s']} | {r['ratio']} | "
              f"{r['rebuild_s']} | {r['calibration_ratio']} | {r['observe_ratio']} | {r['gc_s']} | "
              f"{r['rebuild_ms_per_layer']} | {r['rebuild_ms_per_layer_without_gc']} |")
    print(json.dumps({"cases": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
