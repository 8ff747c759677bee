"""The behaviours checked by the seed's (mct-quantizers) public Keras test suite, re-tested against iqcore.

Written from reading the seed's tests, not copied from them. Expected outputs come from TensorFlow's own
``tf.quantization.fake_quant_with_min_max_vars`` on the grid the seed's formulas define; iqcore raises
ValueError/TypeError naming the parameter where the seed asserts, so only the type and the parameter are checked.

Groups, and the seed test file each mirrors (under the seed's tests/keras_tests/):

* "quantizer outputs and attributes": quantizers_tests/test_activation_inferable_quantizers.py and
  quantizers_tests/test_weights_inferable_quantizer.py (configs, output ranges and grids, POT ranges, uniform
  ranges without zero, negative channel axes).
* "illegal parameters": quantizers_tests/test_illegal_weights_inferable_quantizer.py, and
  test_illegal_power_of_two_threshold of test_activation_inferable_quantizers.py.
* "holder": test_activation_quantizer_holder.py.
* "quantizer lookup": test_get_quantizers.py.
* "saving and loading": test_keras_load_model.py (named-weight wrappers, holders, metadata; the LUT quantizers
  and the wrapper's positional constants are out of scope here).
* "safe_mode": not from the seed; the issue's requirement that a .keras file smuggling a Lambda layer or an
  unregistered class is refused under ``safe_mode=True``.

Tests that already exist elsewhere are not repeated: tests/test_seed_attributes.py (range attributes, seed
layout keys, the holder's seed keyword), tests/test_validation.py (symmetric per-channel layout errors, several
thresholds per tensor for symmetric quantizers, POT weights thresholds), tests/test_keras_saving.py and
tests/test_model_metadata.py (a quantized CNN and metadata through .keras/.h5 in a fresh process).
"""

import json
import zipfile

import numpy as np
import pytest
import tensorflow as tf
from keras_models import tampered

import iqcore
from iqcore import keras_inferable_quantizers as K
from iqcore.keras import ActivationQuantizationHolder, QuantizationWrapper, add_metadata, get_metadata
from iqcore.seed_names import (
    BaseKerasInferableQuantizer,
    QuantizationMethod,
    QuantizationTarget,
    get_inferable_quantizer_class,
)

keras = tf.keras


# -- references --------------------------------------------------------------------------------------------


def seed_input(shape, seed=0):
    """The seed's test input: uniform in [-50, 50), float32."""
    return (np.random.default_rng(seed).random(shape) * 100 - 50).astype(np.float32)


def threshold_grid(thresholds, num_bits, signed=True):
    """The seed's threshold grid: step T / 2**(num_bits - signed), from -T (or 0 unsigned) to T - step."""
    t = np.asarray(thresholds, np.float64)
    step = t / 2.0 ** (num_bits - int(signed))
    return (-t if signed else np.zeros_like(t)), t - step


def seed_adjusted_range(min_range, max_range, num_bits):
    """The seed's rule for a uniform range that excludes zero: move the range (or its nearer end) to zero."""
    lo, hi = np.asarray(min_range, np.float64), np.asarray(max_range, np.float64)
    step = (hi - lo) / (2**num_bits - 1)
    lo_mid = step * np.round(lo / step)
    hi_mid = hi - lo + lo_mid
    return np.where(lo > 0, 0.0, np.where(hi < 0, lo, lo_mid)), np.where(hi < 0, 0.0, np.where(lo > 0, hi, hi_mid))


def tf_fake_quant(x, lows, highs, num_bits, axis=None):
    """TensorFlow's per-tensor FakeQuant with [low, high], applied to each channel of ``axis`` (or the tensor)."""
    x = np.asarray(x, np.float32)

    def fq(t, lo, hi):
        return tf.quantization.fake_quant_with_min_max_vars(t, min=float(lo), max=float(hi), num_bits=num_bits).numpy()

    if axis is None:
        return fq(x, lows[0], highs[0])
    out = np.empty_like(x)
    for c, (lo, hi) in enumerate(zip(lows, highs, strict=True)):
        index = [slice(None)] * x.ndim
        index[axis] = c
        out[tuple(index)] = fq(x[tuple(index)], lo, hi)
    return out


