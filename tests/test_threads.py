"""Concurrency: one quantizer called from eight threads, and plugins discovered by eight threads at once."""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tensorflow as tf
from exact import mismatches

import iqcore
from iqcore import _grid as g

THREADS = 8


@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_eight_threads_calling_one_quantizer_get_the_serial_results(mode, per_channel):
    layout = dict(per_channel=True, channel_axis=1, input_rank=2) if per_channel else {}
    q = iqcore.get_quantizer("symmetric", "weights", num_bits=7, threshold=[0.7, 1.3, 2.9] if per_channel else [1.3],
                             **layout)
    inputs = [np.random.default_rng(i).normal(0, 2, (200, 3)).astype(np.float32) for i in range(THREADS * 4)]
    fn = q if mode == "eager" else tf.function(q, jit_compile=(mode == "xla"))  # first trace happens in the pool
    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(lambda x: fn(tf.constant(x)).numpy(), inputs))
    assert sum(mismatches(r, g.fake_quant(x, q.grid)) for r, x in zip(results, inputs, strict=True)) == 0


def test_eight_threads_building_quantizers_during_first_discovery_all_succeed():
    script = """
import json, threading
from concurrent.futures import ThreadPoolExecutor
import iqcore
barrier = threading.Barrier(8)
def build(i):
    barrier.wait()
    method = ("pot", "symmetric", "uniform")[i % 3]
    params = {"min_range": [-1.0], "max_range": [1.0]} if method == "uniform" else {"threshold": [1.0]}
    q = iqcore.get_quantizer(method, "weights", num_bits=8, **params)
    return [type(q).__name__, len(iqcore.list_quantizers())]
with ThreadPoolExecutor(8) as pool:
    print(json.dumps(list(pool.map(build, range(8)))))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "IQCORE_STRICT_PLUGINS": "1"})
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert len({n for _, n in results}) == 1 and results[0][1] >= 6
    assert {name for name, _ in results} == {"WeightsPOTInferableQuantizer", "WeightsSymmetricInferableQuantizer",
                                             "WeightsUniformInferableQuantizer"}
