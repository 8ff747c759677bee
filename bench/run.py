"""iqcore's benchmark suite: ratios measured side by side in one process, plus exactness counts.

    python bench/run.py            # the full suite (about 10 minutes on a 2-core machine)
    python bench/run.py --quick    # about a minute: 1e6 elements, fewer rounds

Prints one table and writes ``bench/results/latest.json`` (``quick.json`` with ``--quick``); a full run also
refreshes the generated part of ``docs/performance.md``. See ``bench/README.md`` for what each column means.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import timing  # noqa: E402

import iqcore  # noqa: E402
from iqcore import _grid as grid_lib  # noqa: E402

try:  # the seed's library, for comparison only (never a dependency of iqcore)
    from mct_quantizers.keras import quantizers as mct  # noqa: E402
except Exception:  # noqa: BLE001 - absent or broken: the mct column is left out
    mct = None

SIZES = {"1e3": (3, 3, 8, 14), "1e5": (3, 3, 96, 116), "1e6": (3, 3, 333, 334), "1.6e7": (3, 3, 1333, 1333)}
SMALL = (2, 2, 2, 2)  # 16 elements, two channels on every axis
AXES = {"last": 3, "middle": 2, "first": 0}
MODES = ("eager", "graph", "xla")
NUM_BITS = 8
ACT_RANGE = (-0.73, 1.91)
PT_THRESHOLD = 1.37


# -- quantizers and data -----------------------------------------------------------------------------------
def thresholds(n: int, seed: int = 1) -> list[float]:
    """Per-channel thresholds that are not powers of two (the hard case for exactness)."""
    rng = np.random.default_rng(seed)
    return [float(t) for t in rng.uniform(0.3, 3.0, size=n)]


def build(config: str, shape: tuple[int, ...]):
    """(iqcore quantizer, mct quantizer or None, channel axis or None) for one configuration."""
    if config == "pt_weights":
        q = iqcore.get_quantizer("symmetric", "weights", num_bits=NUM_BITS, threshold=[PT_THRESHOLD])
        m = mct and mct.WeightsSymmetricInferableQuantizer(num_bits=NUM_BITS, threshold=[PT_THRESHOLD],
                                                           per_channel=False)
        return q, m, None
    if config == "pt_act":
        q = iqcore.get_quantizer("uniform", "activation", num_bits=NUM_BITS, min_range=[ACT_RANGE[0]],
                                 max_range=[ACT_RANGE[1]])
        m = mct and mct.ActivationUniformInferableQuantizer(num_bits=NUM_BITS, min_range=[ACT_RANGE[0]],
                                                            max_range=[ACT_RANGE[1]])
        return q, m, None
    axis = AXES[config.split("_", 1)[1]]
    t = thresholds(shape[axis])
    q = iqcore.get_quantizer("symmetric", "weights", num_bits=NUM_BITS, threshold=t, per_channel=True,
                             channel_axis=axis, input_rank=len(shape))
    m = mct and mct.WeightsSymmetricInferableQuantizer(num_bits=NUM_BITS, threshold=t, per_channel=True,
                                                       channel_axis=axis, input_rank=len(shape))
    return q, m, axis


def data(shape: tuple[int, ...], grid: grid_lib.Grid, seed: int = 0) -> np.ndarray:
    """Random values over the grid's range, a quarter of them replaced by exact ties and their ±1-ulp neighbours."""
    rng = np.random.default_rng(seed)
    shape_b = grid.broadcast_shape() or ()
    lo = np.reshape(grid.nudged_min, shape_b)
    hi = np.reshape(grid.nudged_max, shape_b)
    scale = np.reshape(grid.scale, shape_b)
    x = (lo + (hi - lo) * rng.uniform(-0.1, 1.1, size=shape)).astype(np.float32)
    k = rng.integers(0, 2**grid.num_bits - 1, size=shape).astype(np.float32)
    tie = (lo + (k + np.float32(0.5)) * scale).astype(np.float32)
    nudge = rng.integers(-1, 2, size=shape)
    tie = np.where(nudge < 0, np.nextafter(tie, np.float32(-np.inf)),
                   np.where(nudge > 0, np.nextafter(tie, np.float32(np.inf)), tie)).astype(np.float32)
    pick = rng.uniform(size=shape) < 0.25
    return np.where(pick, tie, x).astype(np.float32)


