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

Some XLA versions also drop a float64 -> float32 -> float64 round trip of casts (TF 2.16, 2.17), so the safe form
of the kernel (``staged``) rounds to float32 precision with integer operations on the bit pattern. Cheaper
forms (:data:`XLA_FORMS`) are used under an enclosing XLA compilation only on the TensorFlow versions where
``bench/xla_proof.py`` proved them exact (:data:`XLA_PROVEN`); any other version runs ``staged``. The cheapest
exact one, ``barrier``, is the reference's float32 formula with the parameters passed through XLA's
optimization barrier: behind it XLA does not know their values, so the first two traps have no constant to work
on.

Per-tensor grids outside XLA call TensorFlow's own ``fake_quant_with_min_max_vars``: it is the reference,
it runs at memory speed, and the TFLite converter turns it into int8 quantization parameters. Under XLA the
op is lowered with a different formula, so there the broadcasting kernel runs instead. When XLA
auto-clustering is on (:func:`auto_jit`), graphs run the staged kernel whatever the grid: the clustering may
compile TensorFlow's op, or the other kernels' constants, without any ``jit_compile`` context to detect.

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
  skipping ``tf.function``'s Python dispatch. Results of at most ``TINY_EAGER`` elements are written into
  a per-thread 64-byte-aligned arena and handed to TensorFlow through DLPack without a copy (wrapping a
  NumPy array costs more than the arithmetic there).
* The grid's parameters are laid out and converted to tensors once per grid and cached, so an eager
  per-tensor call is one TensorFlow op.
* ``IQCORE_XLA=0`` in the environment turns the separately compiled kernel off (NumPy eagerly, :func:`steps`
  op by op in graphs), for platforms without XLA's CPU JIT.
