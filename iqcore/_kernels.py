"""TensorFlow kernels that compute :mod:`iqcore._grid`'s formula bit-exactly in eager, graph and XLA modes.

Three traps shape the broadcasting kernel (measured on TF 2.21, see docs/exactness.md):

* Grappler (graph mode) and XLA rewrite ``x / constant`` into ``x * (1 / constant)``, which flips whole
  steps for scales that are not powers of two. The kernel never divides: it multiplies in float64 by
  ``1 / scale`` rounded to float64 and rounds the product to float32. For float32 ``u`` and ``scale`` that
  equals the correctly rounded quotient ``u / scale`` (``u / scale`` is never a float32 midpoint, and the
  float64 product is within 2**-52 of it while a midpoint is at least 2**-49 away).
* XLA folds ``(x - c1) - c2`` into ``x - (c1 + c2)``, dropping the float32 rounding of ``x - nmin`` that
  TensorFlow's kernel performs (and that makes an input one ulp below a tie round up). Every step is
  therefore computed in float64 and rounded to float32 by an explicit cast, which no optimizer removes;
  double rounding is innocuous for +, -, * at 53 vs 24 bits.
* XLA on CPU fuses ``a * b - c`` into an FMA. No product here feeds an addition directly.

Per-tensor grids outside XLA call TensorFlow's own ``fake_quant_with_min_max_vars``: it is the reference,
it runs at memory speed, and the TFLite converter turns it into int8 quantization parameters. Under XLA the
op is lowered with a different formula, so there the broadcasting kernel runs instead.

Speed (see docs/performance.md; every path performs the reference's float32 operations in its order):

* Per-channel grids outside XLA run the kernel compiled by XLA on its own (``tf.function(jit_compile=True)``
  around the kernel alone): one fused pass over the tensor, no transposes, no buffer but the output.
  TensorFlow's own per-channel op is far slower than a memory copy on CPU, works on the last axis only and
  disagrees with the per-tensor op on rare near-ties, so it is never used. That compiled kernel
  (:func:`_kernel_float32`) is the reference's float32 formula literally, division included: the division
  and reassociation traps above need constant parameters, and its parameters are always run-time values
  (eager tensors eagerly, ``PlaceholderWithDefault`` outputs in a graph), while no product feeds an
  addition (no FMA). It is much faster than the float64-staged :func:`steps`, which stays for code paths
  where the parameters are constants (inside an enclosing XLA compilation, graphs with ``IQCORE_XLA=0``).
* Eagerly, per-channel tensors of at most ``SMALL_EAGER`` elements, and the first call with a new shape
  below ``COMPILE_AT_ONCE`` elements (a Keras layer quantizes its weights once: compiling for that would cost
  more than it saves), are computed in NumPy with :func:`iqcore._grid.fake_quant`'s float32 operations in
  place on one array (IEEE float32: the reference itself; cheaper than dispatching TensorFlow ops, and
  lighter than running the staged kernel op by op). The compiled kernel takes over from the second call
  with a shape, or at once for tensors of at least ``COMPILE_AT_ONCE`` elements; it is called by name,
  skipping ``tf.function``'s Python dispatch.
* The grid's parameters are laid out and converted to tensors once per grid and cached, so an eager
  per-tensor call is one TensorFlow op.
* ``IQCORE_XLA=0`` in the environment turns the separately compiled kernel off (NumPy eagerly, :func:`steps`
  op by op in graphs), for platforms without XLA's CPU JIT.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from iqcore import _grid as grid_lib
from iqcore._grid import Grid

FLOAT_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)

#: Eager per-channel tensors up to this many elements are computed in NumPy (the reference itself).
SMALL_EAGER = 1 << 14
#: Eager per-channel tensors of at least this many elements use the compiled kernel from their first call.
COMPILE_AT_ONCE = 1 << 22
#: Whether per-channel grids outside XLA use the separately compiled kernel (``IQCORE_XLA=0`` turns it off).
USE_XLA = os.environ.get("IQCORE_XLA", "1").strip().lower() not in {"0", "false", "no", "off"}

with tf.init_scope():  # this module may first be imported while a tf.function is being traced
    _EagerTensor = type(tf.constant(0.0))
_FLOAT32 = tf.float32


def _eager_constant_factory():
    """The cheapest way to wrap a NumPy array as an eager tensor on the current device (``tf.constant`` costs
    about as much as a small op; the ``EagerTensor`` constructor it ends in, half)."""
    try:
        from tensorflow.python.eager import context
        from tensorflow.python.framework import ops

        def make(a: np.ndarray) -> tf.Tensor:
            return ops.EagerTensor(a, context.context().device_name, None)

        probe = np.arange(3, dtype=np.float32)
        if np.array_equal(make(probe).numpy(), probe):
            return make
    except Exception:  # noqa: BLE001 - a private constructor that moved: fall back to the public one
        pass
    return tf.constant


_eager_constant = _eager_constant_factory()


def _as_numpy(x) -> np.ndarray:
    """An eager tensor's buffer as a NumPy array, without the copy ``.numpy()`` makes when it can."""
    view = getattr(x, "_numpy", None)
    return view() if view is not None else x.numpy()