def mismatches(y, ref: np.ndarray) -> int:
    """Elements whose bits differ from the reference (NaN equals NaN)."""
    y = np.asarray(y, dtype=np.float32)
    diff = y.view(np.uint32) != ref.view(np.uint32)
    diff &= ~(np.isnan(y) & np.isnan(ref))
    return int(diff.sum())


# -- candidates ----------------------------------------------------------------------------------------------
def raw_op(grid: grid_lib.Grid):
    """The single TensorFlow fake-quant op on the same grid (per-channel: on a channel-last tensor)."""
    if grid.axis is None:
        lo, hi = float(grid.min), float(grid.max)
        return lambda t: tf.quantization.fake_quant_with_min_max_vars(
            t, lo, hi, num_bits=grid.num_bits, narrow_range=grid.narrow_range)
    lo, hi = tf.constant(grid.min), tf.constant(grid.max)
    return lambda t: tf.quantization.fake_quant_with_min_max_vars_per_channel(
        t, lo, hi, num_bits=grid.num_bits, narrow_range=grid.narrow_range)


def copy(t):
    """A real copy: reads and writes every element (``tf.identity`` may alias its input and does neither)."""
    return tf.negative(t)


def in_mode(fn, mode: str):
    if mode == "eager":
        return fn
    return tf.function(fn, jit_compile=(mode == "xla"), autograph=False)


def measure_case(config: str, size: str, shape, mode: str, rounds: int, target_s: float) -> dict:
    q, m, axis = build(config, shape)
    x_np = data(shape, q.grid)
    ref = grid_lib.fake_quant(x_np, q.grid)
    x = tf.constant(x_np)
    # The raw per-channel op works on the last axis only: it gets the same elements laid out channel-last.
    if axis is not None and axis != len(shape) - 1:
        perm = [i for i in range(len(shape)) if i != axis] + [axis]
        x_op = tf.constant(np.ascontiguousarray(np.transpose(x_np, perm)))
        ref_op = np.transpose(ref, perm)
    else:
        x_op, ref_op = x, ref
    fns = {"iqcore": (in_mode(lambda t: q(t), mode), x, ref),
           "tf_op": (in_mode(raw_op(q.grid), mode), x_op, ref_op),
           "copy": (in_mode(copy, mode), x, None)}
    if m is not None:
        fns["mct"] = (in_mode(lambda t: m(t), mode), x, ref)
    row = {"config": config, "size": size, "elements": int(np.prod(shape)), "shape": list(shape), "mode": mode,
           "mismatches": {}, "errors": {}}
    candidates = {}
    for name, (fn, arg, r) in fns.items():
        try:
            # Three calls: iqcore's first eager call with a shape runs op by op, later ones the compiled kernel.
            ys = [fn(arg) for _ in range(3)]
        except Exception as e:  # noqa: BLE001 - a baseline that cannot run in this mode is reported, not fatal
            row["errors"][name] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
            continue
        if r is not None:
            row["mismatches"][name] = max(mismatches(y, r) for y in ys)
        candidates[name] = (lambda fn=fn, arg=arg: fn(arg))
    times = timing.interleaved(candidates, rounds, target_s)
    row["seconds"] = {k: statistics.median(v) for k, v in times.items()}
    row["ratios"] = {
        "iqcore/copy": timing.ratio(times, "iqcore", "copy"),
        "iqcore/tf_op": timing.ratio(times, "iqcore", "tf_op"),
        "mct/iqcore": timing.ratio(times, "mct", "iqcore"),
        "mct/copy": timing.ratio(times, "mct", "copy"),
    }
    return row


