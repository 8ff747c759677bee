"""Inferable quantizers: the abstract interface and the reusable bases that method plugins build on.

An inferable quantizer holds every parameter it needs and fake-quantizes a TensorFlow tensor when called:

    >>> q = WeightsSymmetricInferableQuantizer(num_bits=8, threshold=[2.0, 3.0, 1.0],
    ...                                        per_channel=True, channel_axis=-1, input_rank=4)
    >>> y = q(x)                      # x's shape and dtype, values on q's grid
    >>> codes = q.to_int(x)           # signed integer codes (int8 up to 8 bits)
    >>> p = q.quantization_params()   # scale, zero_point, qmin, qmax, axis for an integer back end

Every quantizer reduces its parameters to a float range per channel; :mod:`iqcore._grid` nudges that range
exactly as TensorFlow's fake-quant kernel does, and :mod:`iqcore._kernels` computes on it bit-exactly.

Threshold grids (symmetric and power-of-two methods), with step ``s = T / 2**(num_bits - signed)``:

* signed:   ``[-T, T - s]`` (``narrow_range``: ``[-T + s, T - s]``, the lowest code dropped, the step kept)
* unsigned: ``[0, T - s]``  (``narrow_range``: ``[0, T - 2s]``)

Range grids (uniform method) take ``[min_range, max_range]`` as given to TensorFlow's op, with
``narrow_range`` meaning what it means there (``2**num_bits - 2`` steps over the range).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import importlib
import inspect
import json
from typing import Any, ClassVar

import numpy as np

from iqcore import _grid as grid_lib
from iqcore import _validation as v
from iqcore import calibration

CONFIG_VERSION = 1
TARGETS = ("weights", "activation")


@functools.cache
def _kernels():
    """iqcore._kernels, imported on first use: building quantizers and discovering plugins needs no TensorFlow."""
    return importlib.import_module("iqcore._kernels")


@dataclasses.dataclass(frozen=True, eq=False)
class QuantizationParams:
    """What an integer back end needs: ``float32((code - zero_point) * scale)`` is the quantizer's output.

    Attributes:
        scale: float32, one per channel (1-d) or a 0-d array per-tensor.
        zero_point: int32, same shape as ``scale``.
        qmin, qmax: 0-d int32 arrays, the signed code range.
        axis: 0-d int32 array holding the channel axis, or None per-tensor.
    """

    scale: np.ndarray
    zero_point: np.ndarray
    qmin: np.ndarray
    qmax: np.ndarray
    axis: np.ndarray | None


def _parameters(cls) -> list[str]:
    """Names of ``cls``'s constructor parameters (``self`` and ``*args``/``**kwargs`` excluded)."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [n for n, p in inspect.signature(cls.__init__).parameters.items() if n != "self" and p.kind in kinds]


