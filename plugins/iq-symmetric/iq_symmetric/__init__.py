"""Symmetric quantizers: a threshold T per tensor or per channel, step ``T / 2**(num_bits - signed)``.

    weights:    signed grid [-T, T - T/2**(num_bits-1)], per tensor or per channel on any axis
    activation: [-T, T - T/2**(num_bits-1)] if signed, else [0, T - T/2**num_bits]
"""

import iqcore


class WeightsSymmetricInferableQuantizer(iqcore.ThresholdWeightsQuantizer):
    __doc__ = iqcore.ThresholdWeightsQuantizer.__doc__
    method = "symmetric"


class ActivationSymmetricInferableQuantizer(iqcore.ThresholdActivationQuantizer):
    __doc__ = iqcore.ThresholdActivationQuantizer.__doc__
    method = "symmetric"


@iqcore.hookimpl
def register_quantizers(register):
    register(WeightsSymmetricInferableQuantizer)
    register(ActivationSymmetricInferableQuantizer)
