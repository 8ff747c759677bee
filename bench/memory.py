"""Extra memory of one call: the peak of TensorFlow's CPU allocator during the call over its use before it.

Run by ``run.py`` in a fresh process (``tf.config.experimental.get_memory_info("CPU:0")``); the tensor is 2**24
float32 elements (64 MiB), a power of two so that the allocator's rounding does not blur the ratio.
Prints one JSON line.
"""

from __future__ import annotations

import gc
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import run  # noqa: E402
import tensorflow as tf  # noqa: E402

MEMORY_SHAPE = (4, 4, 1024, 1024)
MEMORY_SHAPE_QUICK = (4, 4, 512, 512)


def extra(fn, x, warm_up: int = 2) -> float:
    """Peak bytes TensorFlow's CPU allocator adds during one call of ``fn(x)`` (output included), in units of x."""
    for _ in range(warm_up):  # tracing and compiling
        y = fn(x)
        del y
        gc.collect()
    tf.config.experimental.reset_memory_stats("CPU:0")
    base = tf.config.experimental.get_memory_info("CPU:0")["current"]
    y = fn(x)
    peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
    del y
    gc.collect()
    return (peak - base) / (int(np.prod(x.shape)) * 4)


def main() -> None:
    quick = "--quick" in sys.argv
    shape = MEMORY_SHAPE_QUICK if quick else MEMORY_SHAPE
    out = {"mbytes": int(np.prod(shape)) * 4 / 2**20, "elements": int(np.prod(shape)), "cases": []}
    for config in ("pc_last", "pc_middle", "pc_first"):
        q, m, axis = run.build(config, shape)
        x_np = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)  # exactness is not measured here
        x = tf.constant(x_np)
        perm = [i for i in range(len(shape)) if i != axis] + [axis]
        x_op = tf.constant(np.ascontiguousarray(np.transpose(x_np, perm)))
        del x_np
        cands = [("iqcore", "eager", lambda t, q=q: q(t), x)]
        if not quick:
            cands.append(("iqcore", "graph", run.in_mode(lambda t, q=q: q(t), "graph"), x))
        cands.append(("tf_op", "eager", run.raw_op(q.grid), x_op))
        if m is not None:
            cands.append(("mct", "eager", lambda t, m=m: m(t), x))
        for name, mode, fn, arg in cands:
            out["cases"].append({"config": config, "mode": mode, "candidate": name,
                                 "extra_over_tensor": round(extra(fn, arg), 3)})
        # The very first call of a new quantizer, no warm-up (compiling, for a tensor this large).
        fresh, _, _ = run.build(config, shape)
        out["cases"].append({"config": config, "mode": "eager, first call", "candidate": "iqcore",
                             "extra_over_tensor": round(extra(lambda t, fresh=fresh: fresh(t), x, warm_up=0), 3)})
        del x, x_op
        gc.collect()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
