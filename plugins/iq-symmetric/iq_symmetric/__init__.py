"""Symmetric quantizers: a threshold T per tensor or per channel, step ``T / 2**(num_bits - signed)``.

    weights:    signed grid [-T, T - T/2**(num_bits-1)], per tensor or per channel on any axis
    activation: [-T, T - T/2**(num_bits-1)] if signed, else [0, T - T/2**num_bits]

Calibration makes the largest ``|x|`` of the range the strategy picks the top grid value (``T - s``), so the
``minmax`` strategy clips nothing.
"""

from iqcore import plugin


class WeightsSymmetricInferableQuantizer(plugin.ThresholdWeightsQuantizer):
    __doc__ = plugin.ThresholdWeightsQuantizer.__doc__
    method = "symmetric"


class ActivationSymmetricInferableQuantizer(plugin.ThresholdActivationQuantizer):
    __doc__ = plugin.ThresholdActivationQuantizer.__doc__
    method = "symmetric"


@plugin.hookimpl
def register_quantizers(register):
    register(WeightsSymmetricInferableQuantizer)
    register(ActivationSymmetricInferableQuantizer)