def in_xla_context() -> bool:
    """Whether the current trace is being compiled by XLA (``jit_compile=True``)."""
    return tf.__internal__.get_enclosing_xla_context() is not None


def as_float_tensor(x, name: str = "x") -> tf.Tensor:
    """Convert ``x`` to a tensor and check that it has a floating dtype the kernels accept.

    Raises:
        TypeError: For integer, bool, complex or string tensors.
    """
    if not isinstance(x, (tf.Tensor, tf.Variable)) and not tf.is_tensor(x):
        try:
            x = tf.convert_to_tensor(x)
        except (TypeError, ValueError) as e:
            raise TypeError(
                f"{name} must be a float tensor or convertible to one; got {type(x).__name__}: {e}") from None
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} has dtype {x.dtype.name}; allowed: float16, bfloat16, float32, float64 "
            "(cast integer data to float first)"
        )
    return x


def check_layout(x: tf.Tensor, grid: Grid) -> tf.Tensor:
    """Check a per-channel input's rank and channel count against ``grid`` (statically when known).

    Returns ``x``, with a run-time check attached when the channel dimension is unknown at trace time.
    """
    if grid.axis is None:
        return x
    rank = x.shape.rank
    if rank is not None and rank != grid.rank:
        raise ValueError(
            f"input has rank {rank} (shape {x.shape}); allowed: rank {grid.rank}, the quantizer's input_rank"
        )
    dim = x.shape[grid.axis] if rank is not None else None
    if dim is not None:
        if dim != grid.channels:
            raise ValueError(
                f"input has {dim} channels on axis {grid.axis} (shape {x.shape}) but the quantizer holds "
                f"{grid.channels} per-channel values; allowed: a channel dimension of {grid.channels}"
            )
        return x
    checks = [
        tf.debugging.assert_rank(x, grid.rank, message="input rank does not match the quantizer's input_rank"),
        tf.debugging.assert_equal(
            tf.shape(x)[grid.axis],
            grid.channels,
            message=f"input's channel dimension on axis {grid.axis} must equal {grid.channels}",
        ),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(x)


def _clamp(x32, low, high):
    """Clamp to ``[low, high]`` with NaN kept NaN, as TensorFlow's kernel does: XLA's CPU max/min before
    TF 2.21 return the non-NaN operand (NaN became ``nmin`` on TF 2.15 and 2.16 under ``jit_compile``)."""
    return tf.where(tf.math.is_nan(x32), x32, tf.minimum(tf.maximum(x32, low), high))


_F64_LOW_BITS = 52 - 23  # float64 mantissa bits below float32's


def _rounded(x64: tf.Tensor) -> tf.Tensor:
    """Round float64 values to float32 precision (half to even), staying in float64.

    Done on the bit pattern with integer operations, which no optimizer folds: XLA in TF 2.16 drops a
    float64 -> float32 -> float64 round trip of casts as if it were exact. Correct for values whose float32
    result is normal, and for the small values met here (subnormal float32 values are exact differences of
    two float32 values, or vanish in the next subtraction). NaN stays NaN: values come from float32, so the
    low bits of a NaN's payload are zero and the rounding cannot carry into its exponent.
    """
    bits = tf.bitcast(x64, tf.int64)
    odd = tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, _F64_LOW_BITS), 1)
    bits = tf.bitwise.bitwise_and(bits + (2 ** (_F64_LOW_BITS - 1) - 1) + odd, -(2**_F64_LOW_BITS))
    return tf.bitcast(bits, tf.float64)


