"""Calibration: how a quantizer's parameters are chosen from what was observed.

``iqcore.keras.quantize_model`` observes every tensor it quantizes (a weight, or an activation over the
representative data) and hands the observation to the method's class, which builds its quantizer::

    q = cls.calibrate(observation, Settings(num_bits=8, strategy="mse", narrow_range=True))

The method, not the core, decides how its parameters follow from the data (a threshold, a range, a look-up
table...). Methods whose parameters are a range per channel let :func:`search_range` pick that range with
one of the strategies, selectable per call:

``minmax``
    the observed range: nothing is clipped.
``percentile``
    the ``percentile``-th percentile of the values at each end (``100 - percentile`` below): rare outliers
    are clipped so the common values get a finer step.
``mse``
    the range, among the observed one scaled by ``2**(-k/8)`` (k = 0..31), whose quantizer has the smallest
    mean squared error on the observed values (each weight channel on its own), measured with the quantizer's
    own :meth:`~iqcore.InferableQuantizer.reference`.

A plugin method implements ``calibrate`` as a classmethod (see docs/plugins.md); a method that does not is
refused by ``quantize_model`` with an error naming it.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np

STRATEGIES = ("minmax", "percentile", "mse")

#: Scale factors the ``mse`` strategy tries on the observed range.
MSE_SCALES = 2.0 ** (-np.arange(32) / 8.0)

#: The most activation values kept per tensor for the ``percentile`` and ``mse`` strategies.
MAX_SAMPLES = 1 << 16


def check_strategy(name: str, strategy) -> str:
    """``strategy`` if it is one of :data:`STRATEGIES`, else ``ValueError`` naming ``name``."""
    if not isinstance(strategy, str) or strategy not in STRATEGIES:
        raise ValueError(f"{name} is {strategy!r}; allowed: {', '.join(repr(s) for s in STRATEGIES)}")
    return strategy


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the caller asks of a calibrated quantizer.

    Attributes:
        num_bits: Bit width, an int in 2..16 (a method may allow fewer; its constructor says so).
        strategy: One of :data:`STRATEGIES`.
        narrow_range: Leave the lowest code unused (int8 TFLite weights need it).
        percentile: For the ``percentile`` strategy, in (50, 100].
    """

    num_bits: int = 8
    strategy: str = "minmax"
    narrow_range: bool = False
    percentile: float = 99.99

    def __post_init__(self):
        if isinstance(self.num_bits, bool) or not isinstance(self.num_bits, numbers.Integral):
            raise TypeError(f"num_bits must be an int; got {self.num_bits!r} ({type(self.num_bits).__name__})")
        check_strategy("strategy", self.strategy)
        if not isinstance(self.narrow_range, bool):
            raise TypeError(f"narrow_range must be a bool; got {self.narrow_range!r}")
        p = self.percentile
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 50 < float(p) <= 100:
            raise ValueError(f"percentile is {p!r}; allowed: a number in (50, 100]")


@dataclasses.dataclass(frozen=True, eq=False)
class WeightsObservation:
    """A weight tensor to quantize.

    Attributes:
        values: The float weight (any rank).
        channel_axis: The non-negative axis that gets one quantizer channel each, or None per tensor.
    """

    values: np.ndarray
    channel_axis: int | None = None

    def __post_init__(self):
        values = np.asarray(self.values)
        if not np.issubdtype(values.dtype, np.floating) or values.size == 0:
            raise ValueError(f"weight values must be a non-empty float array; got {values.dtype} {values.shape}")
        if not np.all(np.isfinite(values)):
            raise ValueError("weight values hold NaN or inf; allowed: finite weights")
        axis = self.channel_axis
        if axis is not None:
            if isinstance(axis, bool) or not isinstance(axis, numbers.Integral) or not 0 <= axis < values.ndim:
                raise ValueError(f"channel_axis is {axis!r} for a weight of rank {values.ndim}; allowed: "
                                 f"0..{values.ndim - 1} or None")
        object.__setattr__(self, "values", values)

    def layout(self) -> dict[str, Any]:
        """The quantizer layout keywords: ``per_channel``, ``channel_axis`` and ``input_rank``."""
        if self.channel_axis is None:
            return {"per_channel": False}
        return {"per_channel": True, "channel_axis": int(self.channel_axis), "input_rank": self.values.ndim}

    def reduce_axes(self) -> tuple[int, ...] | None:
        """The axes a per-channel statistic reduces over (None: all of them)."""
        if self.channel_axis is None:
            return None
        return tuple(i for i in range(self.values.ndim) if i != self.channel_axis)

    def ranges(self) -> tuple[np.ndarray, np.ndarray]:
        """Per channel (a 1-d array; one entry per tensor): the smallest and largest value."""
        axes = self.reduce_axes()
        return (np.atleast_1d(np.min(self.values, axis=axes)).astype(np.float64),
                np.atleast_1d(np.max(self.values, axis=axes)).astype(np.float64))

    def data(self) -> np.ndarray:
        return self.values.astype(np.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class ActivationObservation:
    """An activation tensor seen over the representative data.

    Attributes:
        min, max: The smallest and largest value seen.
        samples: A uniform random sample of the values seen (1-d, at most :data:`MAX_SAMPLES`), for
            strategies that need more than the range; may be empty.
        mean: The mean value seen (NaN when unknown).
        fixed_range: The values lie on a known grid of ``2**num_bits`` codes from ``min`` with step
            ``(max - min) / 2**num_bits`` (an int8 softmax, logistic or tanh output): a method reproduces that
            grid where it can instead of calibrating one.
    """

    min: float
    max: float
    samples: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.float32))
    mean: float = math.nan
    fixed_range: bool = False

    def __post_init__(self):
        low, high = float(self.min), float(self.max)
        if not (math.isfinite(low) and math.isfinite(high)) or low > high:
            raise ValueError(f"observed activation range [{low}, {high}] is not a finite range; check the "
                             "representative data")
        object.__setattr__(self, "min", low)
        object.__setattr__(self, "max", high)
        object.__setattr__(self, "samples", np.asarray(self.samples, np.float32).reshape(-1))

    @classmethod
    def of(cls, values, fixed_range: bool = False) -> ActivationObservation:
        """The observation of an array of values (all of them, up to :data:`MAX_SAMPLES` kept as samples)."""
        values = np.asarray(values, np.float32).reshape(-1)
        if values.size == 0:
            raise ValueError("no activation values observed; check the representative data")
        return cls(float(values.min()), float(values.max()), subsample(values, MAX_SAMPLES),
                   float(values.mean(dtype=np.float64)), fixed_range)

    def ranges(self) -> tuple[np.ndarray, np.ndarray]:
        return np.array([self.min]), np.array([self.max])

    def data(self) -> np.ndarray:
        return self.samples


