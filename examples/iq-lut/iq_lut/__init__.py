"""Look-up-table (LUT) weights quantizer: a small table of integer values times a power-of-two threshold.

For a threshold ``T`` (a power of two, per tensor or per channel) and a table ``V`` of integers in
``[-2**(b-1), 2**(b-1) - 1]`` (``b = lut_values_bitwidth``, at most ``2**num_bits`` values)::

    u   = x * 2**(b-1) / T                   # exact: a power-of-two scaling
    v   = the value of V nearest to u        # ties go to the larger value; NaN stays NaN, +-inf clamp
    out = v * T / 2**(b-1)                   # exact

The outputs lie on the ``b``-bit power-of-two grid of step ``T / 2**(b-1)``; ``to_int`` returns ``v`` and
``quantization_params()`` that grid (zero point 0), so ``float32(v * scale) == out`` bit for bit.

Calibration (``quantize_model(weights_method="lut")``): per channel ``T`` is the largest ``|w|`` rounded up
to a power of two; the table is a 1-d k-means (Lloyd's algorithm) of all the scaled weights ``w * 2**(b-1) / T``
with ``2**num_bits`` centres, each rounded to an integer in ``[-(2**(b-1) - 1), 2**(b-1) - 1]`` (the int8
weights of a TFLite file need no code -128).

This module is an example of a third-party plugin: it imports :mod:`iqcore.plugin` only and is found through
its entry point (``[project.entry-points.iqcore] lut = "iq_lut"``).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import tensorflow as tf

from iqcore import plugin

__all__ = ["WeightsLUTInferableQuantizer", "register_quantizers"]


def check_lut_values(values, num_bits: int, bitwidth: int) -> list[int]:
    """Validate the table: integers in the signed ``bitwidth`` range, distinct, at most ``2**num_bits``.

    Returns the values sorted, as Python ints.

    Raises:
        TypeError: For a non-sequence, strings or booleans.
        ValueError: For an empty table, too many values, non-integers, values out of range or duplicates.
    """
    if isinstance(values, np.ndarray):
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise TypeError(f"lut_values must be a list of integers; got {type(values).__name__}")
    if not values:
        raise ValueError("lut_values is empty; allowed: 1 to 2**num_bits integers")
    if len(values) > 2**num_bits:
        raise ValueError(f"lut_values has {len(values)} values; allowed: at most 2**num_bits = {2**num_bits}")
    low, high = -(2 ** (bitwidth - 1)), 2 ** (bitwidth - 1) - 1
    out = []
    for i, item in enumerate(values):
        if isinstance(item, (bool, np.bool_)) or not isinstance(item, (numbers.Real, np.integer, np.floating)):
            raise TypeError(f"lut_values[{i}] is {item!r} ({type(item).__name__}); allowed: integers")
        number = float(item)
        if not math.isfinite(number) or number != math.floor(number):
            raise ValueError(f"lut_values[{i}] is {item!r}; allowed: integers")
        if not low <= number <= high:
            raise ValueError(f"lut_values[{i}] is {item!r}; allowed: integers in {low}..{high} "
                             f"(lut_values_bitwidth={bitwidth})")
        out.append(int(number))
    if len(set(out)) != len(out):
        raise ValueError(f"lut_values {values!r} has duplicates; allowed: distinct integers")
    return sorted(out)


def kmeans_table(values: np.ndarray, entries: int, limit: int, iterations: int = 30) -> list[int]:
    """At most ``entries`` distinct integers in ``[-limit, limit]``: Lloyd's k-means of ``values``, rounded.

    Starts from evenly spaced quantiles, so the result is deterministic.
    """
    values = np.clip(np.asarray(values, np.float64), -limit, limit)
    centres = np.unique(np.quantile(values, (np.arange(entries) + 0.5) / entries))
    for _ in range(iterations):
        edges = (centres[:-1] + centres[1:]) / 2
        index = np.searchsorted(edges, values)
        sums = np.bincount(index, weights=values, minlength=centres.size)
        counts = np.bincount(index, minlength=centres.size)
        moved = np.where(counts > 0, sums / np.maximum(counts, 1), centres)
        if np.allclose(moved, centres):
            break
        centres = moved
    return sorted({int(c) for c in np.clip(np.round(centres), -limit, limit)})


class WeightsLUTInferableQuantizer(plugin.InferableQuantizer):
    """Non-uniform weights quantizer: the nearest table value times ``T / 2**(lut_values_bitwidth - 1)``.

    Args:
        num_bits: Index width: the table holds at most ``2**num_bits`` values (an int in 2..8).
        lut_values: The table: distinct integers in ``[-2**(b-1), 2**(b-1) - 1]``, any order (stored sorted).
        threshold: T, a power of two: one value per tensor, or one per channel.
        per_channel: One threshold per channel along ``channel_axis``.
        channel_axis: The channel axis, in ``[-input_rank, input_rank)``; needed when ``per_channel``.
        input_rank: Rank of the tensors this quantizer is called on; needed when ``per_channel``.
        lut_values_bitwidth: b, the bit width of the table values (an int in 2..8, default 8).

    Raises:
        ValueError: For a bad table, a threshold that is not a positive power of two, or a bad layout.
        TypeError: For parameters of the wrong type.
    """

    method = "lut"
    target = "weights"

    def __init__(self, num_bits, lut_values, threshold, per_channel=False, channel_axis=None, input_rank=None,
                 lut_values_bitwidth=8):
        self.num_bits = plugin.check_int("num_bits", num_bits, 2, 8)
        self.lut_values_bitwidth = plugin.check_int("lut_values_bitwidth", lut_values_bitwidth, 2, 8)
        self.lut_values = check_lut_values(lut_values, self.num_bits, self.lut_values_bitwidth)
        self.per_channel = plugin.check_bool("per_channel", per_channel)
        thresholds = plugin.check_positive("threshold", plugin.check_floats("threshold", threshold))
        self.threshold = plugin.check_power_of_two("threshold", thresholds)
        plugin.check_count("threshold", self.threshold, self.per_channel)
        axis, rank = plugin.check_layout(self.per_channel, channel_axis, input_rank)
        self.channel_axis = None if channel_axis is None else int(channel_axis)
        self.input_rank = rank
        # The grid the outputs live on: signed, step T / 2**(b-1), zero point 0.
        low, high = plugin.threshold_range(self.threshold, self.lut_values_bitwidth, True, False)
        if not self.per_channel:
            low, high = low[0], high[0]
        self.set_grid(low, high, self.lut_values_bitwidth, False, axis, rank)
        values = np.asarray(self.lut_values, np.float32)
        self._values = values
        self._midpoints = (values[:-1] + values[1:]) / np.float32(2)  # exact: half-integers

    def _inverse_scale(self) -> np.ndarray:
        """float32 ``2**(b-1) / T`` laid along the channel axis (exact: a power of two)."""
        shape = self.grid.broadcast_shape()
        return np.reshape((1.0 / self.grid.scale.astype(np.float64)).astype(np.float32), shape)

    def reference(self, x) -> np.ndarray:
        """NumPy reference of :meth:`__call__` (float32 in and out)."""
        x32 = np.asarray(x, np.float32)
        with np.errstate(invalid="ignore", over="ignore"):
            u = x32 * self._inverse_scale()
        index = np.searchsorted(self._midpoints, u.reshape(-1), side="right").reshape(u.shape)
        out = self._values[index] * np.reshape(self.grid.scale, self.grid.broadcast_shape())
        return np.where(np.isnan(x32), x32, out).astype(np.float32)

    @classmethod
    def calibrate(cls, observation, settings):
        """A table and thresholds from a weight (see the module docstring); ``settings.num_bits`` is the index
        width (2..8), ``settings.strategy`` is ignored: k-means already minimises the squared error."""
        bitwidth = 8
        largest = np.max(np.abs(observation.values), axis=observation.reduce_axes())
        threshold = plugin.power_of_two_ceil(plugin.positive(largest))
        layout = [1] * observation.values.ndim
        if observation.channel_axis is not None:
            layout[observation.channel_axis] = -1
        scaled = observation.values * (2.0 ** (bitwidth - 1) / np.reshape(threshold, layout))
        table = kmeans_table(scaled.reshape(-1), 2 ** plugin.check_int("num_bits", settings.num_bits, 2, 8),
                             2 ** (bitwidth - 1) - 1)
        return cls(num_bits=settings.num_bits, lut_values=table, threshold=threshold.tolist(),
                   lut_values_bitwidth=bitwidth, **observation.layout())

    def _lookup(self, x):
        """``(x as float32 after the layout check, the nearest table values as float32)``."""
        x = plugin.check_tensor_layout(plugin.as_float_tensor(x), self.grid)
        x32 = tf.cast(x, tf.float32)
        u = tf.reshape(x32 * self._inverse_scale(), [1, -1])
        index = tf.searchsorted(self._midpoints[None, :], u, side="right")
        table = tf.gather(self._values, tf.reshape(index, tf.shape(x32)))
        return x, x32, table

    def __call__(self, x):
        """Quantize ``x`` to the table; returns a tensor of ``x``'s shape and dtype (NaN stays NaN)."""
        x, x32, table = self._lookup(x)
        out = table * np.reshape(self.grid.scale, self.grid.broadcast_shape())
        out = tf.where(tf.math.is_nan(x32), x32, out)
        return tf.cast(out, x.dtype) if x.dtype != tf.float32 else out

    def to_int(self, x):
        """The table value chosen for each element, as int8 (NaN has none: ValueError)."""
        x, x32, table = self._lookup(x)
        if tf.executing_eagerly() and bool(tf.reduce_any(tf.math.is_nan(x32))):
            raise ValueError("x contains NaN, which has no integer code; allowed: finite values or +-inf")
        return tf.cast(table, tf.int8)

    def get_config(self):
        return {
            "num_bits": self.num_bits,
            "lut_values": list(self.lut_values),
            "threshold": list(self.threshold),
            "per_channel": self.per_channel,
            "channel_axis": self.channel_axis,
            "input_rank": self.input_rank,
            "lut_values_bitwidth": self.lut_values_bitwidth,
            "config_version": plugin.CONFIG_VERSION,
        }


@plugin.hookimpl
def register_quantizers(register):
    """Register the LUT weights quantizer as ``("lut", "weights")``."""
    register(WeightsLUTInferableQuantizer)
