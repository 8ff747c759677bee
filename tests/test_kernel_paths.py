"""Every execution path of iqcore._kernels.fake_quant is bit-exact (the speed paths of docs/performance.md).

Eager per-channel calls take one of three paths depending on size and call count (NumPy for small tensors
and for the first call with a shape, the separately compiled kernel afterwards or at once for large
tensors); graph mode calls the compiled kernel from inside the graph, or the staged kernel op by op with
IQCORE_XLA=0. Each is compared with the NumPy
reference on probe inputs (ties, their ±1-ulp neighbours, range ends, ±inf, NaN).
"""

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from exact import mismatches

import iqcore
from iqcore import _grid as g
from iqcore import _kernels as kernels


def quantizer(axis, rank, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    return iqcore.get_quantizer("symmetric", "weights", num_bits=int(rng.integers(2, 17)),
                                threshold=rng.uniform(0.01, 8, channels).tolist(), per_channel=True,
                                channel_axis=axis, input_rank=rank)


def tiled(q, repeats):
    """The probe tensor repeated along a non-channel axis until it is big enough for the path under test."""
    x = g.probe_tensor(q.grid, per_channel_count=256)
    other = 0 if q.grid.axis != 0 else q.grid.rank - 1
    return np.ascontiguousarray(np.concatenate([x] * repeats, axis=other))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_eager_paths_small_first_call_compiled_are_exact(axis, monkeypatch):
    q = quantizer(axis, 3, seed=axis)
    small = g.probe_tensor(q.grid, per_channel_count=64)
    assert small.size <= kernels.SMALL_EAGER
    big = tiled(q, 40)
    assert big.size > kernels.SMALL_EAGER
    want_small, want_big = g.fake_quant(small, q.grid), g.fake_quant(big, q.grid)
    assert mismatches(q(tf.constant(small)), want_small) == 0
    for _ in range(3):  # NumPy, then the compiled kernel
        assert mismatches(q(tf.constant(big)), want_big) == 0
    monkeypatch.setattr(kernels, "COMPILE_AT_ONCE", 1)
    q2 = quantizer(axis, 3, seed=axis)
    assert mismatches(q2(tf.constant(big)), want_big) == 0


@pytest.mark.parametrize("dtype", [tf.float64, tf.float16])
def test_eager_non_float32_inputs_follow_the_same_paths(dtype):
    q = quantizer(1, 2, channels=5, seed=3)
    x = tiled(q, 1)
    xd = tf.cast(tf.constant(x), dtype)
    want = g.fake_quant(tf.cast(xd, tf.float32).numpy(), q.grid)
    for _ in range(3):
        y = q(xd)
        assert y.dtype == dtype
        assert mismatches(tf.cast(y, tf.float32), tf.cast(tf.constant(want), dtype)) == 0


def test_graph_mode_calls_the_compiled_kernel_exactly():
    q = quantizer(2, 4, channels=7, seed=5)
    x = g.probe_tensor(q.grid, per_channel_count=256)
    f = tf.function(q)
    ops = f.get_concrete_function(tf.constant(x)).graph.get_operations()
    assert any(op.node_def.attr["_XlaMustCompile"].b for op in ops if "_XlaMustCompile" in op.node_def.attr)
    assert mismatches(f(tf.constant(x)), g.fake_quant(x, q.grid)) == 0


def test_xla_can_be_turned_off(monkeypatch):
    monkeypatch.setattr(kernels, "USE_XLA", False)
    q = quantizer(0, 2, channels=4, seed=6)
    x = tiled(q, 40)
    want = g.fake_quant(x, q.grid)
    for _ in range(3):
        assert mismatches(q(tf.constant(x)), want) == 0
    assert mismatches(tf.function(q)(tf.constant(x)), want) == 0


def test_per_tensor_eager_calls_reuse_cached_parameters():
    q = iqcore.get_quantizer("uniform", "activation", num_bits=7, min_range=[-0.73], max_range=[1.91])
    x = g.probe_tensor(q.grid)
    for _ in range(2):
        assert mismatches(q(tf.constant(x)), g.fake_quant(x, q.grid)) == 0
    assert kernels._plan(q.grid) is kernels._plan(q.grid)


LAYOUTS = [(rank, axis) for rank in range(1, 5) for axis in range(rank)]


@pytest.mark.parametrize("method", ["pot", "symmetric", "uniform"])
@pytest.mark.parametrize("rank,axis", LAYOUTS)
def test_compiled_eager_kernel_is_exact_on_every_axis(method, rank, axis, monkeypatch):
    """Every eager per-channel call through the compiled float32 kernel (small tensors included)."""
    monkeypatch.setattr(kernels, "SMALL_EAGER", 0)
    monkeypatch.setattr(kernels, "COMPILE_AT_ONCE", 1)
    rng = np.random.default_rng(rank * 10 + axis)
    channels = 300 if rank == 1 else 5
    num_bits = int(rng.integers(2, 17))
    narrow = bool(rng.integers(0, 2))
    if method == "uniform":
        p = dict(min_range=(-rng.uniform(0, 8, channels)).tolist(), max_range=rng.uniform(0.01, 8, channels).tolist())
    elif method == "pot":
        p = dict(threshold=(2.0 ** rng.integers(-8, 8, channels)).tolist())
    else:
        p = dict(threshold=rng.uniform(0.01, 8, channels).tolist())
    q = iqcore.get_quantizer(method, "weights", num_bits=num_bits, narrow_range=narrow, per_channel=True,
                             channel_axis=axis, input_rank=rank, **p)
    x = g.probe_tensor(q.grid, per_channel_count=256)
    assert mismatches(q(tf.constant(x)), g.fake_quant(x, q.grid)) == 0


def test_kernels_first_imported_while_tracing_still_tell_eager_from_symbolic_tensors():
    code = """
import numpy as np, tensorflow as tf, iqcore
from iqcore import _grid as g
q = iqcore.get_quantizer("symmetric", "weights", num_bits=8, threshold=[0.3, 1.7, 2.9], per_channel=True,
                         channel_axis=1, input_rank=2)
x = g.probe_tensor(q.grid)
y = tf.function(q)(tf.constant(x))  # iqcore._kernels is imported during this trace
z = q(tf.constant(x))
want = g.fake_quant(x, q.grid).view(np.uint32)
print(int((y.numpy().view(np.uint32) != want).sum() + (z.numpy().view(np.uint32) != want).sum()))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "0"


def test_compiled_eager_kernel_serves_every_shape_of_a_rank(monkeypatch):
    monkeypatch.setattr(kernels, "SMALL_EAGER", 0)
    monkeypatch.setattr(kernels, "COMPILE_AT_ONCE", 1)
    q = quantizer(1, 3, channels=4, seed=9)
    for other in ((2, 8), (5, 3), (1, 1)):
        x = np.random.default_rng(other[0]).normal(size=(other[0], 4, other[1])).astype(np.float32) * 4
        y = q(tf.constant(x))
        assert y.shape == x.shape
        assert mismatches(y, g.fake_quant(x, q.grid)) == 0


@pytest.mark.parametrize("num_bits", [4, 8, 12])
def test_compiled_kernel_on_every_tie_of_many_channels(num_bits, monkeypatch):
    """Every tie of 64 non-power-of-two channels, with its ±1-ulp neighbours, eager (compiled) and graph."""
    monkeypatch.setattr(kernels, "SMALL_EAGER", 0)
    monkeypatch.setattr(kernels, "COMPILE_AT_ONCE", 1)
    rng = np.random.default_rng(num_bits)
    q = iqcore.get_quantizer("uniform", "weights", num_bits=num_bits, min_range=(-rng.uniform(0.01, 8, 64)).tolist(),
                             max_range=rng.uniform(0.01, 8, 64).tolist(), per_channel=True, channel_axis=1,
                             input_rank=2)
    gr = q.grid
    k = np.arange(min(2**num_bits - 1, 1024), dtype=np.float32)[:, None]
    ties = (gr.nudged_min[None, :] + (k + np.float32(0.5)) * gr.scale[None, :]).astype(np.float32)
    x = np.concatenate([ties, np.nextafter(ties, np.float32(-np.inf)), np.nextafter(ties, np.float32(np.inf))])
    want = g.fake_quant(x, gr)
    assert mismatches(q(tf.constant(x)), want) == 0
    assert mismatches(tf.function(q)(tf.constant(x)), want) == 0


@pytest.mark.parametrize("rank,axis", LAYOUTS)
def test_tiny_eager_results_are_exact_aligned_and_independent(rank, axis):
    """Eager per-channel tensors of at most TINY_EAGER elements: written into the aligned arena, handed over
    without a copy; later calls (arena slices reused after a new arena starts) leave earlier results alone."""
    rng = np.random.default_rng(rank * 7 + axis)
    channels = 3
    q = iqcore.get_quantizer("uniform", "weights", num_bits=int(rng.integers(2, 17)), narrow_range=bool(axis % 2),
                             min_range=(-rng.uniform(0, 4, channels)).tolist(),
                             max_range=rng.uniform(0.01, 4, channels).tolist(), per_channel=True,
                             channel_axis=axis, input_rank=rank)
    probes = g.probe_tensor(q.grid, per_channel_count=64)
    assert probes.size <= kernels.TINY_EAGER
    # Every probe, in tiny tensors: the probes cut along their longest non-channel axis (whole at rank 1).
    other = max((i for i in range(rank) if i != axis), key=lambda i: probes.shape[i], default=axis)
    pieces = [np.ascontiguousarray(p) for p in np.array_split(probes, 4, axis=other)] if rank > 1 else [probes]
    kept = []
    for _ in range(2 * kernels._ARENA_FLOATS // min(p.size for p in pieces) // len(pieces) + 1):
        for x in pieces:
            y = q(tf.constant(x))
            assert y.shape == x.shape and y.dtype == tf.float32
            kept.append((x, y))
    if kernels._adopt is not None:
        assert all(y._numpy().ctypes.data % 64 == 0 for _, y in kept)
    for x, y in kept:
        assert mismatches(y, g.fake_quant(x, q.grid)) == 0


def test_tiny_eager_calls_from_threads_are_exact():
    from concurrent.futures import ThreadPoolExecutor

    q = quantizer(1, 2, channels=4, seed=11)
    xs = [np.random.default_rng(i).uniform(-9, 9, (5, 4)).astype(np.float32) for i in range(64)]

    def run(x):
        ys = [q(tf.constant(x)) for _ in range(200)]
        return sum(mismatches(y, g.fake_quant(x, q.grid)) for y in ys)

    with ThreadPoolExecutor(4) as pool:
        assert sum(pool.map(run, xs)) == 0
