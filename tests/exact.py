"""Shared helpers for exactness tests: bitwise comparison and the three execution modes."""

import numpy as np
import tensorflow as tf

MODES = ("eager", "graph", "xla")


def run(fn, x, mode):
    """Call ``fn(x)`` eagerly, inside ``tf.function`` or inside ``tf.function(jit_compile=True)``."""
    if mode == "eager":
        return fn(x)
    return tf.function(fn, jit_compile=(mode == "xla"))(x)


def mismatches(got, want) -> int:
    """Elements that differ bit for bit (NaN equals NaN; -0.0 differs from 0.0)."""
    got = np.asarray(got, dtype=np.float32)
    want = np.asarray(want, dtype=np.float32)
    if got.shape != want.shape:
        raise ValueError(f"shape {got.shape} != {want.shape}")
    both_nan = np.isnan(got) & np.isnan(want)
    return int(np.count_nonzero((got.view(np.uint32) != want.view(np.uint32)) & ~both_nan))