def channels(y, axis):
    """The channel slices of ``y`` along ``axis`` (the whole tensor when ``axis`` is None)."""
    y = np.asarray(y)
    return [y] if axis is None else [np.take(y, c, axis=axis) for c in range(y.shape[axis])]


# -- quantizer outputs and attributes ----------------------------------------------------------------------

# The seed's cases: (class name, constructor arguments, input shape, channel axis of the input or None,
# the grid's lows and highs per channel derived from the seed's formulas).
CASES = {
    "activation symmetric signed 3 bits": (
        "ActivationSymmetricInferableQuantizer", dict(num_bits=3, threshold=[4.0], signed=True),
        (1, 50, 50, 3), None, threshold_grid([4.0], 3, signed=True)),
    "activation symmetric unsigned 2 bits": (
        "ActivationSymmetricInferableQuantizer", dict(num_bits=2, threshold=[4.0], signed=False),
        (1, 50, 50, 3), None, threshold_grid([4.0], 2, signed=False)),
    "activation pot signed 2 bits": (
        "ActivationPOTInferableQuantizer", dict(num_bits=2, threshold=[1.0], signed=True),
        (1, 50, 50, 3), None, threshold_grid([1.0], 2, signed=True)),
    "activation pot unsigned 2 bits": (
        "ActivationPOTInferableQuantizer", dict(num_bits=2, threshold=[1.0], signed=False),
        (1, 50, 50, 3), None, threshold_grid([1.0], 2, signed=False)),
    "activation uniform 2 bits": (
        "ActivationUniformInferableQuantizer", dict(num_bits=2, min_range=[-10.0], max_range=[5.0]),
        (1, 50, 4, 50), None, ([-10.0], [5.0])),
    "weights symmetric per tensor 3 bits": (
        "WeightsSymmetricInferableQuantizer", dict(num_bits=3, threshold=[4.0], per_channel=False, channel_axis=None),
        (1, 50, 50, 3), None, threshold_grid([4.0], 3)),
    "weights symmetric per channel 2 bits": (
        "WeightsSymmetricInferableQuantizer",
        dict(num_bits=2, threshold=[3.0, 6.0, 2.0], per_channel=True, channel_axis=3, input_rank=4),
        (1, 50, 50, 3), 3, threshold_grid([3.0, 6.0, 2.0], 2)),
    "weights pot per channel 3 bits": (
        "WeightsPOTInferableQuantizer",
        dict(num_bits=3, threshold=[2.0, 4.0, 1.0], per_channel=True, channel_axis=-1, input_rank=4),
        (1, 50, 50, 3), 3, threshold_grid([2.0, 4.0, 1.0], 3)),
    "weights pot per tensor 2 bits": (
        "WeightsPOTInferableQuantizer", dict(num_bits=2, threshold=[1.0], per_channel=False, channel_axis=None),
        (1, 50, 50, 3), None, threshold_grid([1.0], 2)),
    "weights uniform per channel 3 bits": (
        "WeightsUniformInferableQuantizer",
        dict(num_bits=3, min_range=[-10.0, -3.0, -8.0, 0.0], max_range=[4.0, 4.0, 20.0, 7.0], per_channel=True,
             channel_axis=1, input_rank=4),
        (1, 4, 50, 50), 1, ([-10.0, -3.0, -8.0, 0.0], [4.0, 4.0, 20.0, 7.0])),
    "weights uniform per tensor 3 bits": (
        "WeightsUniformInferableQuantizer",
        dict(num_bits=3, min_range=[-10.0], max_range=[4.0], per_channel=False, channel_axis=0),
        (1, 50, 4, 50), None, ([-10.0], [4.0])),
}


def build(case):
    name, params, _, _, _ = CASES[case]
    return getattr(K, name)(**params)


@pytest.mark.parametrize("case", list(CASES))
def test_config_holds_the_seed_constructor_arguments(case):
    _, params, _, _, _ = CASES[case]
    config = build(case).get_config()
    assert {key: config[key] for key in params} == params


