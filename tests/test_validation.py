"""Bad parameters are refused with a TypeError/ValueError naming the parameter and the value."""

import math

import pytest

import iqcore

WEIGHTS = dict(num_bits=8, threshold=[1.0], per_channel=False)
ACT = dict(num_bits=8, threshold=[1.0], signed=True)
UNIFORM = dict(num_bits=8, min_range=[-1.0], max_range=[1.0])


def make(method, target, **params):
    return iqcore.get_quantizer(method, target, **params)


BAD_BITS = [(0, ValueError), (1, ValueError), (17, ValueError), (64, ValueError), (-1, ValueError),
            (True, TypeError), (8.0, TypeError), (8.5, TypeError), ("8", TypeError), ([8], TypeError),
            (None, TypeError)]


@pytest.mark.parametrize("method,target,base", [("symmetric", "weights", WEIGHTS), ("pot", "activation", ACT),
                                                ("uniform", "weights", UNIFORM), ("uniform", "activation", UNIFORM)])
@pytest.mark.parametrize("value,error", BAD_BITS)
def test_bad_num_bits_is_refused_naming_num_bits(method, target, base, value, error):
    with pytest.raises(error, match=r"num_bits.*" + repr(value).replace("[", r"\[").replace("]", r"\]")):
        make(method, target, **{**base, "num_bits": value})


@pytest.mark.parametrize("name", ["narrow_range", "per_channel"])
@pytest.mark.parametrize("value", [1, 0, "yes", None, 1.0])
def test_non_bool_flags_are_a_type_error(name, value):
    with pytest.raises(TypeError, match=f"{name} must be a bool"):
        make("symmetric", "weights", **{**WEIGHTS, name: value})


@pytest.mark.parametrize("value", [1, "no", None])
def test_non_bool_signed_is_a_type_error(value):
    with pytest.raises(TypeError, match="signed must be a bool"):
        make("symmetric", "activation", **{**ACT, "signed": value})


BAD_THRESHOLDS = [
    ([0.0], ValueError, "threshold\\[0\\] is 0.0"),
    ([-1.0], ValueError, "threshold\\[0\\] is -1.0"),
    ([math.nan], ValueError, "threshold\\[0\\] is nan"),
    ([math.inf], ValueError, "threshold\\[0\\] is inf"),
    ([-math.inf], ValueError, "threshold\\[0\\] is -inf"),
    ([], ValueError, "threshold is empty"),
    ([[1.0]], ValueError, "threshold\\[0\\] is a sequence"),
    ("1.0", TypeError, "threshold.*string"),
    (["1.0"], TypeError, "threshold\\[0\\]"),
    ([True], TypeError, "threshold\\[0\\]"),
    ([None], TypeError, "threshold\\[0\\]"),
    ({"t": 1.0}, TypeError, "threshold"),
    ([2.0**-140], ValueError, "threshold\\[0\\]=7.17.*e-43: .*step"),
    ([2.0**128], ValueError, "threshold\\[0\\]=3.40.*e\\+38: .*step"),
]


@pytest.mark.parametrize("method", ["symmetric", "pot"])
@pytest.mark.parametrize("value,error,message", BAD_THRESHOLDS)
def test_bad_thresholds_are_refused_naming_threshold(method, value, error, message):
    with pytest.raises(error, match=message):
        make(method, "weights", **{**WEIGHTS, "threshold": value})


@pytest.mark.parametrize("value", [3.0, 0.3, 1.5, 2.0**100 + 2.0**50, 1e300])
def test_pot_refuses_thresholds_that_are_not_powers_of_two(value):
    with pytest.raises(ValueError, match="not a power of two"):
        make("pot", "weights", **{**WEIGHTS, "threshold": [value]})


@pytest.mark.parametrize("target,base", [("weights", WEIGHTS), ("activation", ACT)])
def test_per_tensor_quantizer_refuses_several_thresholds(target, base):
    with pytest.raises(ValueError, match="threshold has 3 values but per_channel is False"):
        make("symmetric", target, **{**base, "threshold": [1.0, 2.0, 3.0]})


