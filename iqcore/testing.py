"""A conformance suite for quantizer classes, for plugin authors (needs pytest).

Subclass :class:`QuantizerConformance` in a test module, name the subclass ``Test...``, and describe the
class under test::

    from iqcore.testing import QuantizerConformance
    from iq_lut import WeightsLUTInferableQuantizer

    class TestLUTConformance(QuantizerConformance):
        quantizer_class = WeightsLUTInferableQuantizer
        valid_params = [dict(num_bits=3, lut_values=[-128, -40, 0, 40, 127], threshold=[1.0])]
        invalid_params = [dict(num_bits=3, lut_values=[], threshold=[1.0])]

Each inherited test checks one behaviour of every parameter set in ``valid_params``:

* the class is registered under its (method, target) through the plugin's entry point;
* ``q(x)`` keeps ``x``'s shape and dtype;
* ``get_config()`` survives a JSON round trip, and ``from_config`` rebuilds an equal quantizer with
  bit-identical outputs;
* ``to_int`` and ``quantization_params`` agree with the output bit for bit:
  ``float32((to_int(x) - zero_point) * scale) == q(x)``, with every code in ``[qmin, qmax]``;
* every set in ``invalid_params`` (and a set of generic bad values, such as ``num_bits=1`` and unknown config
  keys) raises ``ValueError`` or ``TypeError``, both at construction and in ``from_config``;
* 8 threads calling the same quantizer get exactly the serial results;
* when the Keras integration (:mod:`iqcore.keras`) is installed, a model holding the quantizer saved as
  ``.keras`` reloads in a fresh Python process through ``iqcore.load_model`` with identical outputs;
* ``calibrate`` builds a quantizer of the class from observed data whose config round-trips and whose
  outputs equal its NumPy ``reference`` bit for bit (set ``calibrates = False`` for a class without
  ``calibrate``: then ``quantize_model`` must refuse the method with an error naming it);
* end to end: ``quantize_model`` calibrates the method on a small model, the model is saved, reloaded in a
  fresh process with identical outputs, and ``iqcore inspect`` lists a row of the method.

The checks raise ``AssertionError`` themselves (never with ``assert`` statements), so they also hold under
``python -O``.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from typing import Any, ClassVar

import numpy as np
import pytest

from iqcore import _registry as registry
from iqcore import calibration
from iqcore._grid import dequantize
from iqcore._quantizer import InferableQuantizer

THREADS = 8

# Generic bad values checked for every quantizer whose constructor has the parameter.
GENERIC_BAD_VALUES: dict[str, list[Any]] = {
    "num_bits": [1, 17, 8.5, "8", True, None],
    "per_channel": ["yes", 1],
    "narrow_range": ["no", 0],
    "signed": ["no", 1],
}


def check(condition: bool, message: str) -> None:
    """Raise ``AssertionError(message)`` unless ``condition`` (an ``assert`` that survives ``python -O``)."""
    if not condition:
        raise AssertionError(message)


def check_identical(actual, expected, what: str) -> None:
    """Bit-for-bit equality of two arrays (NaN equal to NaN, -0.0 distinct from 0.0), shapes and dtypes."""
    a, e = np.asarray(actual), np.asarray(expected)
    check(a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}")
    check(a.dtype == e.dtype, f"{what}: dtype {a.dtype} != {e.dtype}")
    same = a.view(np.uint8) == e.view(np.uint8) if a.size else np.array(True)
    if not np.all(same):
        bad = np.flatnonzero(~np.all(same.reshape(a.size, -1), axis=1))
        i = int(bad[0])
        raise AssertionError(
            f"{what}: {bad.size} of {a.size} elements differ; first at flat index {i}: "
            f"{a.reshape(-1)[i]!r} != {e.reshape(-1)[i]!r}"
        )


def keras_available() -> bool:
    """Whether :mod:`iqcore.keras` (the Keras integration) is importable in this environment."""
    return importlib.util.find_spec("iqcore.keras") is not None


def sample_input(quantizer: InferableQuantizer, seed: int = 0, size: int = 4) -> np.ndarray:
    """A float32 input for ``quantizer``: random values over its range and beyond, grid points and ties.

    Per-channel quantizers get a tensor of their ``input_rank`` with the channel count on ``channel_axis``;
    per-tensor ones a rank-4 tensor.
    """
    params = quantizer.quantization_params()
    rng = np.random.default_rng(seed)
    scale = np.atleast_1d(params.scale).astype(np.float64)
    zp = np.atleast_1d(params.zero_point).astype(np.float64)
    low = float(np.min((int(params.qmin) - zp) * scale))
    high = float(np.max((int(params.qmax) - zp) * scale))
    step = float(np.max(scale))
    if params.axis is None:
        shape = [size, size, size, size]
    else:
        config = quantizer.get_config()
        rank = int(config.get("input_rank") or (int(params.axis) + 1))
        shape = [size] * rank
        shape[int(params.axis)] = int(np.size(params.scale))
    layout = [1] * len(shape)
    if params.axis is not None:
        layout[int(params.axis)] = -1
    scale_b = np.broadcast_to(np.reshape(scale, layout), shape)  # each element's own channel
    zp_b = np.broadcast_to(np.reshape(zp, layout), shape)
    values = rng.uniform(low - 3 * step, high + 3 * step, size=shape)
    k = rng.integers(int(params.qmin) - 2, int(params.qmax) + 2, size=shape)
    ties = (k - zp_b + 0.5) * scale_b
    grid_points = (k - zp_b) * scale_b
    which = rng.integers(0, 3, size=shape)
    x = np.where(which == 0, values, np.where(which == 1, ties, grid_points))
    return x.astype(np.float32)


class QuantizerConformance:
    """Inherit in a ``Test...`` class and set the class attributes below; see the module docstring.

    Attributes:
        quantizer_class: The quantizer class under test.
        valid_params: Constructor keyword sets that must work (at least one).
        invalid_params: Constructor keyword sets that must raise ``ValueError`` or ``TypeError``.
        registered: Whether the class must be reachable through ``iqcore.get_quantizer`` (set False for a
            class that is not registered by an entry point).
    """

    quantizer_class: ClassVar[type[InferableQuantizer]]
    valid_params: ClassVar[list[dict[str, Any]]] = []
    invalid_params: ClassVar[list[dict[str, Any]]] = []
    registered: ClassVar[bool] = True
    calibrates: ClassVar[bool] = True
    calibration_settings: ClassVar[calibration.Settings] = calibration.Settings(num_bits=4)

    # -- helpers a subclass may override --------------------------------------------------------------
    def make_input(self, quantizer: InferableQuantizer, seed: int = 0) -> np.ndarray:
        """The float32 input each check quantizes (default: :func:`sample_input`)."""
        return sample_input(quantizer, seed)

    def quantizers(self) -> list[InferableQuantizer]:
        check(bool(self.valid_params), f"{type(self).__name__}.valid_params is empty; give at least one set")
        return [self.quantizer_class(**params) for params in self.valid_params]

    def _output(self, quantizer, x) -> np.ndarray:
        return np.asarray(quantizer(x))

    # -- the checks ----------------------------------------------------------------------------------
    def test_class_is_registered_under_its_method_and_target(self):
        if not self.registered:
            pytest.skip("registered = False")
        cls = self.quantizer_class
        found = registry.get_class(cls.method, cls.target)
        check(found is cls, f"get_class({cls.method!r}, {cls.target!r}) is {found!r}, not {cls!r}")
        built = registry.get_quantizer(cls.method, cls.target, **self.valid_params[0])
        check(type(built) is cls, f"get_quantizer built a {type(built).__name__}, not a {cls.__name__}")

    def test_output_keeps_input_shape_and_dtype(self):
        for q in self.quantizers():
            x = self.make_input(q)
            for dtype in (np.float32, np.float64):
                y = q(x.astype(dtype))
                check(tuple(y.shape) == x.shape, f"{q!r}: output shape {tuple(y.shape)} != input {x.shape}")
                check(np.dtype(y.dtype.as_numpy_dtype) == np.dtype(dtype),
                      f"{q!r}: output dtype {y.dtype} for a {np.dtype(dtype).name} input")

    def test_config_json_round_trip_rebuilds_an_equal_quantizer(self):
        for q in self.quantizers():
            config = q.get_config()
            text = json.dumps(config, allow_nan=False)  # plain JSON: no NaN, no numpy types
            rebuilt = type(q).from_config(json.loads(text))
            check(rebuilt == q, f"from_config(get_config()) gave {rebuilt!r}, not equal to {q!r}")
            check(rebuilt.get_config() == config, f"{q!r}: config changed through the round trip")
            x = self.make_input(q)
            check_identical(self._output(rebuilt, x), self._output(q, x), f"{q!r} rebuilt from JSON")

    def test_integer_export_reproduces_the_output_bit_for_bit(self):
        for q in self.quantizers():
            x = self.make_input(q)
            codes = np.asarray(q.to_int(x))
            params = q.quantization_params()
            check(np.issubdtype(codes.dtype, np.integer), f"{q!r}: to_int returned dtype {codes.dtype}")
            check(bool(np.all((codes >= int(params.qmin)) & (codes <= int(params.qmax)))),
                  f"{q!r}: codes outside [{int(params.qmin)}, {int(params.qmax)}]")
            check_identical(dequantize(codes, params), self._output(q, x), f"{q!r}: dequantized codes vs output")

    def test_invalid_parameters_raise_value_or_type_error(self):
        for params in self.invalid_params:
            with pytest.raises((ValueError, TypeError)):
                self.quantizer_class(**params)

    def test_invalid_config_is_rejected_by_from_config(self):
        cls = self.quantizer_class
        base = self.quantizers()[0].get_config()
        tampered = [dict(params) for params in self.invalid_params]
        tampered.append({**base, "no_such_parameter": 1})
        for name, values in GENERIC_BAD_VALUES.items():
            if name in base:
                tampered.extend({**base, name: value} for value in values)
        for config in tampered:
            with pytest.raises((ValueError, TypeError)):
                cls.from_config(json.loads(json.dumps(config)))

    def test_eight_threads_get_the_serial_results(self):
        for q in self.quantizers():
            inputs = [self.make_input(q, seed) for seed in range(2 * THREADS)]
            serial = [self._output(q, x) for x in inputs]
            with concurrent.futures.ThreadPoolExecutor(max_workers=THREADS) as pool:
                threaded = list(pool.map(self._output, [q] * len(inputs) * 2, inputs * 2))
            for i, y in enumerate(threaded):
                check_identical(y, serial[i % len(serial)], f"{q!r}: thread result {i}")

    def observations(self) -> list:
        """What ``calibrate`` is tried on: random weights per tensor and per channel, or activation values."""
        rng = np.random.default_rng(0)
        if self.quantizer_class.target == "activation":
            return [calibration.ActivationObservation.of(rng.normal(0.5, 1.0, 2048)),
                    calibration.ActivationObservation.of(rng.uniform(0.0, 3.0, 2048))]
        weights = (rng.normal(size=(3, 3, 4, 6)) * np.exp2(rng.uniform(-4, 2, 6))).astype(np.float32)
        return [calibration.WeightsObservation(weights, None), calibration.WeightsObservation(weights, 3)]

    def test_calibrate_builds_a_quantizer_that_round_trips_and_matches_its_reference(self):
        cls = self.quantizer_class
        if not self.calibrates:
            pytest.skip("calibrates = False")
        for observation in self.observations():
            q = cls.calibrate(observation, self.calibration_settings)
            check(type(q) is cls, f"{cls.__name__}.calibrate returned a {type(q).__name__}")
            rebuilt = cls.from_config(json.loads(json.dumps(q.get_config(), allow_nan=False)))
            check(rebuilt == q, f"{q!r}: calibrated config does not round-trip")
            x = self.make_input(q)
            check_identical(self._output(q, x), np.asarray(q.reference(x), np.float32), f"{q!r}: output vs reference")

    def test_quantize_model_calibrates_saves_reloads_and_inspects_the_method(self, tmp_path):
        if not keras_available():
            pytest.skip("iqcore.keras (the Keras integration) is not installed")
        from iqcore import keras as iqkeras

        cls = self.quantizer_class
        model = small_model(iqkeras.keras)
        data = [np.random.default_rng(i).uniform(-1, 1, (8, 6, 6, 2)).astype(np.float32) for i in range(2)]
        bits = self.calibration_settings.num_bits
        kwargs: dict[str, Any] = ({"weights_method": cls.method, "weights_bits": bits} if cls.target == "weights" else
                  {"activation_method": cls.method, "activation_bits": bits, "representative_data": data})
        if not self.calibrates:
            with pytest.raises(ValueError, match=f"method {cls.method!r}.*cannot calibrate itself"):
                iqkeras.quantize_model(model, **kwargs)
            return
        qmodel = iqkeras.quantize_model(model, verbose=0, **kwargs)
        found = [q for layer in iqkeras.flatten_layers(qmodel) for q in _quantizers_of(layer, iqkeras)]
        check(any(type(q) is cls for q in found), f"quantize_model put no {cls.__name__} in the model")
        path, x_path, out_path = tmp_path / "model.keras", tmp_path / "x.npy", tmp_path / "y.npz"
        qmodel.save(str(path))
        np.save(x_path, data[0])
        (after,) = run_reload_in_fresh_process([(path, x_path, out_path)])
        check_identical(after[0], np.asarray(qmodel(data[0])), f"{cls.__name__}: output after reloading")
        result = subprocess.run([sys.executable, "-m", "iqcore.cli", "inspect", str(path)], capture_output=True,
                                text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=300, check=False)
        check(result.returncode == 0, f"iqcore inspect failed: {result.stderr[-2000:]}")
        rows = [line.split() for line in result.stdout.splitlines()]
        check(any(cls.method in row for row in rows), f"iqcore inspect shows no {cls.method!r} row:\n{result.stdout}")

    def test_keras_model_reloads_in_a_fresh_process_with_identical_outputs(self, tmp_path):
        if not keras_available():
            pytest.skip("iqcore.keras (the Keras integration) is not installed")
        jobs, expected, names = [], [], []
        for i, q in enumerate(self.quantizers()):
            model, x = keras_model_for(q, self.make_input(q))
            path, x_path, out_path = tmp_path / f"model{i}.keras", tmp_path / f"x{i}.npy", tmp_path / f"y{i}.npz"
            model.save(str(path))
            np.save(x_path, x)
            jobs.append((path, x_path, out_path))
            expected.append([np.asarray(model(x))] + [np.asarray(w) for w in model.get_weights()])
            names.append(repr(q))
        reloaded = run_reload_in_fresh_process(jobs)
        for name, before, after in zip(names, expected, reloaded, strict=True):
            check(len(after) == len(before), f"{name}: {len(after)} arrays after reloading, {len(before)} before")
            for j, (a, e) in enumerate(zip(after, before, strict=True)):
                what = "output" if j == 0 else f"weight {j - 1}"
                check_identical(a, e, f"{name}: {what} after reloading in a fresh process")


def small_model(keras):
    """A float Conv2D + Dense model on 6x6x2 inputs (for end-to-end checks)."""
    inp = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inp)
    x = keras.layers.Flatten()(x)
    return keras.Model(inp, keras.layers.Dense(3, name="fc")(x))


def _quantizers_of(layer, iqkeras) -> list[InferableQuantizer]:
    if isinstance(layer, iqkeras.QuantizationWrapper):
        return list(layer.weights_quantizers.values())
    if isinstance(layer, iqkeras.ActivationQuantizationHolder):
        return [layer.quantizer]
    return []


def keras_model_for(quantizer: InferableQuantizer, x: np.ndarray) -> tuple[Any, np.ndarray]:
    """A small Keras model that applies ``quantizer``, and the input to run it on.

    An activation quantizer sits in an :class:`~iqcore.keras.ActivationQuantizationHolder` after the input.
    A weights quantizer wraps (:class:`~iqcore.keras.QuantizationWrapper`) a built-in layer whose kernel has
    ``x``'s shape and values: Dense for rank 2, Conv1D for rank 3, Conv2D for rank 4, so any channel axis of
    those ranks is covered.

    Raises:
        ValueError: For a weights quantizer on a rank other than 2, 3 or 4.
    """
    from iqcore import keras as iqkeras

    keras = iqkeras.keras
    if quantizer.target == "activation":
        inp = keras.Input(shape=x.shape[1:])
        return keras.Model(inp, iqkeras.ActivationQuantizationHolder(quantizer)(inp)), x
    rank = x.ndim
    in_shape: tuple[int, ...]
    if rank == 2:
        layer, in_shape = keras.layers.Dense(x.shape[1], use_bias=False), (x.shape[0],)
    elif rank == 3:
        layer, in_shape = keras.layers.Conv1D(x.shape[2], x.shape[0], use_bias=False), (x.shape[0], x.shape[1])
    elif rank == 4:
        layer, in_shape = keras.layers.Conv2D(x.shape[3], x.shape[:2], use_bias=False), x.shape[:3]
    else:
        raise ValueError(f"no built-in Keras layer has a kernel of rank {rank}; allowed: ranks 2, 3 and 4")
    inp = keras.Input(shape=tuple(int(d) for d in in_shape))
    wrapper = iqkeras.QuantizationWrapper(layer, {"kernel": quantizer})
    model = keras.Model(inp, wrapper(inp))
    wrapper.set_weights([x])
    data = np.random.default_rng(1).uniform(-1, 1, size=(2, *in_shape)).astype(np.float32)
    return model, data


def run_reload_in_fresh_process(jobs) -> list[list[np.ndarray]]:
    """Load each ``(model_path, x_path, out_path)`` model with ``iqcore.load_model`` in one new interpreter.

    Returns, per model, its output on ``x_path``'s array followed by its weights.
    """
    code = textwrap.dedent(f"""
        import numpy as np
        import iqcore
        for model_path, x_path, out_path in {[(str(a), str(b), str(c)) for a, b, c in jobs]!r}:
            model = iqcore.load_model(model_path)
            arrays = [np.asarray(model(np.load(x_path)))] + [np.asarray(w) for w in model.get_weights()]
            np.savez(out_path, *arrays)
    """)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                            check=False)
    if result.returncode != 0:
        raise AssertionError(f"reloading models in a fresh process failed:\n{result.stderr[-3000:]}")
    out = []
    for _, _, out_path in jobs:
        with np.load(out_path) as data:
            out.append([data[f"arr_{i}"] for i in range(len(data.files))])
    return out