@pytest.mark.parametrize("case", list(CASES))
def test_output_stays_within_each_channels_range_with_at_most_two_to_the_bits_values(case):
    _, params, shape, axis, (lows, highs) = CASES[case]
    x = seed_input(shape)
    y = build(case)(tf.constant(x)).numpy()
    uniform = "min_range" in params
    for c, (lo, hi, values) in enumerate(zip(lows, highs, channels(y, axis), strict=True)):
        assert values.min() >= lo, f"channel {c}"
        # threshold grids end one step below T; a uniform grid reaches max_range
        assert (values.max() <= hi) if uniform else (values.max() < params["threshold"][c]), f"channel {c}"
        assert len(np.unique(values)) <= 2 ** params["num_bits"], f"channel {c}"
        assert np.any(values < 0) == (lo < 0), f"channel {c}: negative values iff the grid has them"


@pytest.mark.parametrize("case", list(CASES))
def test_output_equals_tensorflow_fake_quant_on_the_seed_grid(case):
    _, params, shape, axis, (lows, highs) = CASES[case]
    x = seed_input(shape, seed=1)
    expected = tf_fake_quant(x, lows, highs, params["num_bits"], axis)
    np.testing.assert_array_equal(build(case)(tf.constant(x)).numpy(), expected)


@pytest.mark.parametrize("case", [c for c in CASES if CASES[c][0].endswith("POTInferableQuantizer")])
def test_pot_ranges_are_minus_threshold_and_one_power_of_two_step_below_it(case):
    _, params, _, _, _ = CASES[case]
    q = build(case)
    t = np.asarray(params["threshold"])
    gap = t - np.asarray(q.max_range)
    assert np.array_equal(gap, 2.0 ** np.round(np.log2(gap))), f"T - max_range = {gap} is not a power of two"
    assert np.array_equal(np.asarray(q.min_range), -t if q.signed else np.zeros_like(t))


ZERO_OUTSIDE = {
    "activation uniform [3, 10] 2 bits": (
        "ActivationUniformInferableQuantizer", dict(num_bits=2, min_range=[3.0], max_range=[10.0]),
        (1, 50, 4, 50), None, [3.0], [10.0]),
    "weights uniform per channel on axis 2, 3 bits": (
        "WeightsUniformInferableQuantizer",
        dict(num_bits=3, min_range=[-10.7, -2.3, -6.6, 0.0], max_range=[4.1, 4.7, 20.0, 7.0], per_channel=True,
             channel_axis=2, input_rank=4),
        (1, 50, 4, 50), 2, [-10.7, -2.3, -6.6, 0.0], [4.1, 4.7, 20.0, 7.0]),
}


@pytest.mark.parametrize("case", list(ZERO_OUTSIDE))
def test_uniform_range_that_misses_zero_still_outputs_zero_on_each_channel(case):
    name, params, shape, axis, _, _ = ZERO_OUTSIDE[case]
    y = getattr(K, name)(**params)(tf.constant(seed_input(shape))).numpy()
    for c, values in enumerate(channels(y, axis)):
        assert 0.0 in np.unique(values), f"channel {c}"
        assert len(np.unique(values)) <= 2 ** params["num_bits"], f"channel {c}"


@pytest.mark.parametrize("case", list(ZERO_OUTSIDE))
def test_uniform_range_that_misses_zero_quantizes_on_the_seed_adjusted_range(case):
    name, params, shape, axis, lows, highs = ZERO_OUTSIDE[case]
    x = seed_input(shape, seed=2)
    lo, hi = seed_adjusted_range(lows, highs, params["num_bits"])
    expected = tf_fake_quant(x, lo.astype(np.float32), hi.astype(np.float32), params["num_bits"], axis)
    np.testing.assert_array_equal(getattr(K, name)(**params)(tf.constant(x)).numpy(), expected)