def subsample(values: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """At most ``count`` of ``values`` (flattened), drawn uniformly without replacement (all if fewer)."""
    values = np.asarray(values).reshape(-1)
    if values.size <= count:
        return values
    return values[np.random.default_rng(seed).choice(values.size, count, replace=False)]


def positive(values, fallback: float = 1.0) -> np.ndarray:
    """``values`` (float64, at least 1-d) with every entry <= 0 replaced by the largest entry, or ``fallback``
    when none is positive: thresholds of all-zero channels."""
    values = np.atleast_1d(np.asarray(values, dtype=np.float64))
    top = float(values.max()) if values.size and values.max() > 0 else fallback
    return np.where(values > 0, values, top)


def power_of_two_ceil(values) -> np.ndarray:
    """The smallest power of two >= each positive value (float64, at least 1-d)."""
    values = np.atleast_1d(np.asarray(values, dtype=np.float64))
    return np.exp2(np.ceil(np.log2(values)))


def _percentile_range(observation, percentile: float) -> tuple[np.ndarray, np.ndarray]:
    data = observation.data()
    if data.size == 0:
        return observation.ranges()
    if isinstance(observation, WeightsObservation) and observation.channel_axis is not None:
        moved = np.moveaxis(data, observation.channel_axis, 0).reshape(data.shape[observation.channel_axis], -1)
        return (np.percentile(moved, 100 - percentile, axis=1).astype(np.float64),
                np.percentile(moved, percentile, axis=1).astype(np.float64))
    return (np.atleast_1d(np.percentile(data, 100 - percentile)).astype(np.float64),
            np.atleast_1d(np.percentile(data, percentile)).astype(np.float64))


def _channel_errors(observation, quantizer, data: np.ndarray) -> np.ndarray:
    """Squared error of ``quantizer`` on ``data``, summed per channel (one entry per tensor)."""
    error = (np.asarray(quantizer.reference(data), np.float64) - data) ** 2
    axes = observation.reduce_axes() if isinstance(observation, WeightsObservation) else None
    return np.atleast_1d(np.sum(error, axis=axes))


def search_range(observation, settings: Settings, build: Callable[[np.ndarray, np.ndarray], Any]):
    """A quantizer ``build(low, high)`` on the range the settings' strategy picks from ``observation``.

    Args:
        observation: A :class:`WeightsObservation` or :class:`ActivationObservation`.
        settings: The :class:`Settings`; ``strategy`` chooses the range (see the module docstring).
        build: Makes a quantizer from float64 arrays ``low`` and ``high`` (one entry per channel, or one per
            tensor).

    Returns:
        The quantizer ``build`` made for the chosen range.
    """
    low, high = observation.ranges()
    if settings.strategy == "percentile":
        low, high = _percentile_range(observation, settings.percentile)
    if settings.strategy != "mse":
        return build(low, high)
    data = observation.data()
    if data.size == 0:
        return build(low, high)
    best_error = np.full(low.shape, np.inf)
    best_scale = np.ones(low.shape)
    for scale in MSE_SCALES:
        errors = _channel_errors(observation, build(low * scale, high * scale), data)
        better = errors < best_error
        best_error = np.where(better, errors, best_error)
        best_scale = np.where(better, scale, best_scale)
    return build(low * best_scale, high * best_scale)