# -- memory, import time, model ------------------------------------------------------------------------------
def run_json(script: str, *args: str, timeout: float = 900) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True, text=True, env=env,
                         timeout=timeout)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        return {"error": (out.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    return json.loads(lines[-1])


def import_times(runs: int) -> dict:
    """``import iqcore`` plus plugin discovery on top of ``import tensorflow``, one fresh process per run."""
    samples = [run_json("import_time.py") for _ in range(runs)]
    good = [s for s in samples if "error" not in s]
    if not good:
        return {"error": samples[0].get("error")}
    extra = [s["iqcore_ms"] for s in good]
    tf_ms = [s["tensorflow_ms"] for s in good]
    return {"iqcore_ms": {"median": statistics.median(extra), "min": min(extra), "max": max(extra)},
            "tensorflow_ms": statistics.median(tf_ms), "runs": len(good)}


# -- the table -----------------------------------------------------------------------------------------------
def fmt(r: dict | None, digits: int = 2) -> str:
    if r is None:
        return "n/a"
    return f"{r['median']:.{digits}f} ({r['min']:.{digits}f}–{r['max']:.{digits}f})"


CONFIG_NAMES = {"pt_weights": "per-tensor weights", "pt_act": "activation (uniform)",
                "pc_last": "per-channel, last axis", "pc_middle": "per-channel, axis 2",
                "pc_first": "per-channel, axis 0"}


def table(rows: list[dict]) -> str:
    head = ("| case | elements | mode | iqcore / copy | iqcore / raw TF op | mct / iqcore (speed-up) | mct / copy "
            "| mismatches iqcore · op · mct |")
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mm = r["mismatches"]
        mism = " · ".join(str(mm.get(k, "–")) for k in ("iqcore", "tf_op", "mct"))
        ratios = r["ratios"]
        lines.append(f"| {CONFIG_NAMES[r['config']]} | {r['size']} | {r['mode']} | {fmt(ratios['iqcore/copy'])} | "
                     f"{fmt(ratios['iqcore/tf_op'])} | {fmt(ratios['mct/iqcore'])} | {fmt(ratios['mct/copy'])} "
                     f"| {mism} |")
    return "\n".join(lines)


def targets(results: dict) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for each target of issue 4."""
    rows = results["cases"]
    out = []
    big_pc = [r for r in rows if r["config"].startswith("pc_") and r["elements"] >= 1_000_000]
    if big_pc:
        worst = max(big_pc, key=lambda r: r["ratios"]["iqcore/copy"]["median"])
        w = worst["ratios"]["iqcore/copy"]["median"]
        by_mode = {m: max((r["ratios"]["iqcore/copy"]["median"] for r in big_pc if r["mode"] == m), default=None)
                   for m in MODES}
        txt = ", ".join(f"{m} ≤ {v:.2f}×" for m, v in by_mode.items() if v is not None)
        out.append(("1a. per-channel ≥1e6, any axis: ≤ 2× copy", f"worst {w:.2f}× ({CONFIG_NAMES[worst['config']]}, "
                    f"{worst['size']}, {worst['mode']}); {txt}", "met" if w <= 2 else "NOT met"))
        sp = {m: [(r["ratios"]["mct/iqcore"]["median"], r) for r in big_pc
                  if r["mode"] == m and r["ratios"]["mct/iqcore"]] for m in MODES}
        sp = {m: min(v, key=lambda t: t[0]) for m, v in sp.items() if v}
        if sp:
            txt = "; ".join(f"{m}: ≥ {v:.1f}× (worst {CONFIG_NAMES[r['config']]}, {r['size']})"
                            for m, (v, r) in sp.items())
            bad = [m for m, (v, _) in sp.items() if v < 5]
            out.append(("1b. per-channel ≥1e6: ≥ 5× faster than mct-quantizers", txt,
                        "met" if not bad else f"NOT met ({', '.join(bad)})"))
    big_pt = [r for r in rows if r["config"].startswith("pt_") and r["elements"] >= 1_000_000
              and r["ratios"]["iqcore/tf_op"]]
    if big_pt:
        parts = {m: max((r["ratios"]["iqcore/tf_op"]["median"] for r in big_pt if r["mode"] == m), default=None)
                 for m in MODES}
        txt = ", ".join(f"{m} ≤ {v:.2f}×" for m, v in parts.items() if v is not None)
        bad = [m for m, v in parts.items() if v is not None and v > 1.05]
        out.append(("2. per-tensor ≥1e6: ≤ 1.05× raw op", txt, "met" if not bad else f"NOT met ({', '.join(bad)})"))
    small = [r for r in results.get("overhead", [])]
    if small:
        pt = [r["ratios"]["iqcore/tf_op"]["median"] for r in small if r["config"].startswith("pt_")]
        pc = [r["ratios"]["iqcore/tf_op"]["median"] for r in small if r["config"].startswith("pc_")]
        out.append(("3. eager, 16 elements: ≤ 1.2× op per-tensor, ≤ 1.5× per-channel",
                    f"per-tensor ≤ {max(pt):.2f}×, per-channel ≤ {max(pc):.2f}×",
                    "met" if max(pt) <= 1.2 and max(pc) <= 1.5 else "NOT met"))
    mem = results.get("memory", {})
    if mem.get("cases"):
        iq = [c for c in mem["cases"] if c["candidate"] == "iqcore"]
        w = max(c["extra_over_tensor"] for c in iq)
        txt = ", ".join(f"{c['config'].replace('pc_', '')}/{c['mode']} {c['extra_over_tensor']:.2f}×" for c in iq)
        out.append(("4. extra memory of one per-channel call: ≤ 1.1× the tensor", txt,
                    "met" if w <= 1.1 else "NOT met"))
    model = results.get("model")
    if model and "cases" in model:
        w = max(c["ratio"]["median"] for c in model["cases"])
        txt = ", ".join(f"batch {c['batch']} {c['ratio']['median']:.2f}×" for c in model["cases"])
        out.append(("5. quantized vs float model, graph mode: ≤ 1.05×", txt, "met" if w <= 1.05 else "NOT met"))
    elif model:
        out.append(("5. quantized vs float model, graph mode: ≤ 1.05×", model.get("error", "not measured"),
                    "not measured"))
    imp = results.get("import")
    if imp and "iqcore_ms" in imp:
        v = imp["iqcore_ms"]
        out.append(("6. import iqcore + plugin discovery on top of TF: ≤ 50 ms",
                    f"{v['median']:.1f} ms ({v['min']:.1f}–{v['max']:.1f}; import tensorflow itself "
                    f"{imp['tensorflow_ms']:.0f} ms)", "met" if v["median"] <= 50 else "NOT met"))
    # issue 12: the kernel under the user's XLA compilation, and tiny eager per-channel calls
    xla_pt = [r for r in big_pt if r["mode"] == "xla"]
    if xla_pt:
        w = max(r["ratios"]["iqcore/tf_op"]["median"] for r in xla_pt)
        txt = ", ".join(f"{CONFIG_NAMES[r['config']]} {r['size']} {r['ratios']['iqcore/tf_op']['median']:.2f}×"
                        for r in xla_pt)
        out.append(("7. XLA per-tensor ≥1e6: ≤ 1.2× raw op", txt, "met" if w <= 1.2 else "NOT met"))
    xla_pc = [r for r in big_pc if r["mode"] == "xla"]
    if xla_pc:
        w = max(r["ratios"]["iqcore/copy"]["median"] for r in xla_pc)
        txt = ", ".join(f"{CONFIG_NAMES[r['config']]} {r['size']} {r['ratios']['iqcore/copy']['median']:.2f}×"
                        for r in xla_pc)
        out.append(("8. XLA per-channel ≥1e6: ≤ 1.3× copy", txt, "met" if w <= 1.3 else "NOT met"))
    small_pc = [r for r in small if r["config"].startswith("pc_")]
    if small_pc:
        w = max(r["ratios"]["iqcore/tf_op"]["median"] for r in small_pc)
        txt = ", ".join(f"{CONFIG_NAMES[r['config']]} {r['ratios']['iqcore/tf_op']['median']:.2f}×" for r in small_pc)
        out.append(("9. eager, 16 elements, per-channel: ≤ 1.3× op", txt, "met" if w <= 1.3 else "NOT met"))
    holders = results.get("holders", {})
    if holders.get("cases"):
        cases = holders["cases"]
        txt = "; ".join(f"{c['model']} ({c['holders']} holders) {c['quantized/float']:.2f}× float, "
                        f"{c['quantized/floor']:.2f}× float + one copy per holder" for c in cases)
        ok = all(c["quantized/float"] <= 1.05 or c["quantized/floor"] <= 1.05 for c in cases)
        out.append(("10. whole models with holders, graph, batch 1: ≤ 1.05× float or ≤ the copy floor (1.05×)", txt,
                    "met" if ok else "NOT met"))
    elif holders:
        out.append(("10. whole models with holders", holders.get("error", "not measured"), "not measured"))
    cost = results.get("quantize_cost", {})
    if cost.get("cases"):
        cnns = [c for c in cost["cases"] if not c["model"].startswith("chain")]
        chains = [c for c in cost["cases"] if c["model"].startswith("chain")]
        txt = "; ".join(f"{c['model']} {c['ratio']:.1f}× one float pass in all = {c['rebuild_s']:.2f} s rebuild + "
                        f"{c['calibration_ratio']:.2f}× one float pass for the rest" for c in cnns)
        # Python's full garbage collections walk the whole process, so they are shown apart from the rebuild.
        per_layer = [c["rebuild_ms_per_layer_without_gc"] for c in chains]
        txt += "; rebuild per layer (garbage collection apart): " + ", ".join(
            f"{c['layers']} layers {c['rebuild_ms_per_layer_without_gc']:.1f} ms"
            + (f" + {c['rebuild_gc_s']:.2f} s gc" if c["rebuild_gc_s"] else "") for c in chains)
        linear = bool(per_layer) and max(per_layer) <= 1.5 * min(per_layer)
        ok = all(c["calibration_ratio"] <= 2 for c in cnns) and linear
        missed = [] if linear else ["rebuild time per layer grows with depth"]
        missed += [f"{c['model']} {c['calibration_ratio']:.2f}× for the rest"
                   for c in cnns if c["calibration_ratio"] > 2]
        out.append(("11. quantize_model: ≤ 2× one float pass over the calibration data, plus a linear rebuild", txt,
                    "met" if ok else f"NOT met ({'; '.join(missed)})"))
    elif cost:
        out.append(("11. quantize_model cost", cost.get("error", "not measured"), "not measured"))
    return out


def report(results: dict) -> str:
    parts = ["### Targets", "", "| target | measured (medians of per-round ratios) | verdict |", "|---|---|---|"]
    parts += [f"| {a} | {b} | {c} |" for a, b, c in targets(results)]
    parts += ["", "### Ratios, medians over interleaved rounds (min–max across rounds)", "", table(results["cases"])]
    if results.get("overhead"):
        parts += ["", "### Eager call overhead, 16 elements (shape 2×2×2×2)", "", table(results["overhead"])]
    mem = results.get("memory", {})
    if mem.get("cases"):
        parts += ["", f"### Extra memory of one call on a {mem['mbytes']:.0f} MiB tensor (peak of TensorFlow's CPU "
                  "allocator during the call over its use before it, output included, in units of the tensor)", "",
                  "| case | mode | iqcore | raw TF op (channel-last copy of the tensor) | mct |",
                  "|---|---|---|---|---|"]
        by = {}
        for c in mem["cases"]:
            by.setdefault((c["config"], c["mode"]), {})[c["candidate"]] = c["extra_over_tensor"]
        for (config, mode), v in by.items():
            cells = [f"{v[k]:.2f}×" if k in v else "–" for k in ("iqcore", "tf_op", "mct")]
            parts.append(f"| {CONFIG_NAMES[config]} | {mode} | " + " | ".join(cells) + " |")
    elif mem:
        parts += ["", f"Memory: {mem.get('error')}"]
    model = results.get("model")
    if model and "cases" in model:
        parts += ["", f"### Model latency ({model['description']})", "",
                  "| batch | quantized / float (graph mode) |", "|---|---|"]
        parts += [f"| {c['batch']} | {fmt(c['ratio'])} |" for c in model["cases"]]
    return "\n".join(parts)


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import keras
        keras_version = keras.__version__
    except Exception:  # noqa: BLE001
        keras_version = None
    mct_version = None
    if mct is not None:
        from importlib.metadata import version
        mct_version = version("mct-quantizers")
    return {"cpu": cpu, "cores": os.cpu_count(), "os": platform.platform(), "python": platform.python_version(),
            "tensorflow": tf.__version__, "keras": keras_version, "numpy": np.__version__,
            "iqcore": iqcore.__version__, "mct_quantizers": mct_version,
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}


def write_docs(results: dict, path: Path) -> None:
    begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
    m = results["machine"]
    block = "\n".join([
        begin,
        f"Measured {results['date']} with `{results['command']}` ({results['mode']} mode, {results['rounds']} "
        f"rounds per case, {results['wall_s']:.0f} s).",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores (shared, load average {m['load_average'][0]:.1f} at the start), "
        f"{m['os']}; Python {m['python']}, TensorFlow {m['tensorflow']}, Keras {m['keras']}, NumPy {m['numpy']}, "
        f"iqcore {m['iqcore']}, mct-quantizers {m['mct_quantizers']}.",
        "",
        report(results),
        end,
    ])
    text = path.read_text() if path.exists() else f"# Performance\n\n{begin}\n{end}\n"
    if begin not in text:
        text += f"\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    path.write_text(head + block + tail)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1e6 elements only, fewer rounds (about a minute)")
    p.add_argument("--sizes", help="comma-separated subset of " + ",".join(SIZES))
    p.add_argument("--configs", help="comma-separated subset of pt_weights,pt_act,pc_last,pc_middle,pc_first")
    p.add_argument("--modes", help="comma-separated subset of eager,graph,xla")
    p.add_argument("--rounds", type=int, help="interleaved rounds per case")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: overhead,memory,import,model,"
                                              "holders,quantize_cost")
    p.add_argument("--out", help="JSON results file (default: bench/results/latest.json; quick.json with --quick)")
    p.add_argument("--docs", help="Markdown file whose generated block is refreshed (default: docs/performance.md "
                                  "for a full run, none with --quick; '' for none)")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = str(HERE / "results" / ("quick.json" if args.quick else "latest.json"))
    if args.docs is None:
        args.docs = "" if args.quick else str(ROOT / "docs" / "performance.md")
    start = time.perf_counter()
    quick = args.quick
    sizes = args.sizes.split(",") if args.sizes else (["1e6"] if quick else list(SIZES))
    configs = args.configs.split(",") if args.configs else ["pt_weights", "pt_act", "pc_last", "pc_middle", "pc_first"]
    modes = args.modes.split(",") if args.modes else list(MODES)
    rounds = args.rounds or (4 if quick else 9)
    target_s = 0.015 if quick else 0.05
    skip = set(filter(None, args.skip.split(",")))
    command = " ".join(["python bench/run.py", *(sys.argv[1:] if argv is None else argv)])
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": command.strip(),
               "mode": "quick" if quick else "full", "rounds": rounds, "machine": machine(), "cases": []}
    print(f"# iqcore bench ({results['mode']}): {results['machine']['cpu']}, {results['machine']['cores']} cores, "
          f"TF {tf.__version__}, mct-quantizers {results['machine']['mct_quantizers']}", flush=True)
    for size in sizes:
        for config in configs:
            for mode in modes:
                row = measure_case(config, size, SIZES[size], mode, rounds, target_s)
                results["cases"].append(row)
                print(f"  {config:10s} {size:6s} {mode:6s} iq/copy {fmt(row['ratios']['iqcore/copy'])}  "
                      f"iq/op {fmt(row['ratios']['iqcore/tf_op'])}  mct/iq {fmt(row['ratios']['mct/iqcore'])}  "
                      f"mismatches {row['mismatches']} {row['errors'] or ''}", flush=True)
    results["sections_s"] = {"cases": time.perf_counter() - start}
    if "overhead" not in skip:
        results["overhead"] = []
        for config in ["pt_weights", "pt_act", "pc_last", "pc_middle", "pc_first"]:
            row = measure_case(config, "16", SMALL, "eager", rounds * 2, 0.015 if quick else 0.03)
            results["overhead"].append(row)
            print(f"  overhead {config:10s} iq/op {fmt(row['ratios']['iqcore/tf_op'])}  "
                  f"mismatches {row['mismatches']}", flush=True)
    if "memory" not in skip:
        results["memory"] = run_json("memory.py", *(["--quick"] if quick else []))
        print(f"  memory {results['memory']}", flush=True)
        results["sections_s"]["memory"] = time.perf_counter() - start
    if "import" not in skip:
        results["import"] = import_times(2 if quick else 7)
        print(f"  import {results['import']}", flush=True)
        results["sections_s"]["import"] = time.perf_counter() - start
    if "model" not in skip:
        results["model"] = run_json("model.py", *(["--quick"] if quick else []))
        print(f"  model {results['model']}", flush=True)
        results["sections_s"]["model"] = time.perf_counter() - start
    if "holders" not in skip:
        results["holders"] = run_json("holders.py", *(["--quick"] if quick else []), timeout=1800)
        print(f"  holders {results['holders']}", flush=True)
        results["sections_s"]["holders"] = time.perf_counter() - start
    if "quantize_cost" not in skip:
        results["quantize_cost"] = run_json("quantize_cost.py", *(["--quick"] if quick else []), timeout=1800)
        print(f"  quantize_cost {results['quantize_cost']}", flush=True)
        results["sections_s"]["quantize_cost"] = time.perf_counter() - start
    results["wall_s"] = time.perf_counter() - start
    text = report(results)
    print()
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=float))
    if args.docs:
        write_docs(results, Path(args.docs))
    total = sum(sum(r["mismatches"].get("iqcore", 0) for r in results[k])
                for k in ("cases", "overhead") if k in results)
    print(f"\niqcore mismatches against iqcore._grid.fake_quant: {total}; wrote {out}", flush=True)
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
