"""iqcore's calibration strategies on the digits CNN, side by side with MCT's post-training quantization.

The counterpart of ``bench/calibration_mct.py`` (the seed toolchain's baseline, MCT 2.6.1 on TensorFlow 2.15):
the same float model, data split, calibration images and metric, quantized by
``iqcore.keras.quantize_model`` in the current environment.

What it does:

1. Loads scikit-learn's bundled 8x8 digits and splits them as ``iqcore demo`` and the MCT baseline do (75/25,
   stratified, ``random_state=0``).
2. Builds the digits CNN and loads its float weights from ``--weights`` (an ``.npz`` of ``arr_0..arr_N`` in
   ``model.get_weights()`` order, written by the MCT baseline; ``nox -s calibration_mct`` trains and saves it
   when it is missing).
3. For each bit width and each method (``pot``, ``symmetric``, ``uniform``; the same method and bit width for
   weights and activations) quantizes the float model with ``quantize_model`` on the first 256 training
   images (4 batches of 64), in five configurations (:data:`CONFIGS`):

   * ``minmax``, ``percentile``, ``mse``: that strategy for weights and activations, no bias correction;
   * ``mse+bc``: the ``mse`` strategy and bias correction (the counterpart of MCT's ``mse+bc``);
   * ``minmax+bc``: the ``minmax`` strategy and bias correction.

4. Measures the SQNR of the softmax outputs on the 450 test images,
   ``10 log10(sum(p^2) / sum((p - q)^2))`` with ``p``/``q`` the float/quantized softmax (float64 numpy softmax
   of the logits), the top-1 accuracy, and the wall time of each ``quantize_model`` call.
5. How much of a difference is noise (``--spread N``, 4 by default, 0 to skip): calibrates each configuration
   again on the next N disjoint sets of 256 training images and reports the SQNR's mean and standard
   deviation over all N + 1 sets (MCT's spread is not measured).
6. Reads the MCT baseline (``--mct``, if the file exists) and prints one table, rows method x bits, columns the
   SQNR of each iqcore configuration and of MCT's ``minmax`` and ``mse+bc``; writes everything to ``--out`` as
   JSON and, with ``--docs``, rewrites the block of that Markdown page between
   ``<!-- calibration-table:start -->`` and ``<!-- calibration-table:end -->``.

Usage::

    nox -s calibration_mct          # once: the MCT rows (TensorFlow 2.15 environment) and the float weights
    python bench/calibration.py --docs docs/calibration.md [--bits 8 6 4] [--methods pot uniform]
        [--configs minmax mse+bc] [--spread 4] [--out bench/results/calibration.json]

A configuration that ``quantize_model`` refuses or fails gets a row with ``error`` (a one-line reason) instead of
numbers; the other rows are still measured. A full run takes about half a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import iqcore  # noqa: E402
from iqcore import demo  # noqa: E402
from iqcore.keras import quantize_model  # noqa: E402

keras = tf.keras

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("pot", "symmetric", "uniform")

#: iqcore configurations: name -> (weights_strategy, activation_strategy, bias_correction).
CONFIGS: dict[str, tuple[str, str, bool]] = {
    "minmax": ("minmax", "minmax", False),
    "percentile": ("percentile", "percentile", False),
    "mse": ("mse", "mse", False),
    "mse+bc": ("mse", "mse", True),
    "minmax+bc": ("minmax", "minmax", True),
}

#: The MCT baseline's configurations (rows of ``calibration_mct.json``).
MCT_CONFIGS = ("minmax", "mse+bc")

CALIBRATION_SAMPLES = 256
CALIBRATION_BATCH = 64
BEGIN = "<!-- calibration-table:start -->"
END = "<!-- calibration-table:end -->"


def load_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits split as ``iqcore demo`` (seed 0) and ``bench/calibration_mct.py`` split them."""
    return demo.load_digits(0)


def build_model() -> keras.Model:
    """The float CNN of ``iqcore demo`` (untrained)."""
    return demo.build_model(keras)


