"""Power-of-two quantizers: symmetric grids whose threshold, and so whose step, is a power of two.

A power-of-two step makes every grid value a float32 shift of an integer, so integer back ends rescale with
bit shifts. Thresholds that are not powers of two are refused (``ValueError``), never rounded silently.

    weights:    signed grid [-T, T - T/2**(num_bits-1)], T = 2**k, per tensor or per channel on any axis
    activation: [-T, T - T/2**(num_bits-1)] if signed, else [0, T - T/2**num_bits]

Calibration takes the largest ``|x|`` of the range the strategy picks, rounded up to a power of two.
"""

from iqcore import plugin


class _PowerOfTwoThreshold:
    """The power-of-two rules shared by both targets."""

    def check_threshold(self, values):
        return plugin.check_power_of_two("threshold", super().check_threshold(values))  # type: ignore[misc]

    @classmethod
    def threshold_for(cls, largest, num_bits, signed, narrow_range):
        return plugin.power_of_two_ceil(largest)


class WeightsPOTInferableQuantizer(_PowerOfTwoThreshold, plugin.ThresholdWeightsQuantizer):
    __doc__ = plugin.ThresholdWeightsQuantizer.__doc__
    method = "pot"


class ActivationPOTInferableQuantizer(_PowerOfTwoThreshold, plugin.ThresholdActivationQuantizer):
    __doc__ = plugin.ThresholdActivationQuantizer.__doc__
    method = "pot"


@plugin.hookimpl
def register_quantizers(register):
    register(WeightsPOTInferableQuantizer)
    register(ActivationPOTInferableQuantizer)
