"""Attribute parity with the seed's six quantizer classes, the seed's per-tensor layout keys, and the holder's
seed keyword — without changing what get_config stores."""

import json

import numpy as np
import pytest

import iqcore
from iqcore import keras_inferable_quantizers as K


def roundtrip(q):
    rebuilt = type(q).from_config(json.loads(json.dumps(q.get_config())))
    assert rebuilt == q and rebuilt.get_config() == q.get_config()
    return rebuilt


def test_pot_weights_report_the_grid_ends_as_ranges():
    q = K.WeightsPOTInferableQuantizer(num_bits=2, threshold=[1.0])
    assert q.min_range == [-1.0] and q.max_range == [0.5]
    assert q.signed is True and q.threshold == [1.0] and q.num_bits == 2
    assert (q.per_channel, q.channel_axis, q.input_rank) == (False, None, None)
    assert "min_range" not in q.get_config() and "signed" not in q.get_config()
    roundtrip(q)


def test_per_channel_weights_ranges_follow_each_threshold():
    q = K.WeightsSymmetricInferableQuantizer(num_bits=8, threshold=[2.0, 3.0, 1.0], per_channel=True,
                                             channel_axis=-1, input_rank=4)
    assert q.min_range == [-2.0, -3.0, -1.0]
    assert q.max_range == pytest.approx([2.0 - 2 / 128, 3.0 - 3 / 128, 1.0 - 1 / 128], abs=0)
    assert (q.per_channel, q.channel_axis, q.input_rank) == (True, -1, 4)
    roundtrip(q)


@pytest.mark.parametrize("cls", [K.ActivationPOTInferableQuantizer, K.ActivationSymmetricInferableQuantizer])
def test_activation_ranges_signed_and_unsigned(cls):
    signed = cls(num_bits=8, threshold=[4.0], signed=True)
    unsigned = cls(num_bits=8, threshold=[4.0], signed=False)
    assert (signed.min_range, signed.max_range) == ([-4.0], [4.0 - 4.0 / 128])
    assert (unsigned.min_range, unsigned.max_range) == ([0.0], [4.0 - 4.0 / 256])
    assert signed.signed is True and unsigned.signed is False and unsigned.threshold == [4.0]
    roundtrip(signed)


def test_narrow_range_ranges_drop_the_end_code():
    q = K.WeightsPOTInferableQuantizer(num_bits=8, threshold=[1.0], narrow_range=True)
    assert (q.min_range, q.max_range) == ([-1.0 + 1 / 128], [1.0 - 1 / 128])


def test_uniform_ranges_are_reported_adjusted_to_include_zero_but_stored_as_given():
    q = K.ActivationUniformInferableQuantizer(num_bits=2, min_range=[-1.0], max_range=[2.5])
    assert q.min_range == pytest.approx([-1.1666666666666667], rel=1e-15)
    assert q.max_range == pytest.approx([2.3333333333333333], rel=1e-15)
    assert q.get_config()["min_range"] == [-1.0] and q.get_config()["max_range"] == [2.5]
    assert roundtrip(q).min_range == q.min_range
    # the adjusted range is the grid: 0 is a grid value and the output ends are the adjusted ends
    x = np.array([-5.0, 0.0, 5.0], np.float32)
    np.testing.assert_allclose(q(x).numpy(), [q.min_range[0], 0.0, q.max_range[0]], rtol=1e-6)


def test_uniform_weights_per_channel_ranges_one_per_channel():
    q = K.WeightsUniformInferableQuantizer(num_bits=8, min_range=[-1.0, 0.5, -3.0], max_range=[1.0, 2.0, -1.0],
                                           per_channel=True, channel_axis=0, input_rank=2)
    assert len(q.min_range) == 3 and q.min_range[1] == 0.0 and q.max_range[2] == 0.0
    assert all(lo <= 0.0 <= hi for lo, hi in zip(q.min_range, q.max_range, strict=True))
    roundtrip(q)


@pytest.mark.parametrize("cls, extra", [
    (K.WeightsPOTInferableQuantizer, {"threshold": [0.5]}),
    (K.WeightsSymmetricInferableQuantizer, {"threshold": [0.7]}),
    (K.WeightsUniformInferableQuantizer, {"min_range": [-0.6], "max_range": [0.5]}),
])
def test_the_seed_per_tensor_layout_keys_are_accepted_and_normalised(cls, extra):
    seed_config = {"num_bits": 8, **extra, "per_channel": False, "channel_axis": 1, "input_rank": 0}
    q = cls.from_config(seed_config)
    assert q.per_channel is False and q.input_rank is None and q.grid.axis is None
    assert q.get_config()["input_rank"] is None
    roundtrip(q)
    with pytest.raises((TypeError, ValueError), match="input_rank"):
        cls.from_config({**seed_config, "per_channel": True})


def test_input_rank_zero_is_not_confused_with_false():
    with pytest.raises(TypeError, match="input_rank"):
        K.WeightsPOTInferableQuantizer(num_bits=8, threshold=[1.0], per_channel=False, input_rank=False)


def test_holder_accepts_the_seed_keyword_and_refuses_both_or_neither():
    from iqcore.keras import ActivationQuantizationHolder

    q = iqcore.get_quantizer("pot", "activation", num_bits=8, threshold=[2.0], signed=True)
    holder = ActivationQuantizationHolder(activation_holder_quantizer=q)
    assert holder.quantizer is q and holder.activation_holder_quantizer is q
    assert ActivationQuantizationHolder.from_config(holder.get_config()).quantizer == q
    with pytest.raises(TypeError, match="not both"):
        ActivationQuantizationHolder(q, activation_holder_quantizer=q)
    with pytest.raises(TypeError, match="not neither"):
        ActivationQuantizationHolder()
