"""Power-of-two quantizers: symmetric grids whose threshold, and so whose step, is a power of two.

A power-of-two step makes every grid value a float32 shift of an integer, so integer back ends rescale with
bit shifts. Thresholds that are not powers of two are refused (``ValueError``), never rounded silently.

    weights:    signed grid [-T, T - T/2**(num_bits-1)], T = 2**k, per tensor or per channel on any axis
    activation: [-T, T - T/2**(num_bits-1)] if signed, else [0, T - T/2**num_bits]
"""

import iqcore
from iqcore.validation import check_power_of_two


class WeightsPOTInferableQuantizer(iqcore.ThresholdWeightsQuantizer):
    __doc__ = iqcore.ThresholdWeightsQuantizer.__doc__
    method = "pot"

    def check_threshold(self, values):
        return check_power_of_two("threshold", super().check_threshold(values))


class ActivationPOTInferableQuantizer(iqcore.ThresholdActivationQuantizer):
    __doc__ = iqcore.ThresholdActivationQuantizer.__doc__
    method = "pot"

    def check_threshold(self, values):
        return check_power_of_two("threshold", super().check_threshold(values))


@iqcore.hookimpl
def register_quantizers(register):
    register(WeightsPOTInferableQuantizer)
    register(ActivationPOTInferableQuantizer)