@pytest.mark.parametrize("name, axis, layout", [
    ("WeightsPOTInferableQuantizer", -2, dict(threshold=[1.0, 0.5, 2.0, 0.25])),
    ("WeightsSymmetricInferableQuantizer", -3, dict(threshold=[0.99, 0.5, 1.3])),
    ("WeightsUniformInferableQuantizer", -4, dict(min_range=[-0.99, -0.2], max_range=[0.99, 1.4])),
])
def test_negative_channel_axis_quantizes_the_channels_of_that_axis_counted_from_the_end(name, axis, layout):
    x = np.random.default_rng(3).random((2, 3, 4, 5)).astype(np.float32)
    q = getattr(K, name)(num_bits=8, per_channel=True, channel_axis=axis, input_rank=4, **layout)
    if "threshold" in layout:
        lows, highs = threshold_grid(layout["threshold"], 8)
    else:
        lows, highs = seed_adjusted_range(layout["min_range"], layout["max_range"], 8)
    expected = tf_fake_quant(x, lows, highs, 8, axis=x.ndim + axis)
    np.testing.assert_array_equal(q(tf.constant(x)).numpy(), expected)


# -- illegal parameters ------------------------------------------------------------------------------------
# The symmetric weights class's per-channel layout errors and several thresholds per tensor are in
# tests/test_validation.py; here the seed's calls for the POT and uniform classes.

POT_AND_UNIFORM = {
    "pot": ("WeightsPOTInferableQuantizer", dict(threshold=[4.0, 2.0])),
    "uniform": ("WeightsUniformInferableQuantizer", dict(min_range=[3.0, 2.0], max_range=[4.0, 3.0])),
}


@pytest.mark.parametrize("kind", list(POT_AND_UNIFORM))
def test_several_values_per_tensor_are_refused_naming_the_parameter(kind):
    name, values = POT_AND_UNIFORM[kind]
    with pytest.raises(ValueError, match=r"(threshold|min_range) has 2 values but per_channel is False"):
        getattr(K, name)(num_bits=8, per_channel=False, channel_axis=None, input_rank=4, **values)


@pytest.mark.parametrize("kind", list(POT_AND_UNIFORM))
def test_per_channel_without_channel_axis_is_refused_naming_channel_axis(kind):
    name, values = POT_AND_UNIFORM[kind]
    with pytest.raises(ValueError, match="channel_axis=None"):
        getattr(K, name)(num_bits=8, per_channel=True, input_rank=4, **values)


@pytest.mark.parametrize("kind", list(POT_AND_UNIFORM))
def test_per_channel_without_input_rank_is_refused_naming_input_rank(kind):
    name, values = POT_AND_UNIFORM[kind]
    with pytest.raises(ValueError, match="input_rank=None"):
        getattr(K, name)(num_bits=8, per_channel=True, channel_axis=1, **values)


@pytest.mark.parametrize("kind", list(POT_AND_UNIFORM))
def test_channel_axis_outside_the_rank_is_refused_naming_channel_axis(kind):
    name, values = POT_AND_UNIFORM[kind]
    with pytest.raises(ValueError, match="channel_axis is -6 for input_rank 4"):
        getattr(K, name)(num_bits=8, per_channel=True, channel_axis=-6, input_rank=4, **values)


@pytest.mark.parametrize("name", ["WeightsPOTInferableQuantizer", "WeightsSymmetricInferableQuantizer"])
def test_seed_numpy_threshold_call_without_channel_axis_is_refused(name):
    # The seed refuses the ndarray type; iqcore accepts ndarrays (stored as floats) and refuses the call for its
    # missing channel_axis instead.
    with pytest.raises(ValueError, match="channel_axis=None"):
        getattr(K, name)(num_bits=8, per_channel=True, threshold=np.asarray([3.0, 2.0]), channel_axis=None,
                         input_rank=4)


def test_uniform_scalar_max_range_against_two_min_ranges_is_refused_naming_max_range():
    with pytest.raises(ValueError, match="min_range has 2 values and max_range 1"):
        K.WeightsUniformInferableQuantizer(num_bits=8, per_channel=True, min_range=[3.0, 2.0], max_range=4,
                                           channel_axis=1, input_rank=4)


def test_activation_pot_threshold_that_is_not_a_power_of_two_is_refused_naming_threshold():
    with pytest.raises(ValueError, match=r"threshold\[0\] is 3.0, not a power of two"):
        K.ActivationPOTInferableQuantizer(num_bits=8, threshold=[3.0], signed=True)


