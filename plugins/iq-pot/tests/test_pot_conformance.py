"""The power-of-two quantizers pass iqcore's conformance suite (iqcore.testing)."""

from iq_pot import ActivationPOTInferableQuantizer, WeightsPOTInferableQuantizer
from iqcore.testing import QuantizerConformance


class TestWeightsPOTConformance(QuantizerConformance):
    quantizer_class = WeightsPOTInferableQuantizer
    valid_params = [
        dict(num_bits=8, threshold=[1.0]),
        dict(num_bits=4, threshold=[0.5, 2.0, 0.25], per_channel=True, channel_axis=-1, input_rank=4),
        dict(num_bits=8, threshold=[1.0, 4.0], per_channel=True, channel_axis=1, input_rank=3, narrow_range=True),
    ]
    invalid_params = [
        dict(num_bits=8, threshold=[3.0]),
        dict(num_bits=8, threshold=[0.0]),
        dict(num_bits=8, threshold=[-1.0]),
        dict(num_bits=8, threshold=[1.0, 2.0]),
        dict(num_bits=8, threshold=[1.0], per_channel=True, channel_axis=4, input_rank=4),
    ]


class TestActivationPOTConformance(QuantizerConformance):
    quantizer_class = ActivationPOTInferableQuantizer
    valid_params = [
        dict(num_bits=8, threshold=[4.0], signed=False),
        dict(num_bits=3, threshold=[0.5], signed=True),
    ]
    invalid_params = [
        dict(num_bits=8, threshold=[5.0], signed=False),
        dict(num_bits=8, threshold=[float("nan")], signed=False),
        dict(num_bits=8, threshold=[1.0, 2.0], signed=True),
    ]