class InferableQuantizer(abc.ABC):
    """Base of every quantizer. Subclasses set ``method`` and ``target`` and build ``self.grid``.

    A subclass validates its constructor arguments, computes a float range per channel, and calls
    :meth:`set_grid`. ``get_config`` returns the constructor's arguments as JSON-able data; the default
    ``from_config`` refuses unknown, missing and future-versioned configs before calling the constructor,
    which validates every value.
    """

    method: ClassVar[str] = ""
    target: ClassVar[str] = ""
    num_bits: int
    narrow_range: bool
    grid: grid_lib.Grid

    @abc.abstractmethod
    def __init__(self, num_bits, *args, **kwargs):
        """Validate every argument, keep each as an attribute of the same name, and call :meth:`set_grid`."""

    # -- building --------------------------------------------------------------------------------------
    def set_layout(self, per_channel, channel_axis, input_rank) -> int | None:
        """Validate and keep ``per_channel``, ``channel_axis`` and ``input_rank`` as attributes.

        Returns:
            The non-negative channel axis, or None per tensor.

        Raises:
            TypeError, ValueError: For a bad value (the message names the parameter).
        """
        self.per_channel = v.check_bool("per_channel", per_channel)
        axis, self.input_rank = v.check_layout(self.per_channel, channel_axis, input_rank)
        self.channel_axis = None if channel_axis is None else int(channel_axis)
        return axis

    def set_grid(self, min_range, max_range, num_bits, narrow_range, axis=None, rank=None, source=None) -> None:
        """Describe the grid the outputs lie on: TensorFlow's fake-quant grid of ``[min_range, max_range]``.

        Args:
            min_range, max_range: The float range, a number per tensor or one per channel.
            num_bits: Bit width, 2..16.
            narrow_range: Whether the lowest integer code is unused.
            axis: The non-negative channel axis (None per tensor), as :meth:`set_layout` returns it.
            rank: The input rank of a per-channel grid.
            source: ``{parameter name: values per channel}`` named in the error for a range that gives no
                usable float32 grid.

        Raises:
            ValueError: If the range gives no finite, normal float32 step.
        """
        self.grid = grid_lib.make_grid(min_range, max_range, num_bits, narrow_range, axis, rank, source)

    @classmethod
    def calibrate(cls, observation, settings):
        """Build a quantizer of this class from what calibration observed (see :mod:`iqcore.calibration`).

        Args:
            observation: A :class:`iqcore.calibration.WeightsObservation` (weights target) or
                :class:`iqcore.calibration.ActivationObservation` (activation target).
            settings: The :class:`iqcore.calibration.Settings` asked for (bits, strategy, narrow range).

        Raises:
            NotImplementedError: This class cannot calibrate itself (the default); ``iqcore.keras.quantize_model``
                turns it into a ``ValueError`` naming the method.
        """
        raise NotImplementedError(f"{cls.__name__} does not implement calibrate(observation, settings)")

    # -- the quantizer -------------------------------------------------------------------------------
    def __call__(self, x):
        """Fake-quantize ``x``; returns a tensor of ``x``'s shape and dtype.

        float16/bfloat16/float64 inputs are cast to float32, quantized, and cast back: float64 results are
        exactly the float32 grid values; float16/bfloat16 results are those values rounded to the input
        dtype (off the grid when the step needs more mantissa bits than the dtype has).

        Raises:
            TypeError: If ``x`` is not a floating tensor.
            ValueError: If a per-channel quantizer's input has the wrong rank or channel count.
        """
        return _kernels().fake_quant(x, self.grid)

    def reference(self, x) -> np.ndarray:
        """The NumPy reference of :meth:`__call__` on float32 ``x`` (float32 out, bit for bit the same values).

        The default computes TensorFlow's fake-quant formula on :attr:`grid`; a method with another rule
        overrides it. ``python -m iqcore.selfcheck`` checks every mode of :meth:`__call__` against it.
        """
        return grid_lib.fake_quant(x, self.grid)

    def to_int(self, x):
        """Signed integer codes of ``x`` (int8 up to 8 bits, int16 above); see :meth:`quantization_params`."""
        return _kernels().codes(x, self.grid)

    def quantization_params(self) -> QuantizationParams:
        """Scale, zero point, code range and axis such that ``float32((to_int(x) - zp) * scale) == self(x)``."""
        g = self.grid
        return QuantizationParams(
            scale=g.scale.copy(),
            zero_point=g.zero_point.copy(),
            qmin=np.array(g.qmin, dtype=np.int32),
            qmax=np.array(g.qmax, dtype=np.int32),
            axis=None if g.axis is None else np.array(g.axis, dtype=np.int32),
        )

    # -- serialization ----------------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """The constructor's arguments as plain JSON-able data, plus ``config_version``.

        The default reads each constructor parameter from the attribute of the same name, where
        subclasses keep the validated value (Python floats, ints, bools, lists of floats).
        """
        config = {}
        for name in _parameters(type(self)):
            value = getattr(self, name)
            config[name] = list(value) if isinstance(value, (list, tuple)) else value
        config["config_version"] = CONFIG_VERSION
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]):
        """Rebuild a quantizer from :meth:`get_config`'s output, validating every key and value.

        Raises:
            TypeError: If ``config`` is not a dict.
            ValueError: For unknown or missing keys, a config from a newer iqcore, or any bad value.
        """
        if not isinstance(config, dict):
            raise TypeError(f"config for {cls.__name__} must be a dict; got {type(config).__name__}")
        config = dict(config)
        version = config.pop("config_version", CONFIG_VERSION)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"config_version is {version!r}; allowed: an int from 1 to {CONFIG_VERSION}")
        if version > CONFIG_VERSION:
            raise ValueError(
                f"config_version is {version}, written by a newer iqcore; this one reads up to {CONFIG_VERSION}: "
                "upgrade iqcore to load it"
            )
        params = inspect.signature(cls.__init__).parameters
        allowed = _parameters(cls)
        unknown = sorted(set(config) - set(allowed))
        if unknown:
            raise ValueError(f"unknown config keys {unknown} for {cls.__name__}; allowed: {allowed}")
        missing = [n for n in allowed if params[n].default is inspect.Parameter.empty and n not in config]
        if missing:
            raise ValueError(f"config for {cls.__name__} is missing required keys {missing}")
        return cls(**config)

    #: Config keys that describe the layout, not the grid; :meth:`summary` leaves them out.
    LAYOUT_KEYS: ClassVar[frozenset[str]] = frozenset(
        {"num_bits", "per_channel", "channel_axis", "input_rank", "narrow_range", "config_version"})

    def summary(self) -> str:
        """One line of the parameters that set the grid (``iqcore inspect``'s last column): each config value
        except the layout, a list shown as its only value or as ``[min..max] (n)``."""
        parts = []
        for key, value in self.get_config().items():
            if key in self.LAYOUT_KEYS:
                continue
            if isinstance(value, (list, tuple)) and value and all(isinstance(x, (int, float)) for x in value):
                shown = f"{value[0]:.6g}" if len(value) == 1 else f"[{min(value):.6g}..{max(value):.6g}] ({len(value)})"
            elif isinstance(value, float):
                shown = f"{value:.6g}"
            else:
                shown = str(value)
            parts.append(f"{key}={shown}")
        return " ".join(parts)

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self), json.dumps(self.get_config(), sort_keys=True)))

    def __repr__(self):
        config = self.get_config()
        config.pop("config_version", None)
        args = ", ".join(f"{k}={val!r}" for k, val in config.items())
        return f"{type(self).__name__}({args})"


def can_calibrate(cls: type[InferableQuantizer]) -> bool:
    """Whether ``cls`` implements :meth:`InferableQuantizer.calibrate` (the base only refuses)."""
    return cls.calibrate.__func__ is not InferableQuantizer.calibrate.__func__  # type: ignore[attr-defined]


def threshold_range(thresholds: list[float], num_bits: int, signed: bool, narrow_range: bool):
    """The float64 range of a threshold grid (see the module docstring), one entry per threshold."""
    t = np.asarray(thresholds, dtype=np.float64)
    step = t / 2.0 ** (num_bits - int(signed))
    if signed:
        low = -t + step if narrow_range else -t
        return low, t - step
    return np.zeros_like(t), t - (2 * step if narrow_range else step)


def unused_rank(per_channel, input_rank):
    """``input_rank``, or None for the ``input_rank=0`` that the seed's toolchain writes per tensor
    (``{'per_channel': False, 'channel_axis': 1, 'input_rank': 0}``), where no rank is used."""
    if per_channel is False and isinstance(input_rank, (int, np.integer)) and not isinstance(input_rank, bool) \
            and input_rank == 0:
        return None
    return input_rank


class ThresholdQuantizer(InferableQuantizer):
    """Shared by the threshold bases: T is validated by :meth:`check_threshold`, which methods extend."""

    def check_threshold(self, values: list[float]) -> list[float]:
        """Validate thresholds (each > 0); methods with stricter rules (power of two) extend this."""
        return v.check_positive("threshold", values)

    #: The grid's ends, one per threshold, as lists of floats (the seed's ``min_range``/``max_range``):
    #: ``[-T]``/``[T - s]`` signed, ``[0.0]``/``[T - s]`` unsigned (``narrow_range`` drops the end code).
    min_range: list[float]
    max_range: list[float]
    signed: bool

    def _set_threshold_grid(self, threshold, signed: bool, axis=None) -> None:
        self.threshold = self.check_threshold(v.check_floats("threshold", threshold))
        v.check_count("threshold", self.threshold, axis is not None)
        low, high = threshold_range(self.threshold, self.num_bits, signed, self.narrow_range)
        self.min_range = [float(x) for x in np.atleast_1d(low)]
        self.max_range = [float(x) for x in np.atleast_1d(high)]
        if axis is None:
            low, high = low[0], high[0]
        rank = None if axis is None else self.input_rank
        self.set_grid(low, high, self.num_bits, self.narrow_range, axis, rank, {"threshold": self.threshold})

    @classmethod
    def threshold_for(cls, largest, num_bits: int, signed: bool, narrow_range: bool) -> np.ndarray:
        """The thresholds whose top grid value is ``largest`` (one per channel), so that no value is clipped.

        The top value of a threshold grid is ``T - s`` (``T - 2s`` unsigned with ``narrow_range``), with
        ``s = T / 2**(num_bits - signed)``; methods with stricter thresholds (powers of two) override this.
        """
        steps = 2.0 ** (num_bits - int(signed))
        top = 1.0 - (2.0 if narrow_range and not signed else 1.0) / steps
        return np.asarray(largest, np.float64) / top

    @classmethod
    def thresholds_of(cls, low, high, num_bits: int, signed: bool, narrow_range: bool) -> np.ndarray:
        """:meth:`threshold_for` the largest ``|x|`` of each range ``[low, high]`` (an all-zero range takes
        the largest of the others, or 1)."""
        return cls.threshold_for(calibration.positive(np.maximum(np.abs(low), np.abs(high))), num_bits, signed,
                                 narrow_range)


class ThresholdWeightsQuantizer(ThresholdQuantizer):
    """Signed weights grid ``[-T, T - T/2**(num_bits-1)]`` per tensor or per channel on any axis.

    Args:
        num_bits: Bit width, an int in 2..16.
        threshold: T: one positive value per-tensor, or one per channel (list, tuple or 1-d array).
        per_channel: One threshold per channel along ``channel_axis``.
        channel_axis: The channel axis, in ``[-input_rank, input_rank)``; needed when ``per_channel``.
        input_rank: Rank of the tensors this quantizer is called on; needed when ``per_channel``.
        narrow_range: Drop the lowest code (-T), keeping the step: int8 weights in [-127, 127].
    """

    target = "weights"

    def __init__(self, num_bits, threshold, per_channel=False, channel_axis=None, input_rank=None,
                 narrow_range=False):
        self.num_bits = v.check_num_bits(num_bits)
        self.narrow_range = v.check_bool("narrow_range", narrow_range)
        self.signed = True  # weights grids are always signed (the seed's ``signed`` property)
        axis = self.set_layout(per_channel, channel_axis, unused_rank(per_channel, input_rank))
        self._set_threshold_grid(threshold, signed=True, axis=axis)

    @classmethod
    def calibrate(cls, observation, settings):
        """Thresholds from the weights: per channel, the largest ``|w|`` of the range the strategy picks is
        the top grid value (:meth:`threshold_for`), so the minmax strategy clips no weight."""
        def build(low, high):
            t = cls.thresholds_of(low, high, settings.num_bits, True, settings.narrow_range)
            return cls(num_bits=settings.num_bits, threshold=t.tolist(), narrow_range=settings.narrow_range,
                       **observation.layout())

        return calibration.search_range(observation, settings, build)


class ThresholdActivationQuantizer(ThresholdQuantizer):
    """Per-tensor activation grid: ``[-T, T - T/2**(num_bits-1)]`` signed, ``[0, T - T/2**num_bits]`` unsigned.

    Args:
        num_bits: Bit width, an int in 2..16.
        threshold: T, one positive value (a number or a one-element list).
        signed: Whether the grid covers negative values.
        narrow_range: Drop one code, keeping the step (signed: -T; unsigned: the top code).
    """

    target = "activation"

    def __init__(self, num_bits, threshold, signed, narrow_range=False):
        self.num_bits = v.check_num_bits(num_bits)
        self.signed = v.check_bool("signed", signed)
        self.narrow_range = v.check_bool("narrow_range", narrow_range)
        self._set_threshold_grid(threshold, signed=self.signed)

    @classmethod
    def calibrate(cls, observation, settings):
        """Signed when the observed minimum is negative; the largest ``|x|`` of the range the strategy picks
        is the top grid value (:meth:`threshold_for`). A fixed range ``[low, high)`` (an int8 softmax
        output) becomes the threshold ``max(|low|, high)``, which reproduces that grid."""
        signed = bool(observation.min < 0)
        if observation.fixed_range:
            t = max(abs(observation.min), abs(observation.max))
            return cls(num_bits=settings.num_bits, threshold=t, signed=signed, narrow_range=settings.narrow_range)

        def build(low, high):
            t = cls.thresholds_of(low, high, settings.num_bits, signed, settings.narrow_range)
            return cls(num_bits=settings.num_bits, threshold=float(t[0]), signed=signed,
                       narrow_range=settings.narrow_range)

        return calibration.search_range(observation, settings, build)


def check_ranges(min_range, max_range, per_channel: bool) -> tuple[list[float], list[float]]:
    """Validate ``min_range``/``max_range`` pairs: flat, finite, equal lengths, each ``min < max``."""
    lows = v.check_floats("min_range", min_range)
    highs = v.check_floats("max_range", max_range)
    v.check_count("min_range", lows, per_channel)
    if len(lows) != len(highs):
        raise ValueError(
            f"min_range has {len(lows)} values and max_range {len(highs)}; allowed: the same number of values"
        )
    for i, (lo, hi) in enumerate(zip(lows, highs, strict=True)):
        if not lo < hi:
            raise ValueError(f"min_range[{i}]={lo!r} is not below max_range[{i}]={hi!r}; allowed: min < max")
    return lows, highs