@pytest.mark.parametrize("low,high,message", [
    ([1.0], [1.0], "min_range\\[0\\]=1.0 is not below max_range\\[0\\]=1.0"),
    ([2.0], [1.0], "not below"),
    ([math.nan], [1.0], "min_range\\[0\\] is nan"),
    ([-1.0], [math.nan], "max_range\\[0\\] is nan"),
    ([-1.0, -2.0], [1.0], "min_range has 2 values but per_channel is False"),
])
def test_bad_uniform_ranges_are_refused(low, high, message):
    with pytest.raises(ValueError, match=message):
        make("uniform", "weights", **{**UNIFORM, "min_range": low, "max_range": high})


@pytest.mark.parametrize("low,high", [([-3e38], [3e38]), ([-1e-44], [1e-44])])
def test_uniform_ranges_without_a_normal_float32_step_are_refused_naming_both_bounds(low, high):
    with pytest.raises(ValueError, match=r"min_range\[0\]=.*max_range\[0\]=.*step"):
        make("uniform", "activation", num_bits=8, min_range=low, max_range=high)


def test_uniform_per_channel_ranges_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="min_range has 2 values and max_range 3"):
        make("uniform", "weights", num_bits=8, min_range=[-1.0, -1.0], max_range=[1.0, 1.0, 1.0], per_channel=True,
             channel_axis=0, input_rank=2)


@pytest.mark.parametrize("axis,rank,error,message", [
    (4, 4, ValueError, "channel_axis is 4 for input_rank 4; allowed: -4..3"),
    (-5, 4, ValueError, "channel_axis is -5"),
    (None, 4, ValueError, "per_channel=True needs channel_axis and input_rank"),
    (0, None, ValueError, "per_channel=True needs channel_axis and input_rank"),
    (1.0, 4, TypeError, "channel_axis must be an int"),
    (True, 4, TypeError, "channel_axis must be an int"),
    (0, 0, ValueError, "input_rank must be in 1..32"),
    (0, "4", TypeError, "input_rank must be an int"),
])
def test_bad_per_channel_layout_is_refused(axis, rank, error, message):
    with pytest.raises(error, match=message):
        make("symmetric", "weights", num_bits=8, threshold=[1.0], per_channel=True, channel_axis=axis,
             input_rank=rank)


def test_from_config_refuses_unknown_keys_listing_allowed_ones():
    config = {**make("symmetric", "weights", **WEIGHTS).get_config(), "thresold": [1.0]}
    with pytest.raises(ValueError, match=r"unknown config keys \['thresold'\].*allowed"):
        iqcore._registry.get_class("symmetric").from_config(config)


def test_from_config_refuses_missing_required_keys():
    config = make("symmetric", "weights", **WEIGHTS).get_config()
    del config["threshold"]
    with pytest.raises(ValueError, match=r"missing required keys \['threshold'\]"):
        iqcore._registry.get_class("symmetric").from_config(config)


def test_from_config_refuses_a_future_config_version():
    config = {**make("uniform", "activation", **UNIFORM).get_config(), "config_version": 2}
    with pytest.raises(ValueError, match="config_version is 2, written by a newer iqcore"):
        iqcore._registry.get_class("uniform", "activation").from_config(config)


def test_from_config_refuses_non_dict_configs():
    with pytest.raises(TypeError, match="must be a dict"):
        iqcore._registry.get_class("pot").from_config([("num_bits", 8)])


@pytest.mark.parametrize("key,value", [("num_bits", 64), ("num_bits", 8.5), ("threshold", [float("nan")]),
                                       ("threshold", [-1.0]), ("per_channel", "no")])
def test_from_config_refuses_tampered_values_naming_the_parameter(key, value):
    config = {**make("pot", "weights", **WEIGHTS).get_config(), key: value}
    with pytest.raises((ValueError, TypeError), match=key):
        iqcore._registry.get_class("pot").from_config(config)