def float_model(weights: Path) -> keras.Model:
    """The float model with the weights of the MCT baseline.

    Args:
        weights: An ``.npz`` of ``arr_0..arr_N`` in ``model.get_weights()`` order.

    Returns:
        The model with those weights.

    Raises:
        FileNotFoundError: If the file does not exist (``nox -s calibration_mct`` writes it).
        ValueError: If the file's arrays do not match the model's weights in number or shapes.
    """
    if not weights.exists():
        raise FileNotFoundError(f"{weights} does not exist; `nox -s calibration_mct` trains the digits CNN and "
                                "saves its float weights there")
    model = build_model()
    with np.load(weights) as npz:
        arrays = [npz[f"arr_{i}"] for i in range(len(npz.files))]
    expected = [w.shape for w in model.get_weights()]
    if [a.shape for a in arrays] != expected:
        raise ValueError(f"{weights} holds arrays of shapes {[a.shape for a in arrays]}; "
                         f"the digits CNN needs {expected}")
    model.set_weights(arrays)
    return model


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis in float64.

    Args:
        logits: Logits of any float dtype.

    Returns:
        Probabilities as float64.
    """
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


sqnr_db = demo.sqnr_db
accuracy = demo.accuracy


def calibration_batches(x_train: np.ndarray, slot: int = 0) -> list[np.ndarray]:
    """256 training images in batches of 64: slot 0 is the MCT baseline's set (the first 256 images), slot
    ``k`` the images ``256 k .. 256 k + 255`` (the sets of the spread measurement).

    Args:
        x_train: Training images.
        slot: Which 256 images.

    Returns:
        The batches.
    """
    first = slot * CALIBRATION_SAMPLES
    return [x_train[start:start + CALIBRATION_BATCH]
            for start in range(first, first + CALIBRATION_SAMPLES, CALIBRATION_BATCH)]


def one_line(error: BaseException) -> str:
    """The first line of an exception's message, prefixed with its type.

    Args:
        error: The exception.

    Returns:
        ``"Type: first line"``.
    """
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def run_one(model: keras.Model, data: list[np.ndarray], x_test: np.ndarray, y_test: np.ndarray,
            float_probs: np.ndarray, method: str, bits: int, config: str) -> dict[str, Any]:
    """Quantize ``model`` in one configuration and measure it.

    Args:
        model: The float model.
        data: The calibration batches.
        x_test: Test images.
        y_test: Test labels.
        float_probs: The float model's softmax on ``x_test`` (float64).
        method: The method of weights and activations.
        bits: The bit width of weights and activations.
        config: A key of :data:`CONFIGS`.

    Returns:
        A result row: ``config``, ``method``, ``bits`` and ``sqnr_db``, ``accuracy``, ``seconds``, or ``error``.
    """
    weights_strategy, activation_strategy, bias_correction = CONFIGS[config]
    row: dict[str, Any] = {"config": config, "method": method, "bits": bits}
    try:
        start = time.perf_counter()
        qmodel = quantize_model(model, weights_method=method, weights_bits=bits, weights_strategy=weights_strategy,
                                activation_method=method, activation_bits=bits,
                                activation_strategy=activation_strategy, representative_data=data,
                                bias_correction=bias_correction, verbose=0)
        seconds = time.perf_counter() - start
        logits = np.asarray(qmodel(x_test, training=False))
    except Exception as error:  # noqa: BLE001 - reported in the row, the other configurations still run
        row["error"] = one_line(error)
        return row
    row.update(sqnr_db=sqnr_db(float_probs, softmax(logits)), accuracy=accuracy(logits, y_test),
               seconds=round(seconds, 3))
    return row


def spread(model: keras.Model, x_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
           float_probs: np.ndarray, method: str, bits: int, config: str, sets: int) -> list[float] | None:
    """The SQNR of one configuration calibrated on each of the other disjoint sets of 256 training images.

    Args:
        model: The float model.
        x_train: Training images.
        x_test: Test images.
        y_test: Test labels.
        float_probs: The float model's softmax on ``x_test`` (float64).
        method: The method of weights and activations.
        bits: The bit width of weights and activations.
        config: A key of :data:`CONFIGS`.
        sets: How many other sets (slots 1..sets of :func:`calibration_batches`).

    Returns:
        One SQNR per set, or None if a set could not be quantized.
    """
    values = []
    for slot in range(1, sets + 1):
        row = run_one(model, calibration_batches(x_train, slot), x_test, y_test, float_probs, method, bits, config)
        if "error" in row:
            return None
        values.append(row["sqnr_db"])
    return values


def load_mct(path: Path) -> dict[str, Any] | None:
    """The MCT baseline's results, or None if the file does not exist or cannot be read.

    Args:
        path: ``calibration_mct.json``.

    Returns:
        The JSON document, or None.
    """
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        print(f"ignoring {path}: {one_line(error)}", file=sys.stderr)
        return None


def lookup(rows: list[dict[str, Any]], key: str, name: str, method: str, bits: int) -> dict[str, Any] | None:
    """The row of ``rows`` with ``rows[key] == name`` for ``method`` and ``bits``, or None.

    Args:
        rows: Result rows.
        key: ``"config"`` (iqcore rows) or ``"strategy"`` (MCT rows).
        name: The configuration.
        method: The method.
        bits: The bit width.

    Returns:
        The row, or None.
    """
    for r in rows:
        if r.get(key) == name and r.get("method") == method and r.get("bits") == bits:
            return r
    return None


def cell(row: dict[str, Any] | None, field: str, digits: int) -> str:
    """A table cell: the row's ``field`` with ``digits`` decimals, ``error`` or an em dash when absent.

    Args:
        row: A result row or None.
        field: ``"sqnr_db"`` or ``"accuracy"``.
        digits: Decimals.

    Returns:
        The cell text.
    """
    if row is None:
        return "—"
    if "error" in row:
        return "error"
    return f"{row[field]:.{digits}f}"


def columns(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The table's value columns as ``(title, key, name)``: the iqcore configurations, then MCT's.

    Args:
        results: The JSON document of this script.

    Returns:
        The columns.
    """
    cols = [(f"iqcore {c}", "config", c) for c in results["configs"]]
    if results.get("mct"):
        cols += [(f"MCT {c}", "strategy", c) for c in MCT_CONFIGS]
    return cols