def _staged_steps(x32, nmin, nmax, reciprocal, quant_zero):
    """Signed integer steps of float32 ``x32`` on laid-out NumPy parameters, safe with constant parameters.

    Each float32 operation of TensorFlow's kernel is done in float64, where it is exact (the division is a
    multiply by the float64 reciprocal, within 2**-52 of the quotient, see the module docstring), then rounded
    to float32 precision by :func:`_rounded`: double rounding is innocuous at 53 vs 24 bits, and no optimizer
    can fold constants across the integer rounding (XLA folds ``(x - c1) - c2`` into ``x - (c1 + c2)``
    otherwise, dropping the rounding of ``x - nmin``).
    """
    clamped = tf.cast(_clamp(x32, nmin, nmax), tf.float64)
    shifted = _rounded(clamped - nmin.astype(np.float64))
    scaled = _rounded(shifted * reciprocal)
    centred = _rounded(scaled - quant_zero.astype(np.float64))
    return tf.floor(tf.cast(centred + 0.5, tf.float32))


def steps(x32: tf.Tensor, grid: Grid) -> tf.Tensor:
    """Signed integer steps of a float32 tensor on ``grid``, as float32 (see :func:`iqcore._grid.steps`)."""
    return _staged_steps(x32, *_plan(grid).staged)


def _kernel(x32, grid: Grid) -> tf.Tensor:
    """The whole float64-staged kernel (inlined under an enclosing XLA compilation, op by op in graphs with
    ``IQCORE_XLA=0``)."""
    plan = _plan(grid)
    return _staged_steps(x32, *plan.staged) * plan.np_ref[0]


def _kernel_float32(x32, nmin, nmax, quant_zero32, scale):
    """TensorFlow's float32 operations in its order, division included, for run-time parameters only.

    This is :func:`iqcore._grid.fake_quant` literally. It is exact only where no optimizer sees the parameters
    as constants: Grappler and XLA rewrite ``x / constant`` into a multiply by the reciprocal and fold
    ``(x - c1) - c2``, but a division by a run-time value stays an IEEE float32 division (XLA's CPU backend
    runs without fast-math by default), and no product here feeds an addition (no FMA). Callers pass eager
    tensors (``_eager_caller``) or ``PlaceholderWithDefault`` outputs (graphs), never constants.
    """
    shifted = _clamp(x32, nmin, nmax) - nmin
    return tf.floor(shifted / scale - quant_zero32 + 0.5) * scale


def _channel_kernel(x32, nmin, nmax, quant_zero32, scale, axis: int, last: bool):
    """:func:`_kernel_float32` with 1-d parameters on ``x32`` viewed as ``(outer, channels, inner)``, or
    ``(outer, channels)`` for the last axis: the same elementwise operations on the same elements, in the
    layout XLA's loops handle best (reshapes of a contiguous tensor are free)."""
    shape = tf.shape(x32)
    outer = tf.reduce_prod(shape[:axis])
    if last:
        view, laid = tf.stack([outer, -1]), [1, -1]
    else:
        view, laid = tf.stack([outer, -1, tf.reduce_prod(shape[axis + 1:])]), [1, -1, 1]
    params = [tf.reshape(p, laid) for p in (nmin, nmax, quant_zero32, scale)]
    return tf.reshape(_kernel_float32(tf.reshape(x32, view), *params), shape)


