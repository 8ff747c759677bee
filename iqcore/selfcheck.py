"""Check, on this machine's TensorFlow, that every installed quantizer is bit-exact with the reference.

    python -m iqcore.selfcheck            # full sweep: every method, target, bit width and layout
    python -m iqcore.selfcheck --quick    # a few bit widths

For each execution mode (eager, ``tf.function``, ``tf.function(jit_compile=True)``) it counts the elements
checked and the elements that differ bit for bit from :func:`iqcore.grid.fake_quant`, which itself is
checked against TensorFlow's ``fake_quant_with_min_max_vars`` on the same inputs (row ``tf-op``). Inputs
are :func:`iqcore.grid.probe_tensor`: rounding ties, their ±1-ulp neighbours, ends, ±inf, NaN, random.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from iqcore import grid as g
from iqcore import registry


def _parameters(cls, num_bits, rng, channels):
    names = set(cls.__init__.__code__.co_varnames)
    if "min_range" in names:
        p = {"min_range": (-rng.uniform(0, 8, channels)).tolist(), "max_range": rng.uniform(0.01, 8, channels).tolist()}
    elif cls.method == "pot":
        p = {"threshold": (2.0 ** rng.integers(-8, 8, channels)).tolist()}
    else:
        p = {"threshold": rng.uniform(0.01, 8, channels).tolist()}
    if "signed" in names:
        p["signed"] = bool(rng.integers(0, 2))
    return {"num_bits": num_bits, **p}


def _cases(bits, rng):
    """(quantizer, input) pairs: per-tensor for every class, per-channel on every axis of ranks 1-4."""
    for info in registry.list_quantizers():
        names = set(info.cls.__init__.__code__.co_varnames)
        if "threshold" not in names and "min_range" not in names:
            continue  # a third-party parameterisation this sweep does not know how to fill
        for num_bits in bits:
            narrow = bool(num_bits % 2)
            try:
                q = info.cls(narrow_range=narrow, **_parameters(info.cls, num_bits, rng, 1))
            except TypeError:
                break  # its constructor takes parameters this sweep does not know how to fill
            yield q, g.probe_tensor(q.grid, seed=num_bits)
            if "per_channel" not in names:
                continue
            for rank in range(1, 5):
                for axis in range(rank):
                    channels = 600 if rank == 1 else 3
                    q = info.cls(narrow_range=narrow, per_channel=True, channel_axis=axis, input_rank=rank,
                                 **_parameters(info.cls, num_bits, rng, channels))
                    yield q, g.probe_tensor(q.grid, per_channel_count=128, seed=num_bits)


def sweep(bits) -> dict[str, list[int]]:
    """Elements checked and bitwise mismatches per mode, plus the reference against TF's op."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    counts = {mode: [0, 0] for mode in ("tf-op", "eager", "graph", "xla")}
    for q, x in _cases(bits, rng):
        want = g.fake_quant(x, q.grid)
        xt = tf.constant(x)
        outputs = {
            "eager": q(xt),
            "graph": tf.function(q)(xt),
            "xla": tf.function(q, jit_compile=True)(xt),
        }
        if q.grid.axis is None:
            outputs["tf-op"] = tf.quantization.fake_quant_with_min_max_vars(
                xt, q.grid.min, q.grid.max, num_bits=q.grid.num_bits, narrow_range=q.grid.narrow_range)
        for mode, got in outputs.items():
            got = np.asarray(got, np.float32)
            differ = (got.view(np.uint32) != want.view(np.uint32)) & ~(np.isnan(got) & np.isnan(want))
            counts[mode][0] += x.size
            counts[mode][1] += int(differ.sum())
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m iqcore.selfcheck", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="bit widths 2, 8 and 16 only")
    args = parser.parse_args(argv)
    bits = (2, 8, 16) if args.quick else tuple(range(2, 17))
    counts = sweep(bits)
    print(f"{'mode':<8}{'elements':>12}{'mismatches':>12}")
    for mode, (checked, bad) in counts.items():
        print(f"{mode:<8}{checked:>12}{bad:>12}")
    return 1 if any(bad for _, bad in counts.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