# -- holder ------------------------------------------------------------------------------------------------

HOLDER_PARAMS = dict(num_bits=3, threshold=[4.0], signed=True)


def test_holder_as_the_only_layer_of_a_sequential_model_outputs_its_quantizers_values():
    q = K.ActivationSymmetricInferableQuantizer(**HOLDER_PARAMS)
    model = keras.Sequential([ActivationQuantizationHolder(q)])
    x = seed_input((1, 50, 50, 3), seed=4)
    lows, highs = threshold_grid([4.0], 3)
    np.testing.assert_array_equal(model(tf.constant(x)).numpy(), tf_fake_quant(x, lows, highs, 3))


def test_holder_config_holds_the_quantizers_parameters():
    model = keras.Sequential([ActivationQuantizationHolder(K.ActivationSymmetricInferableQuantizer(**HOLDER_PARAMS))])
    model(tf.ones((1, 4)))
    stored = model.layers[0].get_config()["activation_holder_quantizer"]["config"]  # the seed's key
    assert {key: stored[key] for key in HOLDER_PARAMS} == HOLDER_PARAMS


def test_holder_config_with_the_key_quantizer_loads_too():
    holder = ActivationQuantizationHolder(K.ActivationSymmetricInferableQuantizer(**HOLDER_PARAMS))
    config = holder.get_config()
    config["quantizer"] = config.pop("activation_holder_quantizer")
    assert ActivationQuantizationHolder.from_config(config).quantizer == holder.quantizer


def test_holder_config_with_both_quantizer_keys_is_refused():
    holder = ActivationQuantizationHolder(K.ActivationSymmetricInferableQuantizer(**HOLDER_PARAMS))
    config = {**holder.get_config(), "quantizer": holder.get_config()["activation_holder_quantizer"]}
    with pytest.raises(ValueError, match="one of the keys 'activation_holder_quantizer' or 'quantizer'"):
        ActivationQuantizationHolder.from_config(config)


def test_holder_h5_file_loads_through_keras_load_model_given_the_class_names(tmp_path):
    q = K.ActivationPOTInferableQuantizer(**HOLDER_PARAMS)
    model = keras.Sequential([ActivationQuantizationHolder(q)])
    x = tf.ones((3, 3))
    model(x)
    path = tmp_path / "holder.h5"
    keras.models.save_model(model, path)
    loaded = keras.models.load_model(path, {"ActivationQuantizationHolder": ActivationQuantizationHolder,
                                            "ActivationPOTInferableQuantizer": K.ActivationPOTInferableQuantizer})
    assert loaded.layers[0].quantizer == q
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())


# -- quantizer lookup --------------------------------------------------------------------------------------

SEED_CLASSES = {
    ("pot", "weights"): "WeightsPOTInferableQuantizer",
    ("symmetric", "weights"): "WeightsSymmetricInferableQuantizer",
    ("uniform", "weights"): "WeightsUniformInferableQuantizer",
    ("pot", "activation"): "ActivationPOTInferableQuantizer",
    ("symmetric", "activation"): "ActivationSymmetricInferableQuantizer",
    ("uniform", "activation"): "ActivationUniformInferableQuantizer",
}


@pytest.mark.parametrize("method, target", list(SEED_CLASSES))
def test_method_and_target_look_up_the_seed_named_class(method, target):
    registered = {(i.method, i.target): i.cls for i in iqcore.list_quantizers()}
    cls = registered[(method, target)]
    assert cls is getattr(K, SEED_CLASSES[(method, target)])
    assert issubclass(cls, iqcore.InferableQuantizer) and cls.method == method and cls.target == target


@pytest.mark.parametrize("method, target", list(SEED_CLASSES))
def test_seed_lookup_function_finds_the_seed_named_class(method, target):
    enum_method = {"pot": QuantizationMethod.POWER_OF_TWO, "symmetric": QuantizationMethod.SYMMETRIC,
                   "uniform": QuantizationMethod.UNIFORM}[method]
    enum_target = QuantizationTarget.Weights if target == "weights" else QuantizationTarget.Activation
    cls = get_inferable_quantizer_class(quant_target=enum_target, quant_method=enum_method,
                                        quantizer_base_class=BaseKerasInferableQuantizer)
    assert issubclass(cls, BaseKerasInferableQuantizer) and cls is getattr(K, SEED_CLASSES[(method, target)])


