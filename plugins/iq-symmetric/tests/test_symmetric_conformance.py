"""The symmetric quantizers pass iqcore's conformance suite (iqcore.testing)."""

from iq_symmetric import ActivationSymmetricInferableQuantizer, WeightsSymmetricInferableQuantizer
from iqcore.testing import QuantizerConformance


class TestWeightsSymmetricConformance(QuantizerConformance):
    quantizer_class = WeightsSymmetricInferableQuantizer
    valid_params = [
        dict(num_bits=8, threshold=[2.0, 3.0, 1.0], per_channel=True, channel_axis=-1, input_rank=4),
        dict(num_bits=6, threshold=[0.7]),
        dict(num_bits=8, threshold=[0.3, 1.7], per_channel=True, channel_axis=0, input_rank=2, narrow_range=True),
    ]
    invalid_params = [
        dict(num_bits=8, threshold=[0.0]),
        dict(num_bits=8, threshold=[float("inf")]),
        dict(num_bits=8, threshold="1.0"),
        dict(num_bits=8, threshold=[1.0], per_channel=True),
    ]


class TestActivationSymmetricConformance(QuantizerConformance):
    quantizer_class = ActivationSymmetricInferableQuantizer
    valid_params = [
        dict(num_bits=8, threshold=[5.0], signed=False),
        dict(num_bits=4, threshold=[1.3], signed=True),
    ]
    invalid_params = [
        dict(num_bits=8, threshold=[-5.0], signed=False),
        dict(num_bits=8, threshold=[5.0], signed="no"),
    ]