def table_rows(results: dict[str, Any], field: str, digits: int) -> tuple[list[str], list[list[str]]]:
    """The header and rows (method x bits) of the table of ``field``.

    Args:
        results: The JSON document of this script.
        field: ``"sqnr_db"`` or ``"accuracy"``.
        digits: Decimals.

    Returns:
        ``(header, rows)`` of cell texts.
    """
    mct_rows = (results.get("mct") or {}).get("rows", [])
    header = ["method", "bits"] + [title for title, _, _ in columns(results)]
    rows = []
    for method in results["methods"]:
        for bits in results["bits"]:
            line = [method, str(bits)]
            for _, key, name in columns(results):
                source = results["rows"] if key == "config" else mct_rows
                line.append(cell(lookup(source, key, name, method, bits), field, digits))
            rows.append(line)
    return header, rows


def text_table(results: dict[str, Any], field: str, digits: int) -> str:
    """A fixed-width text table of ``field``.

    Args:
        results: The JSON document of this script.
        field: ``"sqnr_db"`` or ``"accuracy"``.
        digits: Decimals.

    Returns:
        The table.
    """
    header, rows = table_rows(results, field, digits)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def spread_cell(row: dict[str, Any] | None) -> str:
    """``mean ± sd`` of a row's SQNR over all its calibration sets (the main one included), or a dash.

    Args:
        row: An iqcore result row or None.

    Returns:
        The cell text.
    """
    if row is None or "error" in row or not row.get("sqnr_db_other_sets"):
        return "—"
    values = [row["sqnr_db"], *row["sqnr_db_other_sets"]]
    return f"{np.mean(values):.1f} ± {np.std(values, ddof=1):.1f}"


def markdown_spread(results: dict[str, Any]) -> str:
    """A Markdown table of the SQNR's mean and standard deviation over the calibration sets, iqcore only.

    Args:
        results: The JSON document of this script.

    Returns:
        The table.
    """
    header = ["method", "bits", *(f"iqcore {c}" for c in results["configs"])]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for method in results["methods"]:
        for bits in results["bits"]:
            cells = [spread_cell(lookup(results["rows"], "config", c, method, bits)) for c in results["configs"]]
            lines.append("| " + " | ".join([method, str(bits), *cells]) + " |")
    return "\n".join(lines)


