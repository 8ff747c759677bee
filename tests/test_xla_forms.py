"""The XLA-context kernel forms (iqcore._kernels.XLA_FORMS): the form chosen for the running TensorFlow is exact,
unproven versions get the staged form, and XLA auto-clustering is detected (graphs then use the staged form)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from exact import mismatches

import iqcore
from iqcore import _grid as g
from iqcore import _kernels as kernels


def test_unproven_versions_run_the_staged_form(monkeypatch):
    assert kernels.xla_forms("0.0.0-unknown") == ("staged", "staged")
    monkeypatch.setitem(kernels.XLA_PROVEN, "9.9.9", (("cast", "tf_op", "staged"), ("tf_op", "staged", "cast")))
    assert kernels.xla_forms("9.9.9") == ("tf_op", "cast")  # cheapest first; tf_op is per-tensor only
    monkeypatch.setitem(kernels.XLA_PROVEN, "9.9.8", (("staged",), ()))
    assert kernels.xla_forms("9.9.8") == ("staged", "staged")


def test_the_barrier_form_is_not_chosen_where_tensorflow_has_no_optimization_barrier(monkeypatch):
    monkeypatch.setitem(kernels.XLA_PROVEN, "9.9.7", (("barrier", "lean"), ("barrier", "staged")))
    monkeypatch.setattr(kernels, "_xla_barrier", None)
    assert kernels.xla_forms("9.9.7") == ("lean", "staged")


def test_forms_in_use_are_proven_on_this_version():
    per_tensor, per_channel = kernels.XLA_PROVEN.get(tf.__version__, ((), ()))
    if os.environ.get("IQCORE_XLA_FORM"):
        pytest.skip("IQCORE_XLA_FORM overrides the choice")
    assert kernels.XLA_FORM_PER_TENSOR in (*per_tensor, "staged")
    assert kernels.XLA_FORM_PER_CHANNEL in (*per_channel, "staged")
    assert kernels.XLA_FORM_PER_CHANNEL != "tf_op"


def _quantizers(num_bits, narrow, seed):
    rng = np.random.default_rng(seed)
    common = dict(num_bits=num_bits, narrow_range=narrow)
    return [
        iqcore.get_quantizer("uniform", "weights", min_range=[-rng.uniform(0.01, 4)], max_range=[rng.uniform(0.01, 4)],
                             **common),
        iqcore.get_quantizer("uniform", "weights", min_range=(-rng.uniform(0.01, 4, 6)).tolist(),
                             max_range=rng.uniform(0.01, 4, 6).tolist(), per_channel=True, channel_axis=2,
                             input_rank=3, **common),
    ]


@pytest.mark.parametrize("num_bits", [2, 5, 8, 13, 16])
def test_chosen_xla_forms_are_exact_under_jit_compile(num_bits):
    """The forms iqcore runs under ``jit_compile=True`` on this TensorFlow, on probe inputs."""
    for narrow in (False, True):
        for q in _quantizers(num_bits, narrow, seed=num_bits + 20 * narrow):
            x = g.probe_tensor(q.grid, per_channel_count=1024, seed=num_bits)
            f = tf.function(lambda t, q=q: q(t), jit_compile=True)
            assert mismatches(f(tf.constant(x)), g.fake_quant(x, q.grid)) == 0


@pytest.mark.parametrize("form", ["cast", "staged"])
def test_a_form_can_be_forced_from_the_environment(form):
    code = """
import iqcore._kernels as k
print(k.XLA_FORM_PER_TENSOR, k.XLA_FORM_PER_CHANNEL)
"""
    env = dict(os.environ, IQCORE_XLA_FORM=form, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == [form, form]


AUTO_JIT = """
import sys
import numpy as np, tensorflow as tf, iqcore
from iqcore import _grid as g, _kernels as kernels
if sys.argv[1] == "set_jit":
    tf.config.optimizer.set_jit(True)
assert kernels.auto_jit()


def around(t, f):  # a few elementwise ops around the quantizer, so that auto-clustering forms a cluster
    u = tf.maximum(tf.minimum(t, 1e30), -1e30)
    u = tf.where(tf.math.is_nan(t), t, u)
    return f(tf.where(tf.math.is_inf(t), t, u))


def count(y, want):
    y = np.asarray(y, np.float32)
    return int(((y.view(np.uint32) != want.view(np.uint32)) & ~(np.isnan(y) & np.isnan(want))).sum())


q = iqcore.get_quantizer("uniform", "activation", num_bits=8, min_range=[-0.73], max_range=[1.91])
qc = iqcore.get_quantizer("uniform", "weights", num_bits=7, narrow_range=True, min_range=[-0.73, -1.1, -2.3],
                          max_range=[1.91, 0.3, 1.7], per_channel=True, channel_axis=1, input_rank=2)
x = np.concatenate([g.probe_tensor(q.grid)] * 20)  # ties, their ±1-ulp neighbours, ends, ±inf, NaN
xc = g.probe_tensor(qc.grid, per_channel_count=1024)
op = lambda t: tf.quantization.fake_quant_with_min_max_vars(t, q.grid.min, q.grid.max, num_bits=8)
raw = count(tf.function(lambda t: around(t, op))(tf.constant(x)), g.fake_quant(x, q.grid))
per_tensor = count(tf.function(lambda t: around(t, q))(tf.constant(x)), g.fake_quant(x, q.grid))
per_channel = count(tf.function(lambda t: around(t, qc))(tf.constant(xc)), g.fake_quant(xc, qc.grid))
print(raw, per_tensor, per_channel)
"""


@pytest.mark.parametrize("how", ["TF_XLA_FLAGS", "set_jit"])
def test_auto_clustering_is_detected_and_stays_exact(how):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("IQCORE_XLA_FORM", None)
    if how == "TF_XLA_FLAGS":
        env["TF_XLA_FLAGS"] = "--tf_xla_auto_jit=2 --tf_xla_cpu_global_jit"
    out = subprocess.run([sys.executable, "-c", AUTO_JIT, how], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    raw, per_tensor, per_channel = (int(v) for v in out.stdout.split()[-3:])
    assert (per_tensor, per_channel) == (0, 0)
    if raw == 0:
        pytest.skip("auto-clustering did not compile TensorFlow's op here: nothing to detect")


@pytest.mark.parametrize("flags,on", [("", False), ("--tf_xla_auto_jit=0", False), ("--tf_xla_auto_jit=-1", False),
                                      ("--tf_xla_auto_jit=2", True), ("--tf_xla_auto_jit=1 --xla_foo=1", True),
                                      ("--tf_xla_cpu_global_jit", True)])
def test_auto_jit_flags(flags, on, monkeypatch):
    monkeypatch.setenv("TF_XLA_FLAGS", flags)
    if tf.config.optimizer.get_jit():
        pytest.skip("auto-clustering is on in this process")
    assert kernels.auto_jit() is on
