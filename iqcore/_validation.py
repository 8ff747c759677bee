"""Parameter checks shared by every quantizer: each raises ``TypeError``/``ValueError`` naming the
parameter, the value it got and what is allowed. They run at construction and so also in ``from_config``.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

MIN_BITS, MAX_BITS = 2, 16


def check_bool(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool; got {value!r} ({type(value).__name__}); allowed: True or False")
    return bool(value)


def check_int(name: str, value, low: int, high: int) -> int:
    """An int (not bool, not float) in ``[low, high]``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(
            f"{name} must be an int; got {value!r} ({type(value).__name__}); allowed: an int in {low}..{high}"
        )
    if not low <= int(value) <= high:
        raise ValueError(f"{name} must be in {low}..{high}; got {value!r}")
    return int(value)


def check_num_bits(value) -> int:
    return check_int("num_bits", value, MIN_BITS, MAX_BITS)


def _as_number(name: str, value) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise TypeError(f"{name} must hold real numbers; got {value!r} ({type(value).__name__})")
    return float(value)


def check_floats(name: str, value) -> list[float]:
    """A non-empty flat sequence of finite real numbers (a bare number counts as one), as Python floats.

    Lists, tuples, NumPy arrays and scalars are accepted; strings, nested sequences and NaN/inf are not.
    """
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be a number or a flat list of numbers; got the string {value!r}")
    if isinstance(value, np.ndarray):
        if value.ndim > 1:
            raise ValueError(f"{name} must be flat (one value per channel); got an array of shape {value.shape}")
        value = value.tolist()
    if isinstance(value, (numbers.Real, np.floating, np.integer)) and not isinstance(value, (bool, np.bool_)):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise TypeError(
            f"{name} must be a number or a flat list, tuple or 1-d array of numbers; got {type(value).__name__}"
        )
    if not value:
        raise ValueError(f"{name} is empty; allowed: one value, or one per channel")
    floats = []
    for i, v in enumerate(value):
        if isinstance(v, (list, tuple, np.ndarray)):
            raise ValueError(f"{name}[{i}] is a sequence ({v!r}); allowed: a flat list of numbers")
        f = _as_number(f"{name}[{i}]", v)
        if not math.isfinite(f):
            raise ValueError(f"{name}[{i}] is {f!r}; allowed: finite numbers")
        floats.append(f)
    return floats


def check_positive(name: str, values: list[float]) -> list[float]:
    for i, v in enumerate(values):
        if not v > 0:
            raise ValueError(f"{name}[{i}] is {v!r}; allowed: numbers > 0")
    return values


def check_power_of_two(name: str, values: list[float]) -> list[float]:
    """Each value is 2**k for an integer k (checked on the float's mantissa: no int conversion, no overflow)."""
    for i, v in enumerate(values):
        if math.frexp(v)[0] != 0.5:
            raise ValueError(f"{name}[{i}] is {v!r}, not a power of two; allowed: 2**k, e.g. 0.5, 1.0, 4.0")
    return values


def check_count(name: str, values: list, per_channel: bool) -> None:
    if not per_channel and len(values) != 1:
        raise ValueError(
            f"{name} has {len(values)} values but per_channel is False; allowed: exactly one value "
            "(set per_channel=True for one value per channel)"
        )


def check_layout(per_channel: bool, channel_axis, input_rank) -> tuple[int | None, int | None]:
    """Validate the per-channel layout; returns the normalised (non-negative) axis and the rank."""
    if input_rank is not None:
        input_rank = check_int("input_rank", input_rank, 1, 32)
    if channel_axis is not None:
        if isinstance(channel_axis, (bool, np.bool_)) or not isinstance(channel_axis, (numbers.Integral, np.integer)):
            raise TypeError(f"channel_axis must be an int; got {channel_axis!r} ({type(channel_axis).__name__})")
        channel_axis = int(channel_axis)
    if not per_channel:
        return None, input_rank
    if channel_axis is None or input_rank is None:
        raise ValueError(
            f"per_channel=True needs channel_axis and input_rank; got channel_axis={channel_axis!r}, "
            f"input_rank={input_rank!r}"
        )
    if not -input_rank <= channel_axis < input_rank:
        raise ValueError(
            f"channel_axis is {channel_axis} for input_rank {input_rank}; allowed: {-input_rank}..{input_rank - 1}"
        )
    return channel_axis % input_rank, input_rank
