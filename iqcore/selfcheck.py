"""Check, on this machine's TensorFlow, that every installed quantizer is bit-exact with its own reference.

    python -m iqcore.selfcheck            # full sweep: every method, target, bit width and layout
    python -m iqcore.selfcheck --quick    # bit widths 2, 8 and 16 only

Every registered (method, target) is checked, a plugin's as much as iqcore's own: each quantizer is built by
its class's ``calibrate`` from random data (per tensor, and for weights per channel on every axis of ranks
1-4), then called in each execution mode (eager, ``tf.function``, ``tf.function(jit_compile=True)``) on
rounding ties, their ±1-ulp neighbours, ends, ±inf, NaN and random values. Each output is compared bit for
bit with the quantizer's NumPy :meth:`~iqcore.InferableQuantizer.reference`; for quantizers on TensorFlow's
fake-quant grid that reference is itself compared with ``fake_quant_with_min_max_vars`` (mode ``tf-op``).

A bit width a method refuses (``ValueError``/``TypeError`` from its ``calibrate``) is counted as skipped; a
method that cannot calibrate itself is reported as not checked, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import numpy as np

from iqcore import _grid as g
from iqcore import _registry as registry
from iqcore import calibration

MODES = ("tf-op", "eager", "graph", "xla")


@dataclasses.dataclass
class Row:
    """The counts of one (method, target)."""

    method: str
    target: str
    distribution: str
    checked: dict[str, list[int]] = dataclasses.field(default_factory=lambda: {m: [0, 0] for m in MODES})
    quantizers: int = 0
    skipped_bits: set[int] = dataclasses.field(default_factory=set)
    problem: str | None = None


def _weights(rng, shape, axis) -> np.ndarray:
    """Random weights whose channels along ``axis`` have random magnitudes and offsets."""
    layout = [1] * len(shape)
    if axis is not None:
        layout[axis] = shape[axis]
    scale = np.exp2(rng.uniform(-8, 3, layout))
    offset = rng.uniform(-1, 1, layout) * rng.integers(0, 2, layout)
    return ((rng.normal(size=shape) + offset) * scale).astype(np.float32)


def _observations(info, rng):
    """``(observation, narrow-range flag seed)`` pairs: per tensor, and per channel on every axis of ranks 1-4."""
    if info.target == "activation":
        for low in (-2.0, 0.0, 0.5):
            scale = float(np.exp2(rng.uniform(-8, 3)))
            values = rng.uniform(low, low + rng.uniform(0.5, 4), 4096) * scale
            yield calibration.ActivationObservation.of(values)
        yield calibration.ActivationObservation(0.0, 1.0, fixed_range=True)
        return
    yield calibration.WeightsObservation(_weights(rng, (3, 3, 4, 5), None), None)
    for rank in range(1, 5):
        shape = (600,) if rank == 1 else (3,) * rank
        for axis in range(rank):
            yield calibration.WeightsObservation(_weights(rng, shape, axis), axis)


def _check(row: Row, q, x: np.ndarray) -> None:
    import tensorflow as tf

    want = np.asarray(q.reference(x), np.float32)
    xt = tf.constant(x)
    outputs = {"eager": q(xt), "graph": tf.function(q)(xt), "xla": tf.function(q, jit_compile=True)(xt)}
    grid = q.grid
    if grid.axis is None and np.array_equal(want, g.fake_quant(x, grid), equal_nan=True):
        outputs["tf-op"] = tf.quantization.fake_quant_with_min_max_vars(
            xt, grid.min, grid.max, num_bits=grid.num_bits, narrow_range=grid.narrow_range)
    for mode, got in outputs.items():
        got = np.asarray(got, np.float32)
        differ = (got.view(np.uint32) != want.view(np.uint32)) & ~(np.isnan(got) & np.isnan(want))
        row.checked[mode][0] += x.size
        row.checked[mode][1] += int(differ.sum())


def sweep(bits) -> list[Row]:
    """One :class:`Row` per registered (method, target)."""
    rng = np.random.default_rng(0)
    rows = []
    for info in registry.list_quantizers():
        row = Row(info.method, info.target, info.distribution)
        rows.append(row)
        for num_bits in bits:
            settings = calibration.Settings(num_bits=num_bits, narrow_range=bool(num_bits % 2))
            for observation in _observations(info, rng):
                try:
                    q = info.cls.calibrate(observation, settings)
                except NotImplementedError as e:
                    row.problem = f"cannot calibrate itself, so it was not checked: {e}"
                    break
                except (TypeError, ValueError):
                    row.skipped_bits.add(num_bits)
                    continue
                row.quantizers += 1
                _check(row, q, g.probe_tensor(q.grid, per_channel_count=128, seed=num_bits))
            if row.problem:
                break
    return rows


def report(rows: list[Row]) -> str:
    lines = [f"{'method':<12}{'target':<12}{'mode':<8}{'quantizers':>11}{'elements':>12}{'mismatches':>12}"]
    for row in rows:
        if row.problem:
            lines.append(f"{row.method:<12}{row.target:<12}{row.problem} ({row.distribution})")
            continue
        for mode, (checked, bad) in row.checked.items():
            if checked:
                lines.append(f"{row.method:<12}{row.target:<12}{mode:<8}{row.quantizers:>11}{checked:>12}{bad:>12}")
        if row.skipped_bits:
            lines.append(f"{'':<24}bit widths the method refuses: {sorted(row.skipped_bits)}")
    return "\n".join(lines)


def failed(rows: list[Row]) -> bool:
    return any(row.problem or row.quantizers == 0 or any(bad for _, bad in row.checked.values()) for row in rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m iqcore.selfcheck", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="bit widths 2, 8 and 16 only")
    args = parser.parse_args(argv)
    bits = (2, 8, 16) if args.quick else tuple(range(2, 17))
    rows = sweep(bits)
    print(report(rows))
    return 1 if failed(rows) else 0


if __name__ == "__main__":
    sys.exit(main())