def test_seed_lookup_of_a_method_no_plugin_provides_is_refused_naming_it():
    with pytest.raises(ValueError, match="lut_pot"):
        get_inferable_quantizer_class(QuantizationTarget.Weights, QuantizationMethod.LUT_POT_QUANTIZER)


def test_seed_lookup_refuses_a_base_class_the_quantizer_does_not_derive_from():
    with pytest.raises(ValueError, match="quantizer_base_class"):
        get_inferable_quantizer_class("weights", "pot", quantizer_base_class=keras.layers.Layer)


# -- saving and loading ------------------------------------------------------------------------------------

WRAPPED = {
    "pot": ("WeightsPOTInferableQuantizer", dict(num_bits=2, threshold=[4.0, 0.5, 2.0])),
    "symmetric": ("WeightsSymmetricInferableQuantizer", dict(num_bits=2, threshold=[3.0, 6.0, 2.0])),
    "uniform": ("WeightsUniformInferableQuantizer", dict(num_bits=2, min_range=[3.0, 6.0, 2.0],
                                                         max_range=[13.0, 16.0, 12.0])),
}

HELD = {
    "pot": ("ActivationPOTInferableQuantizer", dict(num_bits=3, threshold=[4.0], signed=True)),
    "symmetric": ("ActivationSymmetricInferableQuantizer", dict(num_bits=3, threshold=[4.0], signed=True)),
    "uniform": ("ActivationUniformInferableQuantizer", dict(num_bits=3, min_range=[1.0], max_range=[4.0])),
}


def save_and_reload(layer, path):
    """A Sequential model of ``layer`` (built on its first call, like the seed's), saved to ``path`` and
    reloaded with iqcore.load_model: (model, reloaded, input, output)."""
    model = keras.Sequential([layer])
    x = np.random.default_rng(5).standard_normal((1, 99, 99, 3))
    y = model(x).numpy()
    keras.models.save_model(model, path)
    return model, iqcore.load_model(path), x, y


@pytest.mark.parametrize("ext", ["h5", "keras"])
@pytest.mark.parametrize("method", list(WRAPPED))
def test_wrapped_conv_reloads_with_identical_outputs_and_quantizer(method, ext, tmp_path):
    name, params = WRAPPED[method]
    q = getattr(K, name)(per_channel=True, channel_axis=3, input_rank=4, **params)
    _, loaded, x, y = save_and_reload(QuantizationWrapper(keras.layers.Conv2D(3, 3), {"kernel": q}),
                                      tmp_path / f"m.{ext}")
    assert isinstance(loaded.layers[0], QuantizationWrapper) and loaded.layers[0].weights_quantizers == {"kernel": q}
    np.testing.assert_array_equal(loaded(x).numpy(), y)


@pytest.mark.parametrize("ext", ["h5", "keras"])
@pytest.mark.parametrize("method", list(HELD))
def test_holder_reloads_with_identical_outputs_and_quantizer(method, ext, tmp_path):
    name, params = HELD[method]
    q = getattr(K, name)(**params)
    _, loaded, x, y = save_and_reload(ActivationQuantizationHolder(q), tmp_path / f"m.{ext}")
    assert isinstance(loaded.layers[0], ActivationQuantizationHolder) and loaded.layers[0].quantizer == q
    np.testing.assert_array_equal(loaded(x).numpy(), y)


@pytest.mark.parametrize("ext", ["h5", "keras"])
def test_metadata_of_a_model_without_quantized_layers_survives_saving(ext, tmp_path):
    inp = keras.Input((8,))
    model = keras.Model(inp, keras.layers.Rescaling(1.0, offset=5.0)(inp))
    metadata = {"test": "test123", "test_list": ["t1", 3.5, 1],
                "test_dict": {"test_inner_float": 2.5, "test_inner_list": [1, "foo", 3.4],
                              "test_inner_dict": {"foofoo": 3}}}
    model = add_metadata(model, metadata)
    keras.models.save_model(model, tmp_path / f"m.{ext}")
    assert get_metadata(iqcore.load_model(tmp_path / f"m.{ext}")) == metadata


