"""Uniform quantizers: an arbitrary range ``[min_range, max_range]`` per tensor or per channel.

The range is first moved so that 0 lies exactly on the grid, as the seed's library does (in float64):

    step  = (max - min) / (2**num_bits - 1 - narrow_range)
    min'  = step * round_half_even(min / step),  max' = max - min + min'     if min <= 0 <= max
    min'  = 0, max' = max                                                   if min > 0
    min'  = min, max' = 0                                                   if max < 0

and ``[min', max']`` is handed to TensorFlow's fake-quant grid. Calibration takes the range the strategy
picks as ``[min_range, max_range]``.
"""

import numpy as np

from iqcore import plugin


def range_including_zero(lows, highs, num_bits, narrow_range=False):
    """Move each ``[low, high]`` so that 0 is exactly on the grid (float64, see the module docstring)."""
    lo = np.asarray(lows, dtype=np.float64)
    hi = np.asarray(highs, dtype=np.float64)
    step = (hi - lo) / (2**num_bits - 1 - int(narrow_range))
    min_adj = step * np.round(lo / step)
    max_adj = hi - lo + min_adj
    mid = (lo <= 0) & (hi >= 0)
    min_adj = np.where(mid, min_adj, np.where(hi < 0, lo, 0.0))
    max_adj = np.where(mid, max_adj, np.where(lo > 0, hi, 0.0))
    return np.minimum(min_adj, 0.0), np.maximum(max_adj, 0.0)


def _unused_rank(per_channel, input_rank):
    """None for the ``input_rank=0`` that the seed's toolchain writes per tensor (no rank is used there)."""
    if per_channel is False and isinstance(input_rank, (int, np.integer)) and not isinstance(input_rank, bool) \
            and input_rank == 0:
        return None
    return input_rank


class UniformQuantizer(plugin.InferableQuantizer):
    """Shared by both targets: validates the ranges and builds the grid on them, zero moved onto it.

    As in the seed's library, the attributes ``min_range``/``max_range`` are the ranges **adjusted to include
    zero** (lists of floats, one per channel), the range the grid is built on; ``get_config`` keeps the
    ranges as given, so that a config round trip rebuilds the same quantizer exactly.
    """

    min_range: list[float]
    max_range: list[float]

    def _set_range_grid(self, min_range, max_range, axis=None) -> None:
        lows, highs = plugin.check_ranges(min_range, max_range, axis is not None)
        self._given_range = (lows, highs)
        low, high = range_including_zero(lows, highs, self.num_bits, self.narrow_range)
        self.min_range = [float(x) for x in low]
        self.max_range = [float(x) for x in high]
        if axis is None:
            low, high = low[0], high[0]
        rank = None if axis is None else self.input_rank
        self.set_grid(low, high, self.num_bits, self.narrow_range, axis, rank, {"min_range": lows, "max_range": highs})

    def get_config(self):
        """The constructor's arguments, with ``min_range``/``max_range`` as given (not adjusted)."""
        config = super().get_config()
        config["min_range"], config["max_range"] = list(self._given_range[0]), list(self._given_range[1])
        return config


def _widened(low, high):
    """``(low, high)`` with every empty range (a constant channel) widened to one that keeps its value."""
    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    width = plugin.positive(high - low)
    return low, np.where(high > low, high, low + width)


class WeightsUniformInferableQuantizer(UniformQuantizer):
    """Uniform weights grid on ``[min_range, max_range]`` (0 moved onto the grid), per tensor or channel.

    Args:
        num_bits: Bit width, an int in 2..16.
        min_range, max_range: One range per-tensor, or one per channel; each ``min < max``.
        per_channel: One range per channel along ``channel_axis``.
        channel_axis: The channel axis, in ``[-input_rank, input_rank)``; needed when ``per_channel``.
        input_rank: Rank of the tensors this quantizer is called on; needed when ``per_channel``.
        narrow_range: Use ``2**num_bits - 2`` steps over the range (the lowest code unused).
    """

    method = "uniform"
    target = "weights"

    def __init__(self, num_bits, min_range, max_range, per_channel=False, channel_axis=None, input_rank=None,
                 narrow_range=False):
        self.num_bits = plugin.check_num_bits(num_bits)
        self.narrow_range = plugin.check_bool("narrow_range", narrow_range)
        axis = self.set_layout(per_channel, channel_axis, _unused_rank(per_channel, input_rank))
        self._set_range_grid(min_range, max_range, axis)

    @classmethod
    def calibrate(cls, observation, settings):
        """Per channel, the range the strategy picks (a constant channel gets a width that keeps it)."""
        def build(low, high):
            low, high = _widened(low, high)
            return cls(num_bits=settings.num_bits, min_range=low.tolist(), max_range=high.tolist(),
                       narrow_range=settings.narrow_range, **observation.layout())

        return plugin.search_range(observation, settings, build)


class ActivationUniformInferableQuantizer(UniformQuantizer):
    """Uniform per-tensor activation grid on ``[min_range, max_range]`` (0 moved onto the grid).

    Args:
        num_bits: Bit width, an int in 2..16.
        min_range, max_range: The range (numbers or one-element lists), ``min < max``.
        narrow_range: Use ``2**num_bits - 2`` steps over the range (the lowest code unused).
    """

    method = "uniform"
    target = "activation"

    def __init__(self, num_bits, min_range, max_range, narrow_range=False):
        self.num_bits = plugin.check_num_bits(num_bits)
        self.narrow_range = plugin.check_bool("narrow_range", narrow_range)
        self._set_range_grid(min_range, max_range)

    @classmethod
    def calibrate(cls, observation, settings):
        """The range the strategy picks; a fixed range ``[low, high)`` of ``2**num_bits`` codes (an int8 softmax
        output) becomes ``[low, high - step]``, which reproduces that grid."""
        if observation.fixed_range:
            step = (observation.max - observation.min) / 2**settings.num_bits
            return cls(num_bits=settings.num_bits, min_range=observation.min, max_range=observation.max - step,
                       narrow_range=settings.narrow_range)

        def build(low, high):
            low, high = _widened(low, high)
            return cls(num_bits=settings.num_bits, min_range=float(low[0]), max_range=float(high[0]),
                       narrow_range=settings.narrow_range)

        return plugin.search_range(observation, settings, build)


@plugin.hookimpl
def register_quantizers(register):
    register(WeightsUniformInferableQuantizer)
    register(ActivationUniformInferableQuantizer)