# The kernel compiled alone. Its parameters are run-time arguments, so XLA compiles one executable per input
# shape (and channel axis), not per grid. Under an enclosing XLA compilation the kernel is inlined instead.
_compiled_kernel_float32 = tf.function(_channel_kernel, jit_compile=True, autograph=False, reduce_retracing=True)


class _Plan:
    """What one grid needs at call time, computed once: laid-out NumPy parameters and eager tensors."""

    def __init__(self, grid: Grid):
        # NumPy reference parameters laid out along the grid's axis (see iqcore._grid.laid_out).
        self.np_ref = grid_lib.laid_out(grid)
        scale, nmin, nmax, quant_zero = self.np_ref
        self.staged = (nmin, nmax, np.reshape(grid.reciprocal, grid.broadcast_shape()), quant_zero)
        self.axis: int = -1 if grid.axis is None else grid.axis  # -1: per-tensor (never used for a channel)
        self.last = grid.axis is not None and grid.rank is not None and grid.axis == grid.rank - 1
        # 1-d parameters for the compiled kernel, which lays them out itself.
        self.arrays32 = tuple(np.ravel(a) for a in (nmin, nmax, quant_zero, scale))
        with tf.init_scope():  # eager tensors even when the first call happens while tracing a graph
            self.tensors = tuple(tf.constant(a) for a in self.arrays32)
            self.min = tf.constant(grid.min)
            self.max = tf.constant(grid.max)
        self.calls: dict[tuple, int] = {}
        # input rank -> a callable running the compiled kernel eagerly
        self.compiled: dict[int, Callable[[tf.Tensor], tf.Tensor]] = {}
        self.lock = threading.Lock()

    def numpy_fake_quant(self, x: np.ndarray) -> np.ndarray:
        """:func:`iqcore._grid.fake_quant` with the parameters laid out in advance (the reference itself)."""
        y = grid_lib.steps_laid_out(x, *self.np_ref)
        return np.multiply(y, self.np_ref[0], out=y)

    def run_compiled(self, x: tf.Tensor) -> tf.Tensor:
        """Run the compiled kernel eagerly on ``x`` (rank-generic: XLA compiles once per concrete shape)."""
        call = self.compiled.get(len(x.shape))
        if call is None:
            call = self.compiled[len(x.shape)] = _eager_caller(x, self.tensors, self.axis, self.last)
        return call(x)

    def compile_now(self, shape: tuple, elements: int) -> bool:
        """Whether an eager call of this shape should use the compiled kernel (see the module docstring)."""
        if elements >= COMPILE_AT_ONCE:
            return True
        with self.lock:
            n = self.calls.get(shape, 0)
            if n < 2:
                self.calls[shape] = n + 1
        return n >= 1


def _eager_caller(x: tf.Tensor, params: tuple, axis: int, last: bool):
    """A callable running the compiled float32 kernel eagerly on ``x`` with the least Python in between.

    The parameters are eager tensors passed at every call, so they are run-time arguments of the XLA
    executable and :func:`_kernel_float32` is exact (it runs at 1.2-1.5x a copy where the float64-staged
    kernel, which stays for constant parameters, runs at about 2x). ``tf.function``'s own dispatch
    (binding, signature matching, tracing-cache lookup) costs several times a small kernel on a busy machine;
    the traced function is called by name instead, as its concrete function does internally. Private API:
    any failure falls back to the concrete function, which raises real errors.
    """
    spec = tf.TensorSpec([None] * len(x.shape), tf.float32)  # one traced function for every shape of this rank
    concrete = _compiled_kernel_float32.get_concrete_function(spec, *params, axis, last)

    def slow(t):
        return concrete(t, *params)

    try:
        from tensorflow.python.eager import context

        name = concrete._inference_function.name
        if concrete.captured_inputs or not callable(getattr(context.context(), "call_function", None)):
            return slow
    except Exception:  # noqa: BLE001 - internals that moved in another TensorFlow version
        return slow

    def fast(t):
        try:
            return context.context().call_function(name, [t, *params], 1)[0]
        except Exception:  # noqa: BLE001 - e.g. a reset context that no longer holds the function
            return slow(t)

    return fast