"""

from __future__ import annotations

import importlib
import os
import threading
import weakref
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from iqcore import _grid as grid_lib
from iqcore._grid import Grid

try:  # XLA's optimization barrier (HLO ``opt-barrier``), from a private module of TensorFlow's
    from tensorflow.compiler.tf2xla.python.xla import optimization_barrier as _xla_barrier
except ImportError:  # moved in another TensorFlow version: the ``barrier`` form is then unavailable
    _xla_barrier = None


def _clip_ufunc() -> Callable[..., np.ndarray]:
    """The clip ufunc itself (numpy._core in NumPy 2, numpy.core in 1.x): np.clip's Python wrapper costs more
    than the operation on a tiny array."""
    for name in ("numpy._core.umath", "numpy.core.umath"):
        try:
            return importlib.import_module(name).clip
        except (ImportError, AttributeError):
            continue
    return np.clip


_clip = _clip_ufunc()

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
_HALF = np.float32(0.5)


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

#: Eager per-channel results of at most this many elements are written into a shared aligned arena and handed
#: to TensorFlow without a copy (see :func:`_adopt_factory`).
TINY_EAGER = 256
_ARENA_FLOATS = 4096  # one arena: 16 KiB, carved into 64-byte-aligned slices, kept alive by its slices
_ALIGN_FLOATS = 16  # 64 bytes: the alignment TensorFlow's CPU kernels assume (Eigen's largest)


class _Arena(threading.local):
    """Per-thread aligned float32 memory for tiny eager results."""

    def __init__(self):
        self.buf = np.empty(0, np.float32)
        self.pos = 0


_arena = _Arena()


def _aligned_empty(shape: tuple, size: int) -> np.ndarray:
    """A new float32 array of ``shape`` (``size`` <= ``TINY_EAGER`` elements) starting on a 64-byte boundary."""
    arena = _arena
    pos = arena.pos
    if pos + size > arena.buf.size:
        raw = np.empty(_ARENA_FLOATS + _ALIGN_FLOATS, np.float32)
        start = (-raw.ctypes.data % (4 * _ALIGN_FLOATS)) // 4
        arena.buf = raw[start:start + _ARENA_FLOATS]
        pos = 0
    arena.pos = pos + -(-size // _ALIGN_FLOATS) * _ALIGN_FLOATS
    return arena.buf[pos:pos + size].reshape(shape)


def _adopt_factory():
    """The cheapest way to hand a fresh, 64-byte-aligned float32 array to TensorFlow as an eager CPU tensor:
    DLPack, which shares the buffer instead of copying it (the ``EagerTensor`` constructor costs several times
    more). TensorFlow's DLPack import does not check alignment, hence :func:`_aligned_empty`. None when GPUs
    are visible (results then follow the current device, as :func:`_eager_constant` places them) or when the
    entry point moved."""
    try:
        if tf.config.list_physical_devices("GPU"):
            return None
        from tensorflow.python import pywrap_tfe
        from tensorflow.python.eager import context

        def adopt(a: np.ndarray) -> tf.Tensor:
            return pywrap_tfe.TFE_FromDlpackCapsule(a.__dlpack__(), context.context()._handle)

        probe = _aligned_empty((3,), 3)
        probe[:] = (1.0, -2.0, np.nan)
        y = adopt(probe)
        if type(y) is _EagerTensor and y.dtype == tf.float32 and np.array_equal(y.numpy(), probe, equal_nan=True):
            return adopt
    except Exception:  # noqa: BLE001 - a private entry point that moved: results are copied instead
        pass
    return None


_adopt = _adopt_factory()


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


def _rounded_by_casts(x64: tf.Tensor) -> tf.Tensor:
    """Round float64 values to float32 precision by a float32 round trip of casts (exact only where the
    compiler keeps the round trip; see ``XLA_PROVEN``)."""
    return tf.cast(tf.cast(x64, tf.float32), tf.float64)


def _staged_steps(x32, nmin, nmax, reciprocal, quant_zero, rounded=_rounded):
    """Signed integer steps of float32 ``x32`` on laid-out NumPy parameters, safe with constant parameters.

    Each float32 operation of TensorFlow's kernel is done in float64, where it is exact (the division is a
    multiply by the float64 reciprocal, within 2**-52 of the quotient, see the module docstring), then rounded
    to float32 precision by :func:`_rounded`: double rounding is innocuous at 53 vs 24 bits, and no optimizer
    can fold constants across the integer rounding (XLA folds ``(x - c1) - c2`` into ``x - (c1 + c2)``
    otherwise, dropping the rounding of ``x - nmin``). ``rounded`` swaps in another rounding for
    :data:`XLA_FORMS`.
    """
    clamped = tf.cast(_clamp(x32, nmin, nmax), tf.float64)
    shifted = rounded(clamped - nmin.astype(np.float64))
    scaled = rounded(shifted * reciprocal)
    centred = rounded(scaled - quant_zero.astype(np.float64))
    return tf.floor(tf.cast(centred + 0.5, tf.float32))


def steps(x32: tf.Tensor, grid: Grid) -> tf.Tensor:
    """Signed integer steps of a float32 tensor on ``grid``, as float32 (see :func:`iqcore._grid.steps`)."""
    return _staged_steps(x32, *_plan(grid).staged)


def _kernel(x32, grid: Grid, form: str = "staged") -> tf.Tensor:
    """The whole kernel with the grid's parameters as constants, in one of :data:`XLA_FORMS`: ``"staged"``
    everywhere (op by op in graphs with ``IQCORE_XLA=0`` or under auto-clustering), the form chosen for the
    running TensorFlow (:data:`XLA_FORM_PER_TENSOR`, :data:`XLA_FORM_PER_CHANNEL`) inlined under an
    enclosing XLA compilation."""
    plan = _plan(grid)
    nmin, nmax, reciprocal, quant_zero = plan.staged
    scale = plan.np_ref[0]
    if form == "staged":
        return _staged_steps(x32, nmin, nmax, reciprocal, quant_zero) * scale
    if form == "cast":
        return _staged_steps(x32, nmin, nmax, reciprocal, quant_zero, _rounded_by_casts) * scale
    if form == "lean":  # float32 where one operation rounds once; float64 rounded by casts where XLA could fold
        shifted = _clamp(x32, nmin, nmax) - nmin
        scaled = tf.cast(shifted, tf.float64) * reciprocal
        centred = tf.cast(_rounded_by_casts(scaled) - quant_zero.astype(np.float64), tf.float32)
        return tf.floor(centred + 0.5) * scale
    if form == "mixed":  # float32 steps, the division as a float64 multiply rounded by a cast
        scaled = tf.cast(tf.cast(_clamp(x32, nmin, nmax) - nmin, tf.float64) * reciprocal, tf.float32)
        return tf.floor(scaled - quant_zero + 0.5) * scale
    if form == "float32":  # the reference's float32 operations literally, division included
        return _kernel_float32(x32, nmin, nmax, quant_zero, scale)
    if form == "barrier" and _xla_barrier is not None:
        # Behind the barrier the parameters are values XLA cannot see into, so no rewrite needs a constant.
        params = (tf.constant(a) for a in (nmin, nmax, quant_zero, np.asarray(scale, np.float32)))
        return _kernel_float32(x32, *_xla_barrier(*params))
    if form == "tf_op" and grid.axis is None:
        return tf.quantization.fake_quant_with_min_max_vars(
            x32, grid.min, grid.max, num_bits=grid.num_bits, narrow_range=grid.narrow_range)
    raise ValueError(f"unknown kernel form {form!r} for this grid; allowed: {', '.join(XLA_FORMS)}")


#: The forms of the kernel under an enclosing XLA compilation, cheapest first. ``tf_op``: TensorFlow's own
#: per-tensor op (XLA lowers it with its own formula); ``float32``: the reference's float32 operations with
#: constant parameters (exposed to XLA's rewrite of ``x / c``); ``barrier``: the same operations with the
#: parameters passed through XLA's optimization barrier, which hides their values from the algebraic
#: simplifier (the division stays an IEEE division, nothing is folded); ``mixed``: float32 steps, the
#: division as a float64 multiply rounded by casts; ``lean``: float32 where one operation rounds once,
#: float64 rounded by casts around the division and the subtraction of the zero point (where XLA folds
#: float32 constants); ``cast``: every step in float64, rounded by a float32 round trip of casts;
#: ``staged``: every step in float64, rounded with integer operations (exact on any compiler).
XLA_FORMS = ("tf_op", "float32", "barrier", "mixed", "lean", "cast", "staged")

#: TensorFlow versions on which ``bench/xla_proof.py`` proved forms bit-exact under XLA (``jit_compile=True``
#: and Keras ``jit_compile`` models, per-tensor and per-channel, bit widths 2..16, probe inputs): version ->
#: (forms proven per-tensor, forms proven per-channel). A version not listed runs ``staged``. The results of
#: each run are in docs/versions.md.
XLA_PROVEN: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "2.15.1": (("barrier", "lean", "cast", "staged"), ("barrier", "lean", "cast", "staged")),
    "2.16.2": (("barrier", "staged"), ("barrier", "staged")),
    "2.17.1": (("barrier", "staged"), ("barrier", "staged")),
    "2.18.1": (("barrier", "lean", "cast", "staged"), ("barrier", "lean", "cast", "staged")),
    "2.19.1": (("barrier", "lean", "cast", "staged"), ("barrier", "lean", "cast", "staged")),
    "2.20.0": (("barrier", "lean", "cast", "staged"), ("barrier", "lean", "cast", "staged")),
    "2.21.0": (("barrier", "lean", "cast", "staged"), ("barrier", "lean", "cast", "staged")),
}


def _available(form: str) -> bool:
    """Whether ``form`` is a form of :data:`XLA_FORMS` this TensorFlow can build (``barrier`` needs XLA's
    optimization barrier)."""
    return form in XLA_FORMS and (form != "barrier" or _xla_barrier is not None)


def xla_forms(version: str) -> tuple[str, str]:
    """The cheapest forms proven on TensorFlow ``version``: (per-tensor, per-channel), ``staged`` otherwise."""
    per_tensor, per_channel = XLA_PROVEN.get(version, ((), ()))
    return (next((f for f in XLA_FORMS if f in per_tensor and _available(f)), "staged"),
            next((f for f in XLA_FORMS if f in per_channel and f != "tf_op" and _available(f)), "staged"))


_ENV_FORM = os.environ.get("IQCORE_XLA_FORM", "").strip()
#: The forms used under an enclosing XLA compilation on the running TensorFlow (``IQCORE_XLA_FORM=staged``
#: forces the safe form; ``bench/xla_proof.py`` sets a form to test it).
XLA_FORM_PER_TENSOR, XLA_FORM_PER_CHANNEL = (
    (_ENV_FORM, _ENV_FORM) if _available(_ENV_FORM) else xla_forms(tf.__version__))


def auto_jit() -> bool:
    """Whether XLA auto-clustering may compile graph ops (``TF_XLA_FLAGS=--tf_xla_auto_jit=...`` or
    ``tf.config.optimizer.set_jit(True)``): there constants reach XLA without ``jit_compile``."""
    for flag in os.environ.get("TF_XLA_FLAGS", "").split():
        name, _, value = flag.partition("=")
        if name in ("--tf_xla_auto_jit", "--tf_xla_cpu_global_jit") and value.strip().lower() not in (
                "0", "-1", "false", "off"):
            return True
    try:
        return bool(tf.config.optimizer.get_jit())
    except Exception:  # noqa: BLE001 - an API that moved: assume auto-clustering may be on
        return True


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
        self.rank, self.channels = grid.rank, grid.channels
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

    def numpy_fake_quant_into(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """:meth:`numpy_fake_quant` written into ``y``: :func:`iqcore._grid.steps_laid_out`'s float32 operations
        in its order, then the rescale."""
        scale, nmin, nmax, quant_zero = self.np_ref
        # One clip for maximum-then-minimum: the same values, NaN kept, except that -0.0 may stay -0.0 where
        # maximum gives 0.0 against a zero bound, which the shift by nmin and the + 0.5 below erase.
        _clip(x, nmin, nmax, out=y)
        np.subtract(y, nmin, out=y)
        np.divide(y, scale, out=y)
        np.subtract(y, quant_zero, out=y)
        np.add(y, _HALF, out=y)
        np.floor(y, out=y)
        return np.multiply(y, scale, out=y)

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
    a = x._numpy()  # a read-only view of the tensor's buffer, not a copy
    shape = a.shape
    if len(shape) != plan.rank or shape[plan.axis] != plan.channels:
        check_layout(x, grid)  # raises the full error
    elements = a.size
    if elements <= TINY_EAGER and _adopt is not None and elements:
        return _adopt(plan.numpy_fake_quant_into(a, _aligned_empty(shape, elements)))
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
    elif in_xla_context():
        y = _kernel(x32, grid, XLA_FORM_PER_TENSOR if grid.axis is None else XLA_FORM_PER_CHANNEL)
    elif auto_jit():
        # Auto-clustering may hand any of these ops to XLA with the parameters as constants, or leave them to
        # Grappler: only the staged form is exact under both.
        y = _kernel(x32, grid)
    elif grid.axis is None:
        y = tf.quantization.fake_quant_with_min_max_vars(
            x32, grid.min, grid.max, num_bits=grid.num_bits, narrow_range=grid.narrow_range
        )
    elif USE_XLA:
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
