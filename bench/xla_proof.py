"""Prove, on the installed TensorFlow, which forms of iqcore's XLA-context kernel are bit-exact.

    python bench/xla_proof.py              # every form, bit widths 2..16, narrow and wide ranges
    python bench/xla_proof.py --time       # also time each form under XLA on 1e6 and 1.6e7 elements (ratios)
    nox -s xla_proof                       # the same on every TensorFlow version of the nox matrix

Under an enclosing XLA compilation (``tf.function(jit_compile=True)``, Keras ``jit_compile`` models) the
quantizer's parameters are constants, and XLA's algebraic rewrites differ between TensorFlow versions. Each form
of ``iqcore._kernels.XLA_FORMS`` is run there on the selfcheck's probe inputs (every rounding tie in both forms
TensorFlow's arithmetic meets them, their ±1-ulp neighbours, the range ends and one step beyond, ±0, ±inf, NaN,
float32's extremes, a subnormal, random values) for per-tensor grids (uniform, symmetric, power-of-two) and per-
channel grids (rank 4 on axis 1, rank 2 on its last axis, rank 3 on axis 0; non-power-of-two ranges; 4096 probes
per channel), bit widths 2..16, narrow and wide, and compared bit for bit with ``iqcore._grid.fake_quant`` (NaN
equals NaN). One verdict line is printed per form; the last line is the ``XLA_PROVEN`` entry for
``iqcore/_kernels.py``. Exit status 1 if the form iqcore uses on this version is not exact.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import iqcore  # noqa: E402
from iqcore import _grid as g  # noqa: E402
from iqcore import _kernels as kernels  # noqa: E402

MODES = ("jit_compile", "keras")


def quantizers(num_bits: int, narrow: bool, seed: int) -> list:
    """Per-tensor and per-channel quantizers of one bit width, ranges that are mostly not powers of two."""
    rng = np.random.default_rng(seed)
    common = dict(num_bits=num_bits, narrow_range=narrow)
    lo, hi = -rng.uniform(0.01, 4), rng.uniform(0.01, 4)
    out = [
        iqcore.get_quantizer("uniform", "weights", min_range=[lo], max_range=[hi], **common),
        iqcore.get_quantizer("symmetric", "weights", threshold=[rng.uniform(0.01, 8)], **common),
        iqcore.get_quantizer("pot", "weights", threshold=[float(2.0 ** rng.integers(-6, 6))], **common),
    ]
    for rank, axis, channels in ((4, 1, 5), (2, 1, 7), (3, 0, 3)):
        out.append(iqcore.get_quantizer(
            "uniform", "weights", min_range=(-rng.uniform(0.01, 4, channels)).tolist(),
            max_range=rng.uniform(0.01, 4, channels).tolist(), per_channel=True, channel_axis=axis,
            input_rank=rank, **common))
    return out


def _keras_runner(qs: list, seen: list):
    """A Keras model compiled with ``jit_compile=True`` that applies each quantizer to its input."""
    keras = tf.keras
    keras.backend.clear_session()  # a fresh Keras state for each model (Keras 2 keeps a global graph and names)

    class Probe(keras.Model):
        def call(self, inputs):
            seen.append(kernels.in_xla_context())
            return [q(x[0])[None] for q, x in zip(qs, inputs, strict=True)]

    model = Probe()
    model.compile(jit_compile=True)

    def run(xs):
        return [np.asarray(y)[0] for y in model.predict_on_batch([x[None] for x in xs])]

    return run


def _jit_runner(qs: list, seen: list):
    def fn(*xs):
        seen.append(kernels.in_xla_context())
        return [q(x) for q, x in zip(qs, xs, strict=True)]

    f = tf.function(fn, jit_compile=True, autograph=False)
    return lambda xs: [np.asarray(y) for y in f(*[tf.constant(x) for x in xs])]


def mismatches(got: np.ndarray, want: np.ndarray) -> int:
    got = np.asarray(got, np.float32)
    differ = (got.view(np.uint32) != want.view(np.uint32)) & ~(np.isnan(got) & np.isnan(want))
    return int(differ.sum())


def prove(form: str, bits, modes) -> dict:
    """{(layout, mode): [elements, mismatches, first failing case]} for one form (layout: per-tensor/-channel)."""
    kernels.XLA_FORM_PER_TENSOR = kernels.XLA_FORM_PER_CHANNEL = form
    counts: dict = {}
    for num_bits in bits:
        for narrow in (False, True):
            qs = quantizers(num_bits, narrow, seed=num_bits * 2 + narrow)
            if form == "tf_op":
                qs = [q for q in qs if q.grid.axis is None]
            xs = [g.probe_tensor(q.grid, per_channel_count=4096, seed=num_bits) for q in qs]
            wants = [g.fake_quant(x, q.grid) for q, x in zip(qs, xs, strict=True)]
            for mode in modes:
                seen: list = []
                run = (_jit_runner if mode == "jit_compile" else _keras_runner)(qs, seen)
                try:
                    outs = run(xs)
                except Exception as e:  # noqa: BLE001 - a form that does not compile is not exact
                    outs = [None] * len(qs)
                    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
                    error = f"{type(e).__name__}: {' / '.join(lines[-2:])[:300]}"
                else:
                    error = None if seen and all(seen) else "not traced under XLA"
                for q, x, want, got in zip(qs, xs, wants, outs, strict=True):
                    layout = "per-tensor" if q.grid.axis is None else "per-channel"
                    c = counts.setdefault((layout, mode), [0, 0, None])
                    bad = x.size if (error or got is None) else mismatches(got, want)
                    c[0] += x.size
                    c[1] += bad
                    if bad and c[2] is None:
                        c[2] = error or (f"{type(q).__name__} {num_bits} bits narrow={narrow} "
                                         f"axis={q.grid.axis}: {bad} of {x.size}")
    return counts


def timings(forms, rounds: int = 9) -> dict:
    """Per form and size, medians of interleaved per-round ratios under ``jit_compile``: per-tensor over a copy
    and over the raw TF op, per-channel (last axis, axis 0) over a copy (bench/timing.py)."""
    import timing

    rng = np.random.default_rng(0)
    out: dict = {}
    for size, shape in (("1e6", (10, 100, 1000)), ("1.6e7", (16, 1000, 1000))):
        x = tf.constant(rng.uniform(-2, 2, shape).astype(np.float32))
        grids = {
            "per-tensor": iqcore.get_quantizer("symmetric", "weights", num_bits=8, threshold=[1.37]).grid,
            "last axis": iqcore.get_quantizer(
                "symmetric", "weights", num_bits=8, threshold=rng.uniform(0.3, 3, shape[-1]).tolist(),
                per_channel=True, channel_axis=2, input_rank=3).grid,
            "axis 0": iqcore.get_quantizer(
                "symmetric", "weights", num_bits=8, threshold=rng.uniform(0.3, 3, shape[0]).tolist(),
                per_channel=True, channel_axis=0, input_rank=3).grid,
        }
        fns = {"copy": tf.negative, "raw op": lambda t: tf.quantization.fake_quant_with_min_max_vars(
            t, -1.37, 1.37, narrow_range=True)}
        for form in forms:
            for layout, grid in grids.items():
                if form != "tf_op" or layout == "per-tensor":
                    fns[f"{form}|{layout}"] = lambda t, f=form, g=grid: kernels._kernel(t, g, f)
        candidates = {}
        for name, fn in fns.items():
            compiled = tf.function(fn, jit_compile=True, autograph=False)
            compiled(x)
            candidates[name] = lambda c=compiled, x=x: c(x)
        times = timing.interleaved(candidates, rounds, 0.2)
        for name in candidates:
            if "|" in name:
                form, layout = name.split("|")
                cell = out.setdefault((size, form), {})
                cell[layout] = timing.ratio(times, name, "copy")["median"]
                if layout == "per-tensor":
                    cell["per-tensor / raw op"] = timing.ratio(times, name, "raw op")["median"]
        out[(size, "raw TF op")] = {"per-tensor": timing.ratio(times, "raw op", "copy")["median"]}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bits", default="2-16", help="bit widths, e.g. 2-16 or 2,8,16")
    p.add_argument("--forms", default=",".join(kernels.XLA_FORMS), help="forms to prove (default: all)")
    p.add_argument("--modes", default=",".join(MODES), help="jit_compile,keras")
    p.add_argument("--time", action="store_true", help="also time each form under XLA (1e6, 1.6e7 elements)")
    args = p.parse_args(argv)
    if "-" in args.bits:
        a, b = args.bits.split("-")
        bits = list(range(int(a), int(b) + 1))
    else:
        bits = [int(b) for b in args.bits.split(",")]
    forms = args.forms.split(",")
    modes = args.modes.split(",")
    used = (kernels.XLA_FORM_PER_TENSOR, kernels.XLA_FORM_PER_CHANNEL)
    keras_version = getattr(tf.keras, "__version__", None) or getattr(__import__("keras"), "__version__", "?")
    print(f"# xla_proof: TensorFlow {tf.__version__}, Keras {keras_version}, Python {sys.version.split()[0]}, "
          f"NumPy {np.__version__}; bits {bits[0]}..{bits[-1]}, modes {', '.join(modes)}; iqcore uses "
          f"per-tensor {used[0]!r}, per-channel {used[1]!r} here", flush=True)
    proven: dict[str, list[str]] = {"per-tensor": [], "per-channel": []}
    start = time.perf_counter()
    for form in forms:
        counts = prove(form, bits, modes)
        for layout in ("per-tensor", "per-channel"):
            cells = {m: counts.get((layout, m)) for m in modes}
            if not any(cells.values()):
                print(f"verdict {form:8s} {layout:12s} n/a", flush=True)
                continue
            exact = all(c and c[1] == 0 for c in cells.values())
            detail = "; ".join(f"{m}: {c[1]} of {c[0]} differ" + (f" (first: {c[2]})" if c[2] else "")
                               for m, c in cells.items() if c)
            print(f"verdict {form:8s} {layout:12s} {'EXACT' if exact else 'WRONG'}  {detail}", flush=True)
            if exact:
                proven[layout].append(form)
    print(f"# {time.perf_counter() - start:.0f} s", flush=True)
    if args.time:
        for (size, form), cell in timings(forms).items():
            print(f"time {size:6s} {form:10s} " + ", ".join(f"{k} {v:.2f}x" + ("" if "/" in k else " copy")
                                                           for k, v in cell.items()), flush=True)
    print(f'XLA_PROVEN["{tf.__version__}"] = ({tuple(proven["per-tensor"])!r}, {tuple(proven["per-channel"])!r})')
    ok = used[0] in proven["per-tensor"] or used[0] not in forms
    ok &= used[1] in proven["per-channel"] or used[1] not in forms
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