_plans: weakref.WeakKeyDictionary[Grid, _Plan] = weakref.WeakKeyDictionary()
_plans_lock = threading.Lock()


def _plan(grid: Grid) -> _Plan:
    plan = _plans.get(grid)
    if plan is None:
        with _plans_lock:
            plan = _plans.get(grid)
            if plan is None:
                plan = _plans[grid] = _Plan(grid)
    return plan


def _eager_float32(x: tf.Tensor, grid: Grid) -> tf.Tensor:
    """The fast eager path for a float32 tensor: the fewest Python steps between the call and the kernel."""
    plan = _plan(grid)
    if grid.axis is None:
        return tf.raw_ops.FakeQuantWithMinMaxVars(
            inputs=x, min=plan.min, max=plan.max, num_bits=grid.num_bits, narrow_range=grid.narrow_range
        )
    a = _as_numpy(x)  # a read-only view of the tensor's buffer, not a copy
    shape = a.shape
    if len(shape) != grid.rank or shape[grid.axis] != grid.channels:
        check_layout(x, grid)  # raises the full error
    elements = a.size
    if elements > SMALL_EAGER and USE_XLA and plan.compile_now(shape, elements):
        return plan.run_compiled(x)
    return _eager_constant(plan.numpy_fake_quant(a))


def fake_quant(x, grid: Grid) -> tf.Tensor:
    """Fake-quantize ``x`` on ``grid``; returns a tensor of ``x``'s shape and dtype.

    Raises:
        TypeError: If ``x`` is not a float tensor.
        ValueError: If ``x``'s rank or channel dimension does not match a per-channel grid.
    """
    if type(x) is _EagerTensor and x.dtype is _FLOAT32:
        return _eager_float32(x, grid)
    x = check_layout(as_float_tensor(x), grid)
    x32 = tf.cast(x, tf.float32) if x.dtype != tf.float32 else x
    if type(x32) is _EagerTensor:
        y = _eager_float32(x32, grid)
    elif grid.axis is None and not in_xla_context():
        y = tf.quantization.fake_quant_with_min_max_vars(
            x32, grid.min, grid.max, num_bits=grid.num_bits, narrow_range=grid.narrow_range
        )
    elif USE_XLA and not in_xla_context():
        # PlaceholderWithDefault keeps the parameters run-time values: Grappler's constant folding never folds
        # a placeholder (grappler/op_types.cc IsPlaceholder), so neither it nor XLA sees constants to rewrite
        # and the float32 kernel is exact (see _kernel_float32).
        plan = _plan(grid)
        params = [tf.raw_ops.PlaceholderWithDefault(input=a, shape=a.shape) for a in plan.arrays32]
        y = _compiled_kernel_float32(x32, *params, plan.axis, plan.last)
    else:
        y = _kernel(x32, grid)
    return tf.cast(y, x.dtype) if x.dtype != tf.float32 else y


def codes(x, grid: Grid) -> tf.Tensor:
    """Signed integer codes of ``x`` on ``grid``: int8 up to 8 bits, int16 above.

    NaN has no code: eagerly it is a ValueError, in a graph a run-time InvalidArgumentError.
    """
    x = check_layout(as_float_tensor(x), grid)
    s = steps(tf.cast(x, tf.float32), grid)
    has_nan = tf.reduce_any(tf.math.is_nan(s))
    if tf.executing_eagerly():
        if bool(has_nan):
            raise ValueError("x contains NaN, which has no integer code; allowed: finite values or ±inf")
    else:
        with tf.control_dependencies([tf.debugging.Assert(tf.logical_not(has_nan), ["x contains NaN"])]):
            s = tf.identity(s)
    out_dtype = tf.int8 if grid.num_bits <= 8 else tf.int16
    zero_point = np.reshape(grid.zero_point, grid.broadcast_shape())
    return tf.cast(tf.cast(s, tf.int32) + zero_point, out_dtype)