def markdown_table(results: dict[str, Any], field: str, digits: int, bold: bool = False) -> str:
    """A Markdown table of ``field``.

    Args:
        results: The JSON document of this script.
        field: ``"sqnr_db"`` or ``"accuracy"``.
        digits: Decimals.
        bold: Put the best iqcore value of each row in bold.

    Returns:
        The table.
    """
    header, rows = table_rows(results, field, digits)
    n_iqcore = len(results["configs"])
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for r in rows:
        values = [float(c) if c not in ("—", "error") else -math.inf for c in r[2:2 + n_iqcore]]
        best = max(values)
        marked = [f"**{c}**" if bold and i < n_iqcore and values[i] == best and best > -math.inf else c
                  for i, c in enumerate(r[2:])]
        lines.append("| " + " | ".join(r[:2] + marked) + " |")
    return "\n".join(lines)


def seconds_summary(results: dict[str, Any]) -> str:
    """The median ``quantize_model`` time of each configuration, as one sentence.

    Args:
        results: The JSON document of this script.

    Returns:
        The sentence.
    """
    parts = []
    for config in results["configs"]:
        times = [r["seconds"] for r in results["rows"] if r["config"] == config and "seconds" in r]
        if times:
            parts.append(f"{config} {float(np.median(times)):.2f} s")
    mct_rows = (results.get("mct") or {}).get("rows", [])
    for config in MCT_CONFIGS if results.get("mct") else ():
        times = [r["seconds"] for r in mct_rows if r.get("strategy") == config and "seconds" in r]
        if times:
            parts.append(f"MCT {config} {float(np.median(times)):.2f} s")
    return "Median time of one quantization call: " + ", ".join(parts) + "."


def error_notes(results: dict[str, Any]) -> list[str]:
    """One line per distinct error of the iqcore rows, naming the configurations and rows it hit.

    Args:
        results: The JSON document of this script.

    Returns:
        The lines (none when every row was measured).
    """
    hits: dict[str, dict[str, list[str]]] = {}
    for r in results["rows"]:
        if "error" in r:
            hits.setdefault(r["error"], {}).setdefault(r["config"], []).append(f"{r['method']} {r['bits']}")
    every = len(results["methods"]) * len(results["bits"])
    lines = []
    for error, by_config in hits.items():
        where = "; ".join(f"{config} ({'every row' if len(rows) == every else ', '.join(rows)})"
                          for config, rows in by_config.items())
        lines.append(f"`error`: `quantize_model` raised `{error}` in {where}.")
    return lines


def spread_lines(results: dict[str, Any]) -> list[str]:
    """The docs block's spread paragraph and table, or nothing when the spread was not measured.

    Args:
        results: The JSON document of this script.

    Returns:
        Lines of Markdown, a blank line last.
    """
    sets = results.get("spread_sets", 0)
    if not sets:
        return []
    return [f"How much of a difference is noise: the SQNR's mean ± standard deviation over {sets + 1} disjoint "
            f"calibration sets (the 256 images above and the next {sets} × 256 training images; same test images):",
            "", markdown_spread(results), ""]


def docs_block(results: dict[str, Any]) -> str:
    """The generated block of the docs page, markers included.

    Args:
        results: The JSON document of this script.

    Returns:
        The block.
    """
    mct = results.get("mct")
    if mct:
        source = (f"MCT columns: {mct.get('toolchain', 'MCT')} on TensorFlow {mct.get('tensorflow', '?')} "
                  f"(`bench/results/calibration_mct.json`, from `nox -s calibration_mct`).")
    else:
        source = "No MCT columns: `bench/results/calibration_mct.json` was not found (`nox -s calibration_mct`)."
    return "\n".join([
        BEGIN,
        f"SQNR of the softmax outputs in dB (higher is better; the best iqcore configuration of each row in bold), "
        f"{results['test_images']} test images, float accuracy {results['float_accuracy']:.4f}:",
        "",
        markdown_table(results, "sqnr_db", 2, bold=True),
        "",
        "Top-1 accuracy:",
        "",
        markdown_table(results, "accuracy", 4),
        "",
        *spread_lines(results),
        seconds_summary(results),
        "",
        *(f"{line}\n" for line in error_notes(results)),
        f"Measured {results['date']} with iqcore {results['iqcore']}, TensorFlow {results['tensorflow']}, "
        f"Keras {results['keras']} (Python {results['python']}): `{results['command']}` "
        f"({results['wall_s']:.0f} s). {source}",
        END,
    ])


def write_docs(results: dict[str, Any], path: Path) -> None:
    """Replace the block between :data:`BEGIN` and :data:`END` of ``path`` (appended if there is none).

    Args:
        results: The JSON document of this script.
        path: The Markdown page.
    """
    text = path.read_text() if path.exists() else f"# Calibration\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text.split(BEGIN, 1)[1]:
        text = text.rstrip("\n") + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    path.write_text(head + docs_block(results) + tail)


