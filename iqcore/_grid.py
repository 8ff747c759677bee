"""The quantization grid and its NumPy reference, bit-exact with TensorFlow's fake-quant kernel.

Every quantizer, whatever its method, reduces to a range ``[min, max]`` per channel, a bit width and a
``narrow_range`` flag. :func:`make_grid` turns those into the grid TensorFlow's
``FakeQuantWithMinMaxVars`` kernel computes with, emulating its float32 arithmetic step by step:

    qmin, qmax = (1 if narrow_range else 0), 2**num_bits - 1
    scale      = (max - min) / (qmax - qmin)
    zp         = clamp(round_half_away(qmin - min / scale), qmin, qmax)
    nmin, nmax = (qmin - zp) * scale, (qmax - zp) * scale
    qz         = floor(-nmin / scale + 0.5)
    out        = floor((clamp(x, nmin, nmax) - nmin) / scale - qz + 0.5) * scale

Each line is one float32 operation, in this order: the subtraction before the scaling drops low bits, so an
input one ulp below a tie can land on the tie and round up (half up, toward +inf). :func:`fake_quant` is that
formula in NumPy; it is the reference every quantizer is tested against.

Integer codes are signed ``num_bits``-bit integers, as in TFLite's int8 scheme: ``code = step + zero_point``
where ``step = out / scale`` and ``zero_point = zp - 2**(num_bits - 1)``, so that
``float32((code - zero_point) * scale) == out`` bit for bit.
"""

from __future__ import annotations

import dataclasses

import numpy as np

F32 = np.float32
F32_TINY = float(np.finfo(np.float32).tiny)


@dataclasses.dataclass(frozen=True, eq=False)
class Grid:
    """The nudged float32 grid of one quantizer (arrays have one entry per channel, or are 0-d).

    Attributes:
        num_bits: Bit width, 2..16.
        narrow_range: Whether the lowest integer code is unused.
        axis: The channel axis (non-negative, < ``rank``), or None for a per-tensor grid.
        rank: The input rank the per-channel arrays are laid out for (None per-tensor).
        min, max: The float32 range handed to TensorFlow's op.
        scale, nudged_min, nudged_max, quant_zero: float32, as TensorFlow's kernel computes them.
        zero_point: The signed integer zero point (``zp - 2**(num_bits - 1)``), int32.
        reciprocal: ``1 / scale`` rounded to float64, used by the TensorFlow kernel (see ``kernels``).
    """

    num_bits: int
    narrow_range: bool
    axis: int | None
    rank: int | None
    min: np.ndarray
    max: np.ndarray
    scale: np.ndarray
    nudged_min: np.ndarray
    nudged_max: np.ndarray
    quant_zero: np.ndarray
    zero_point: np.ndarray
    reciprocal: np.ndarray

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    @property
    def channels(self) -> int | None:
        """Number of channels of a per-channel grid, None per-tensor."""
        return None if self.axis is None else int(self.scale.shape[0])

    @property
    def qmin(self) -> int:
        """Lowest signed integer code."""
        return -(2 ** (self.num_bits - 1)) + int(self.narrow_range)

    @property
    def qmax(self) -> int:
        """Highest signed integer code."""
        return 2 ** (self.num_bits - 1) - 1

    def broadcast_shape(self) -> tuple[int, ...]:
        """Shape that lays the per-channel arrays along ``axis`` of a ``rank``-d tensor (``()`` per-tensor)."""
        if self.axis is None or self.rank is None:
            return ()
        shape = [1] * self.rank
        shape[self.axis] = -1
        return tuple(shape)


