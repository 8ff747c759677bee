"""The uniform quantizers pass iqcore's conformance suite (iqcore.testing)."""

from iq_uniform import ActivationUniformInferableQuantizer, WeightsUniformInferableQuantizer
from iqcore.testing import QuantizerConformance


class TestWeightsUniformConformance(QuantizerConformance):
    quantizer_class = WeightsUniformInferableQuantizer
    valid_params = [
        dict(num_bits=8, min_range=[-1.0], max_range=[2.5]),
        dict(num_bits=4, min_range=[-1.0, 0.5, -3.0], max_range=[1.0, 2.0, -0.5], per_channel=True,
             channel_axis=2, input_rank=4),
    ]
    invalid_params = [
        dict(num_bits=8, min_range=[1.0], max_range=[1.0]),
        dict(num_bits=8, min_range=[2.0], max_range=[1.0]),
        dict(num_bits=8, min_range=[-1.0, 0.0], max_range=[1.0], per_channel=True, channel_axis=0, input_rank=2),
        dict(num_bits=8, min_range=[float("nan")], max_range=[1.0]),
    ]


class TestActivationUniformConformance(QuantizerConformance):
    quantizer_class = ActivationUniformInferableQuantizer
    valid_params = [
        dict(num_bits=8, min_range=[-2.0], max_range=[6.0]),
        dict(num_bits=5, min_range=[0.25], max_range=[3.0], narrow_range=True),
    ]
    invalid_params = [
        dict(num_bits=8, min_range=[0.0], max_range=[-1.0]),
        dict(num_bits=0, min_range=[0.0], max_range=[1.0]),
    ]