def relative(path: Path) -> str:
    """``path`` relative to the repository root when it lies inside it, else as given.

    Args:
        path: A path.

    Returns:
        The path as text.
    """
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    """Run the comparison, print the table and write the JSON (and the docs block).

    Args:
        argv: Command-line arguments (``sys.argv[1:]`` when None).

    Returns:
        The exit status: 0, or 1 if no configuration could be quantized.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=ROOT / "bench/results/digits_cnn_float.npz",
                        help="float weights (.npz, model.get_weights() order)")
    parser.add_argument("--mct", type=Path, default=ROOT / "bench/results/calibration_mct.json",
                        help="the MCT baseline's results (its columns are left out if the file is missing)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/calibration.json",
                        help="the JSON results file")
    parser.add_argument("--docs", type=Path, help="a Markdown page whose calibration-table block to rewrite")
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 6, 4], help="bit widths (default: 8 6 4)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="methods")
    parser.add_argument("--spread", type=int, default=4, metavar="N",
                        help="also calibrate each configuration on the next N disjoint sets of 256 training images "
                             "and report the SQNR's mean and standard deviation (default: 4; 0 to skip)")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS),
                        help="iqcore configurations (default: all)")
    args = parser.parse_args(argv)
    if args.spread < 0:
        parser.error("--spread must be >= 0")

    wall = time.perf_counter()
    x_train, _, x_test, y_test = load_digits()
    if (args.spread + 1) * CALIBRATION_SAMPLES > len(x_train):
        parser.error(f"--spread {args.spread} needs {(args.spread + 1) * CALIBRATION_SAMPLES} training images; "
                     f"there are {len(x_train)}")
    model = float_model(args.weights)
    float_logits = np.asarray(model(x_test, training=False))
    float_probs = softmax(float_logits)
    float_acc = accuracy(float_logits, y_test)
    print(f"float model ({args.weights}): accuracy {float_acc:.4f} on {len(x_test)} test images", flush=True)

    data = calibration_batches(x_train)
    rows = []
    for bits in args.bits:
        for method in args.methods:
            for config in args.configs:
                row = run_one(model, data, x_test, y_test, float_probs, method, bits, config)
                if "error" in row:
                    print(f"{config:<10} {method:<9} {bits} bits: error {row['error']}", flush=True)
                else:
                    print(f"{config:<10} {method:<9} {bits} bits: SQNR {row['sqnr_db']:6.2f} dB, accuracy "
                          f"{row['accuracy']:.4f} ({row['seconds']:.2f} s)", flush=True)
                if args.spread and "error" not in row:
                    row["sqnr_db_other_sets"] = spread(model, x_train, x_test, y_test, float_probs, method, bits,
                                                       config, args.spread)
                rows.append(row)

    command = " ".join(["python bench/calibration.py", *(sys.argv[1:] if argv is None else argv)])
    results = {
        "date": datetime.date.today().isoformat(), "command": command, "iqcore": iqcore.__version__,
        "tensorflow": tf.__version__, "keras": keras.__version__ if hasattr(keras, "__version__") else "?",
        "python": platform.python_version(), "test_images": int(len(x_test)),
        "calibration_images": CALIBRATION_SAMPLES, "weights": relative(args.weights), "float_accuracy": float_acc,
        "methods": list(args.methods), "bits": list(args.bits), "configs": list(args.configs),
        "spread_sets": args.spread,
        "wall_s": round(time.perf_counter() - wall, 1), "rows": rows, "mct": load_mct(args.mct),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print("SQNR of the softmax outputs (dB):")
    print(text_table(results, "sqnr_db", 2))
    print()
    print("top-1 accuracy:")
    print(text_table(results, "accuracy", 4))
    print()
    if args.spread:
        print(f"SQNR mean ± sd over {args.spread + 1} calibration sets:")
        print(markdown_spread(results))
    print()
    print(seconds_summary(results))
    for line in error_notes(results):
        print(line)
    print(f"\nwritten: {args.out}")
    if args.docs is not None:
        write_docs(results, args.docs)
        print(f"rewritten: {args.docs} (between {BEGIN} and {END})")
    return 0 if any("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