def _round_half_away(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.floor(np.abs(x) + F32(0.5))


def make_grid(
    min_range,
    max_range,
    num_bits: int,
    narrow_range: bool = False,
    axis: int | None = None,
    rank: int | None = None,
    source: dict[str, list[float]] | None = None,
) -> Grid:
    """Nudge a float range onto TensorFlow's fake-quant grid.

    Args:
        min_range, max_range: Range bounds, scalars or one per channel; cast to float32 as TensorFlow does.
        num_bits: Bit width (validated by the caller).
        narrow_range: Leave the lowest integer code unused.
        axis: Non-negative channel axis for a per-channel grid, or None.
        rank: Input rank for a per-channel grid.
        source: The user-facing parameters the range came from (``{"threshold": [...]}``), one value per
            channel, named in the error message.

    Returns:
        The :class:`Grid`.

    Raises:
        ValueError: If the range does not give a finite, normal float32 grid (``min >= max``, a scale too
            small for float32, or a range that overflows it).
    """
    with np.errstate(over="ignore"):  # a bound beyond float32 becomes inf and is refused below
        lo = np.asarray(min_range, dtype=np.float64).astype(F32)
        hi = np.asarray(max_range, dtype=np.float64).astype(F32)
    qmin = F32(1 if narrow_range else 0)
    qmax = F32(2**num_bits - 1)
    with np.errstate(all="ignore"):
        scale = (hi - lo) / (qmax - qmin)
        zp_from_min = qmin - lo / scale
        zp = np.where(zp_from_min < qmin, qmin, np.where(zp_from_min > qmax, qmax, _round_half_away(zp_from_min)))
        zp = zp.astype(F32)
        nudged_min = (qmin - zp) * scale
        nudged_max = (qmax - zp) * scale
        quant_zero = np.floor(-nudged_min / scale + F32(0.5))
    bad = ~(np.isfinite(scale) & (scale >= F32_TINY) & np.isfinite(nudged_min) & np.isfinite(nudged_max))
    if np.any(bad):
        i = int(np.flatnonzero(np.atleast_1d(bad))[0])
        named = ", ".join(f"{k}[{i}]={vals[i]!r}" for k, vals in (source or {}).items())
        low, high, step = (float(np.atleast_1d(a)[i]) for a in (lo, hi, scale))
        raise ValueError(
            (f"{named}: " if named else "")
            + f"range [{low!r}, {high!r}] at {num_bits} bits gives a float32 step of {step!r}; allowed: a finite "
            f"step of at least {F32_TINY!r} (float32's smallest normal number) and a range that fits in float32"
        )
    return Grid(
        num_bits=num_bits,
        narrow_range=bool(narrow_range),
        axis=axis,
        rank=rank,
        min=np.asarray(lo, F32),
        max=np.asarray(hi, F32),
        scale=np.asarray(scale, F32),
        nudged_min=np.asarray(nudged_min, F32),
        nudged_max=np.asarray(nudged_max, F32),
        quant_zero=np.asarray(quant_zero, F32),
        zero_point=np.asarray(zp.astype(np.int64) - 2 ** (num_bits - 1), np.int32),
        reciprocal=1.0 / np.asarray(scale, np.float64),
    )


def laid_out(grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(scale, nudged_min, nudged_max, quant_zero)`` shaped to broadcast along the grid's axis."""
    shape = grid.broadcast_shape()
    return (np.reshape(grid.scale, shape), np.reshape(grid.nudged_min, shape), np.reshape(grid.nudged_max, shape),
            np.reshape(grid.quant_zero, shape))


def steps_laid_out(x: np.ndarray, scale, nudged_min, nudged_max, quant_zero) -> np.ndarray:
    """:func:`steps` on float32 ``x`` with parameters from :func:`laid_out`: TensorFlow's float32 operations
    in its order, in place on one new array (NaN stays NaN, no warning)."""
    y = np.asarray(np.maximum(x, nudged_min))  # a new array (0-d for a scalar), then updated in place
    np.minimum(y, nudged_max, out=y)
    np.subtract(y, nudged_min, out=y)
    np.divide(y, scale, out=y)
    np.subtract(y, quant_zero, out=y)
    np.add(y, F32(0.5), out=y)
    return np.floor(y, out=y)


def _checked(x, grid: Grid) -> np.ndarray:
    x = np.asarray(x, dtype=F32)
    if grid.axis is not None and x.ndim != grid.rank:
        raise ValueError(f"input of rank {x.ndim} does not match the grid's rank {grid.rank}")
    return x


def steps(x, grid: Grid) -> np.ndarray:
    """Signed integer steps ``out / scale`` of :func:`fake_quant`, as float32 (NaN stays NaN)."""
    return steps_laid_out(_checked(x, grid), *laid_out(grid))


def fake_quant(x, grid: Grid) -> np.ndarray:
    """NumPy reference of TensorFlow's fake-quant kernel on ``grid`` (float32 in, float32 out)."""
    params = laid_out(grid)
    y = steps_laid_out(_checked(x, grid), *params)
    return np.multiply(y, params[0], out=y)


def codes(x, grid: Grid) -> np.ndarray:
    """Signed integer codes of ``x`` on ``grid`` (int32); NaN inputs are a ValueError."""
    s = steps(x, grid)
    if np.isnan(s).any():
        raise ValueError("x contains NaN, which has no integer code; allowed: finite values or ±inf")
    zp = np.reshape(grid.zero_point, grid.broadcast_shape())
    return (s.astype(np.int32) + zp).astype(np.int32)


def dequantize(codes_, params) -> np.ndarray:
    """``float32((codes - zero_point) * scale)``: what an integer back end computes.

    ``params`` is a :class:`Grid` or a quantizer's ``quantization_params()``: anything with ``scale``,
    ``zero_point`` and ``axis`` (None per-tensor); per-channel arrays are laid along ``axis`` of ``codes``.
    """
    codes_ = np.asarray(codes_, dtype=np.int64)
    shape: tuple[int, ...] = ()
    if params.axis is not None:
        layout = [1] * codes_.ndim
        layout[int(params.axis)] = -1
        shape = tuple(layout)
    zp = np.reshape(np.asarray(params.zero_point, np.int64), shape)
    scale = np.reshape(np.asarray(params.scale, F32), shape)
    return ((codes_ - zp).astype(F32) * scale).astype(F32)


def probe_values(grid: Grid, max_ties: int = 512, seed: int = 0) -> list[np.ndarray]:
    """Inputs that probe a grid's rounding, one float32 array per channel (one array per-tensor).

    Each array holds rounding ties in both forms TensorFlow's arithmetic meets them (``nmin + (k + 0.5)s``
    and ``(k + 0.5 - qz)s``), their ±1-ulp neighbours, the nudged ends and one step beyond, 0 and -0, ±inf,
    NaN, float32's extremes and a subnormal, and random values over the range; ``max_ties`` caps the ties
    sampled per channel at high bit widths.
    """
    rng = np.random.default_rng(seed)
    probes = []
    for scale, nmin, nmax, qz in zip(*(np.atleast_1d(a) for a in (grid.scale, grid.nudged_min, grid.nudged_max,
                                                                   grid.quant_zero)), strict=True):
        levels = 2**grid.num_bits - 1 - int(grid.narrow_range)
        k = np.arange(levels, dtype=np.float64)
        if levels > max_ties:
            k = np.unique(np.concatenate([k[:8], k[-8:], rng.choice(k, max_ties, replace=False)]))
        k = k.astype(F32)
        with np.errstate(all="ignore"):
            ties = np.concatenate([nmin + (k + F32(0.5)) * scale, (k + F32(0.5) - qz) * scale]).astype(F32)
            span = F32(nmax - nmin)
            randoms = rng.uniform(nmin - 0.1 * span, nmax + 0.1 * span, 256).astype(F32)
        ends = np.array([nmin, nmax, nmin - scale, nmax + scale, 0.0, -0.0, np.inf, -np.inf, np.nan,
                         3.4e38, -3.4e38, 1e-40, -1e-40], dtype=F32)
        up = np.nextafter(ties, F32(np.inf))
        down = np.nextafter(ties, F32(-np.inf))
        probes.append(np.concatenate([ties, up, down, ends, randoms]).astype(F32))
    return probes


def probe_tensor(grid: Grid, per_channel_count: int = 512, seed: int = 0) -> np.ndarray:
    """:func:`probe_values` laid out as one input tensor for ``grid``.

    Per-tensor: a 1-d array of every probe. Per-channel: a ``grid.rank``-d array whose slice at channel c
    along ``grid.axis`` holds ``per_channel_count`` of channel c's probes (a power of two; one at rank 1,
    where channels take successive probes in turn so that all are covered across channels).
    """
    probes = probe_values(grid, seed=seed)
    if grid.axis is None or grid.rank is None:
        return probes[0]
    count = 1 if grid.rank == 1 else per_channel_count
    rows = []
    for c, p in enumerate(probes):
        start = (c * count) % len(p)
        rows.append(np.take(p, np.arange(start, start + count), mode="wrap"))
    other = [] if grid.rank == 1 else [count // 2 ** (grid.rank - 2)] + [2] * (grid.rank - 2)
    laid = np.stack(rows).reshape([len(probes)] + other)
    return np.ascontiguousarray(np.moveaxis(laid, 0, grid.axis))