# -- safe_mode ---------------------------------------------------------------------------------------------


def layer_entry(config, class_name):
    return next(entry for entry in config["config"]["layers"] if entry["class_name"] == class_name)


@pytest.fixture(scope="module")
def saved_files(tmp_path_factory):
    """A model holding a Lambda (a Python lambda), and a model holding an iqcore wrapper, saved as .keras."""
    d = tmp_path_factory.mktemp("safe_mode")
    inp = keras.Input((4,))
    keras.Model(inp, keras.layers.Lambda(lambda t: t * 2.0, name="smuggled")(inp)).save(d / "lambda.keras")
    q = K.WeightsSymmetricInferableQuantizer(num_bits=8, threshold=[1.0])
    x = ActivationQuantizationHolder(K.ActivationSymmetricInferableQuantizer(num_bits=8, threshold=[4.0],
                                                                      signed=True))(inp)
    keras.Model(inp, QuantizationWrapper(keras.layers.Dense(3), {"kernel": q})(x)).save(d / "wrapped.keras")
    return d


# Keras's refusal names the Lambda layer and the safe_mode switch; a refusal for another reason would not.
LAMBDA_REFUSED = r"Lambda.*safe_mode=False"


def test_keras_file_with_a_lambda_layer_is_refused_under_safe_mode(saved_files):
    with pytest.raises(ValueError, match=LAMBDA_REFUSED):
        iqcore.load_model(saved_files / "lambda.keras", safe_mode=True)


def test_the_same_lambda_file_loads_and_runs_with_safe_mode_off(saved_files):
    # the control for the test above: the file is valid, safe_mode is what refuses it
    model = iqcore.load_model(saved_files / "lambda.keras", safe_mode=False)
    x = np.arange(4, dtype=np.float32)[None]
    np.testing.assert_array_equal(model(x).numpy(), x * 2.0)


# (module, class_name) written into the wrapper's entry of config.json; Keras resolves neither.
UNREGISTERED = [("os", "system"), ("builtins", "eval"), ("subprocess", "Popen")]


@pytest.mark.parametrize("module, class_name", UNREGISTERED)
def test_keras_file_naming_an_unregistered_class_is_refused_under_safe_mode(saved_files, tmp_path, module,
                                                                             class_name):
    def edit(config):
        layer_entry(config, "QuantizationWrapper").update(module=module, class_name=class_name, registered_name=None)

    path = tampered(saved_files / "wrapped.keras", tmp_path / "edited.keras", edit)
    with pytest.raises(TypeError, match=f"'{class_name}'"):  # Keras 3: "Could not locate class", Keras 2: iqcore's
        iqcore.load_model(path, safe_mode=True)


@pytest.mark.parametrize("module, class_name", UNREGISTERED)
def test_wrapper_whose_inner_layer_names_an_unregistered_class_is_refused_under_safe_mode(saved_files, tmp_path,
                                                                                          module, class_name):
    def edit(config):
        layer_entry(config, "QuantizationWrapper")["config"]["layer"].update(module=module, class_name=class_name,
                                                                             registered_name=None)

    path = tampered(saved_files / "wrapped.keras", tmp_path / "edited.keras", edit)
    with pytest.raises(TypeError, match=f"'{class_name}'"):  # Keras 3: "Could not locate class", Keras 2: iqcore's
        iqcore.load_model(path, safe_mode=True)


def test_wrapper_whose_inner_layer_is_replaced_by_a_lambda_is_refused_under_safe_mode(saved_files, tmp_path):
    with zipfile.ZipFile(saved_files / "lambda.keras") as z:
        lambda_entry = layer_entry(json.loads(z.read("config.json")), "Lambda")

    def edit(config):
        layer_entry(config, "QuantizationWrapper")["config"]["layer"] = lambda_entry

    path = tampered(saved_files / "wrapped.keras", tmp_path / "edited.keras", edit)
    with pytest.raises(ValueError, match=LAMBDA_REFUSED):
        iqcore.load_model(path, safe_mode=True)
