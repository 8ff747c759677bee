"""Small float and quantized Keras models shared by the tests/test_keras_*.py files."""

import json
import os
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import tensorflow as tf

import iqcore
from iqcore.keras import ActivationQuantizationHolder, QuantizationWrapper, quantize_model

keras = tf.keras
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def batches(shape, n=4, batch=8, seed=0, low=-1.0, high=1.0):
    """``n`` float32 batches of inputs, uniform in [low, high]."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(low, high, (batch, *shape)).astype(np.float32) for _ in range(n)]


def cnn(seed=0):
    """A float CNN with Conv2D, DepthwiseConv2D and Dense layers (16x16x3 input)."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inp)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dw")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(10, name="fc")(x)
    return keras.Model(inp, x, name="cnn")


def quantized_cnn(weights_method="symmetric", weights_bits=8, activation_method="uniform", seed=0):
    """:func:`cnn` quantized by :func:`iqcore.keras.quantize_model` with calibration data."""
    return quantize_model(cnn(seed), weights_method=weights_method, weights_bits=weights_bits,
                          activation_method=activation_method, representative_data=batches((16, 16, 3)))


def symmetric(shape, axis, bits=8, seed=1, narrow_range=True, method="symmetric"):
    """A per-channel weights quantizer with random (or power-of-two) thresholds for a weight of ``shape``."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0.05, 0.5, shape[axis])
    if method == "pot":
        t = 2.0 ** np.ceil(np.log2(t))
    return iqcore.get_quantizer(method, "weights", num_bits=bits, threshold=t.tolist(), per_channel=True,
                                channel_axis=axis, input_rank=len(shape), narrow_range=narrow_range)


def uniform_activation(low=-1.0, high=1.0, bits=8):
    return iqcore.get_quantizer("uniform", "activation", num_bits=bits, min_range=low, max_range=high)


def wrapped_dense_model(units_in=12, units_out=6, seed=0):
    """Input holder -> Dense wrapped with a per-channel symmetric kernel quantizer -> output holder."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((units_in,))
    x = ActivationQuantizationHolder(uniform_activation())(inp)
    x = QuantizationWrapper(keras.layers.Dense(units_out), {"kernel": symmetric((units_in, units_out), 1)})(x)
    x = ActivationQuantizationHolder(uniform_activation(-4.0, 4.0))(x)
    return keras.Model(inp, x)


def run_python(code: str, env=None, timeout=240) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python process (the test's interpreter) and return the finished process."""
    full_env = dict(os.environ)
    full_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=REPO)


def fresh_process_mismatches(model, x, folder) -> int:
    """Save ``model`` as ``.keras`` in ``folder``, reload it in a fresh process with ``iqcore.load_model(...,
    safe_mode=True)`` and return how many of its outputs on ``x`` differ in bits from ``model``'s."""
    path, x_path, y_path = (os.path.join(folder, name) for name in ("m.keras", "x.npy", "y.npy"))
    model.save(path)
    np.save(x_path, x)
    np.save(y_path, np.asarray(model(x)))
    proc = run_python(f"""
        import numpy as np, iqcore
        model = iqcore.load_model({path!r}, safe_mode=True)
        y, expected = np.asarray(model(np.load({x_path!r}))), np.load({y_path!r})
        print("MISMATCHES", int(np.count_nonzero(y.view(np.uint32) != expected.view(np.uint32))))
    """)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("MISMATCHES ")]
    if not lines:
        raise RuntimeError(f"the fresh process failed: {proc.stderr[-3000:]}")
    return int(lines[-1].split()[1])


def tampered(src, dst, edit):
    """Copy the .keras file ``src`` to ``dst`` with ``edit(config)`` applied to its config.json.

    json writes NaN/Infinity, which Keras reads back, so non-finite values can be planted too.
    """
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                edit(config)
                data = json.dumps(config).encode()
            zout.writestr(item, data)
    return dst
