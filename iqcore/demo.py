"""``iqcore demo``: quantize a small CNN end to end, on real data that ships inside scikit-learn.

Steps (each prints its progress and time):

1. Train a small CNN on scikit-learn's bundled 8x8 digits (1,797 images, no download).
2. For each weights/activation method (``pot``, ``symmetric``, ``uniform``) and bit width (8, 6, 4), quantize
   weights and activations with :func:`iqcore.keras.quantize_model` and measure the test accuracy and the
   signal-to-quantization-noise ratio (SQNR) of the logits against the float model.
3. Save each 8-bit model as ``.keras``, reload it with :func:`iqcore.load_model` and check that its outputs
   are identical.
4. Convert the 8-bit models to int8 TFLite with :func:`iqcore.keras.to_tflite` and measure the interpreter's
   accuracy (uniform weights have a non-zero zero point, which TFLite int8 weights forbid: the demo shows
   the refusal).
5. Plot accuracy and SQNR against bits, one line per method (``accuracy_vs_bits.png``), and write every figure
   to ``results.json``.

Needs the ``demo`` extra: ``pip install 'iqcore[demo]'`` (scikit-learn and matplotlib).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Any

import numpy as np

CALIBRATION_SAMPLES = 256


class DemoError(Exception):
    """The demo cannot run (a missing dependency or output folder); the message says what to do."""


class Progress:
    """Numbered step lines with elapsed time, flushed at once so that a pipe shows them live."""

    def __init__(self, steps: int, stream=None):
        self.steps, self.done, self.start = steps, 0, time.perf_counter()
        self.stream = stream or sys.stdout

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def step(self, text: str) -> None:
        self.done += 1
        self.say(f"[{self.done}/{self.steps}] {text}")

    def say(self, text: str) -> None:
        print(f"{text}  ({self.elapsed():.1f} s)", file=self.stream, flush=True)


@contextlib.contextmanager
def quiet():
    """Silence the TFLite converter's chatter (Python prints, warnings and C++ logs on fds 1 and 2)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as devnull, warnings.catch_warnings(), contextlib.redirect_stdout(devnull):
        warnings.simplefilter("ignore")
        os.dup2(devnull.fileno(), 1)
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _check_dependencies() -> None:
    missing = [name for name, module in (("scikit-learn", "sklearn"), ("matplotlib", "matplotlib"))
               if importlib.util.find_spec(module) is None]
    if missing:
        raise DemoError(f"the demo needs {' and '.join(missing)}: pip install 'iqcore[demo]'")


def load_digits(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits as ``(x_train, y_train, x_test, y_test)``: 8x8x1 float32 in [0, 1]."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    data = sk_load_digits()
    x = (data.images / 16.0).astype(np.float32)[..., None]
    y = data.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    return x_train, y_train, x_test, y_test


def build_model(keras):
    """The float CNN: two 3x3 convolutions, max pooling, a hidden Dense and a 10-way Dense of logits."""
    return keras.Sequential([
        keras.Input(shape=(8, 8, 1)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
        keras.layers.MaxPooling2D(2, name="pool"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(64, activation="relu", name="dense1"),
        keras.layers.Dense(10, name="logits"),
    ], name="digits_cnn")


def sqnr_db(reference: np.ndarray, quantized: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB: ``10 log10(sum(ref^2) / sum((ref - q)^2))`` (inf if equal)."""
    ref = np.asarray(reference, np.float64)
    noise = float(np.sum((ref - np.asarray(quantized, np.float64)) ** 2))
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(float(np.sum(ref**2)) / noise)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def tflite_logits(flatbuffer: bytes, x: np.ndarray) -> np.ndarray:
    """Run an int8 TFLite model on float inputs ``x`` (quantized with the model's input scale)."""
    from iqcore.keras import run_tflite

    return run_tflite(flatbuffer, x)[0]


def _epoch_callback(keras, progress: Progress, epochs: int):
    interactive = progress.stream.isatty() if hasattr(progress.stream, "isatty") else False

    class EpochProgress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            line = f"      epoch {epoch + 1}/{epochs}  loss {logs.get('loss', float('nan')):.4f}"
            if interactive:
                print("\r" + line, end="\n" if epoch + 1 == epochs else "", file=progress.stream, flush=True)
            elif (epoch + 1) % 10 == 0 or epoch + 1 == epochs:
                progress.say(line)

    return EpochProgress()


def _table(rows: list[dict[str, Any]], float_acc: float) -> str:
    lines = [f"float accuracy: {float_acc:.4f}", "",
             f"{'method':<10} {'bits':>4} {'float acc':>9} {'quant acc':>9} {'SQNR (dB)':>9}",
             f"{'-' * 10} {'-' * 4} {'-' * 9} {'-' * 9} {'-' * 9}"]
    for r in rows:
        lines.append(f"{r['method']:<10} {r['bits']:>4} {float_acc:>9.4f} {r['accuracy']:>9.4f} {r['sqnr_db']:>9.2f}")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], float_acc: float, path: str) -> None:
    """Accuracy and SQNR against bits, one line per method, with the float accuracy as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_sqnr) = plt.subplots(1, 2, figsize=(10, 4))
    for method in sorted({r["method"] for r in rows}):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["bits"])
        bits = [r["bits"] for r in mine]
        ax_acc.plot(bits, [r["accuracy"] for r in mine], marker="o", label=method)
        ax_sqnr.plot(bits, [r["sqnr_db"] for r in mine], marker="o", label=method)
    ax_acc.axhline(float_acc, linestyle="--", color="gray", label="float")
    ax_acc.set(xlabel="bits (weights and activations)", ylabel="test accuracy", title="Accuracy vs bits")
    ax_sqnr.set(xlabel="bits (weights and activations)", ylabel="SQNR of the logits (dB)", title="SQNR vs bits")
    for ax in (ax_acc, ax_sqnr):
        ax.grid(True, alpha=0.3)
        ax.legend()
        ax.set_xticks(sorted({r["bits"] for r in rows}))
    fig.suptitle("iqcore demo: small CNN on scikit-learn digits")
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


CONVERTER = """
import json, sys
import iqcore
from iqcore import keras as iqkeras
for method, source, target in json.loads(sys.argv[1]):
    try:
        flatbuffer = iqkeras.to_tflite(iqcore.load_model(source))
    except ValueError as e:
        result = {"method": method, "refused": str(e)}
    else:
        with open(target, "wb") as f:
            f.write(flatbuffer)
        result = {"method": method, "path": target, "bytes": len(flatbuffer)}
    print("IQCORE-RESULT " + json.dumps(result), flush=True)
"""


def _crash_reason(stderr: str) -> str:
    """The most telling line of a crashed converter's stderr (MLIR errors keep only their message)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    reasons = []
    for marker in ("LLVM ERROR", "Check failed", "error:"):
        for line in lines:
            if marker in line and not line.startswith("File "):
                reasons.append(line[line.index(marker):] if marker == "error:" else line)
    if reasons:
        return "; ".join(dict.fromkeys(r[:200] for r in reasons[:3]))
    return lines[-1][:300] if lines else "no message"


def convert_in_child(jobs: list[tuple[str, str, str]], on_result=None) -> dict[str, dict[str, Any]]:
    """Convert saved models to TFLite with :func:`iqcore.keras.to_tflite` in a child Python process.

    Some TensorFlow versions' converters abort the whole process on some graphs; in a child, such a crash
    becomes a one-line reason for that model and the others are still converted.

    Args:
        jobs: ``(method, saved .keras path, .tflite path to write)`` triples.
        on_result: Called with each method's name as soon as its conversion ends (for progress).

    Returns:
        Per method: ``{"path", "bytes"}`` when converted, else ``{"refused": reason}``.
    """
    import tensorflow as tf

    results: dict[str, dict[str, Any]] = {}
    pending = list(jobs)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    while pending:
        with tempfile.TemporaryFile("w+") as errors:
            child = subprocess.Popen([sys.executable, "-c", CONVERTER, json.dumps(pending)], stdout=subprocess.PIPE,
                                     stderr=errors, text=True, env=env)
            for line in child.stdout or ():
                if line.startswith("IQCORE-RESULT "):
                    outcome = json.loads(line[len("IQCORE-RESULT "):])
                    method = outcome.pop("method")
                    results[method] = outcome
                    if on_result is not None:
                        on_result(method)
            returncode = child.wait()
            errors.seek(0)
            stderr = errors.read()
        pending = [job for job in pending if job[0] not in results]
        if pending and returncode != 0:
            method = pending.pop(0)[0]
            results[method] = {"refused": f"the TensorFlow {tf.__version__} TFLite converter crashed (exit code "
                                          f"{returncode}): {_crash_reason(stderr)}"}
        elif pending:
            break
    return results


def demo_methods() -> list[str]:
    """Every installed method with both a weights and an activation quantizer that calibrate themselves."""
    from iqcore import _registry as registry
    from iqcore._quantizer import can_calibrate

    targets: dict[str, set[str]] = {}
    for info in registry.list_quantizers():
        if can_calibrate(info.cls):
            targets.setdefault(info.method, set()).add(info.target)
    return sorted(m for m, t in targets.items() if t == {"weights", "activation"})


def train_float_model(keras, seed: int, epochs: int, progress: Progress):
    """The float CNN trained on the digits; returns ``(model, data, float logits on the test images)``."""
    data = load_digits(seed)
    x_train, y_train, x_test, _ = data
    keras.utils.set_random_seed(seed)
    model = build_model(keras)
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, batch_size=64, epochs=epochs, verbose=0,
              callbacks=[_epoch_callback(keras, progress, epochs)])
    return model, data, np.asarray(model(x_test, training=False))


def quantize_all(iqkeras, model, data, float_logits, methods, bits, keep_bits, progress: Progress):
    """Each method at each bit width, weights and activations; returns ``(rows, {method: kept model})``."""
    x_train, _, x_test, y_test = data
    calibration = [x_train[i:i + 64] for i in range(0, CALIBRATION_SAMPLES, 64)]
    rows, kept = [], {}
    for method in methods:
        for b in bits:
            qmodel = iqkeras.quantize_model(model, weights_method=method, weights_bits=b, activation_method=method,
                                            activation_bits=b, representative_data=calibration, verbose=0)
            logits = np.asarray(qmodel(x_test, training=False))
            rows.append({"method": method, "bits": b, "accuracy": accuracy(logits, y_test),
                         "sqnr_db": sqnr_db(float_logits, logits)})
            if b == keep_bits:
                kept[method] = (qmodel, logits)
            progress.say(f"      {method:<9} {b} bits: accuracy {rows[-1]['accuracy']:.4f}, "
                         f"SQNR {rows[-1]['sqnr_db']:.2f} dB")
    return rows, kept


def save_and_reload(kept, x_test, out_dir: str, keep_bits: int, progress: Progress) -> dict[str, Any]:
    """Save each kept model as ``.keras`` and check that :func:`iqcore.load_model` gives identical outputs."""
    import iqcore

    saved = {}
    for method, (qmodel, logits) in kept.items():
        path = os.path.join(out_dir, f"digits_{method}_{keep_bits}bit.keras")
        qmodel.save(path)
        reloaded = iqcore.load_model(path)
        same = bool(np.array_equal(np.asarray(reloaded(x_test, training=False)), logits))
        saved[method] = {"path": path, "reloaded_outputs_identical": same}
        progress.say(f"      {path}: reloaded outputs {'identical' if same else 'DIFFER'}")
    return saved


def convert_all(kept, saved, data, out_dir: str, keep_bits: int, progress: Progress) -> dict[str, Any]:
    """Convert each saved model to int8 TFLite (in a child process) and run the interpreter on the test set."""
    _, _, x_test, y_test = data
    jobs = [(method, saved[method]["path"], os.path.join(out_dir, f"digits_{method}_{keep_bits}bit_int8.tflite"))
            for method in kept]
    results = {}
    converted = convert_in_child(jobs, on_result=lambda m: progress.say(f"      {m}: conversion finished"))
    for method, outcome in converted.items():
        logits = kept[method][1]
        entry: dict[str, Any] = dict(outcome)
        if "path" in outcome:
            with open(outcome["path"], "rb") as f:
                flatbuffer = f.read()
            with quiet():
                lite = tflite_logits(flatbuffer, x_test)
            entry.update(accuracy=accuracy(lite, y_test), keras_accuracy=accuracy(logits, y_test),
                         argmax_agreement=float(np.mean(np.argmax(lite, -1) == np.argmax(logits, -1))))
            progress.say(f"      {entry['path']} ({entry['bytes']} bytes): interpreter accuracy "
                         f"{entry['accuracy']:.4f} (Keras {entry['keras_accuracy']:.4f}, same prediction on "
                         f"{100 * entry['argmax_agreement']:.1f}% of images)")
        else:
            progress.say(f"      {method}: not converted: {entry['refused']}")
        results[method] = entry
    return results


def _summary(results: dict[str, Any], stream) -> None:
    print("\n" + _table(results["quantized"], results["float_accuracy"]), file=stream)
    print("\nTFLite int8 (interpreter):", file=stream)
    for method, entry in results["tflite"].items():
        if "accuracy" in entry:
            print(f"  {method:<10} accuracy {entry['accuracy']:.4f}  {entry['path']}", file=stream)
        else:
            print(f"  {method:<10} not converted: {entry['refused']}", file=stream)
    print(f"\nplot: {results['plot']}\nresults: {os.path.join(os.path.dirname(results['plot']), 'results.json')}\n"
          f"done in {results['seconds']:.1f} s", file=stream, flush=True)


def run(out_dir: str = "iqcore-demo", seed: int = 0, epochs: int = 30, bits: tuple[int, ...] = (8, 6, 4),
        stream=None) -> dict[str, Any]:
    """Run the demo (see the module docstring) and return its figures (also in ``out_dir/results.json``).

    Raises:
        DemoError: If the ``demo`` extra is missing or ``out_dir`` cannot be created.
    """
    stream = stream or sys.stdout
    _check_dependencies()
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise DemoError(f"cannot create the output folder {out_dir!r}: {e.strerror}") from None
    keep_bits = 8 if 8 in bits else max(bits)
    progress = Progress(6, stream)
    progress.step("loading TensorFlow and the iqcore Keras integration")
    import tensorflow as tf

    try:
        from iqcore import keras as iqkeras
    except ImportError as e:
        raise DemoError(f"the Keras integration (iqcore.keras) is not available ({e}): the demo needs it to "
                        "quantize, save and convert models") from None
    methods = demo_methods()
    if not methods:
        raise DemoError("no installed method quantizes both weights and activations: pip install iq-symmetric")
    results: dict[str, Any] = {"seed": seed, "epochs": epochs, "bits": list(bits), "methods": methods,
                               "tensorflow": tf.__version__, "keras_3": bool(iqkeras.KERAS_3)}

    progress.step(f"training the float CNN on scikit-learn digits ({epochs} epochs)")
    model, data, float_logits = train_float_model(iqkeras.keras, seed, epochs, progress)
    float_acc = accuracy(float_logits, data[3])
    results.update(float_accuracy=float_acc, train_samples=len(data[0]), test_samples=len(data[2]))
    progress.say(f"      float test accuracy {float_acc:.4f} on {len(data[2])} images")

    progress.step(f"quantizing weights and activations: {len(methods)} methods x {len(bits)} bit widths")
    results["quantized"], kept = quantize_all(iqkeras, model, data, float_logits, methods, bits, keep_bits, progress)

    progress.step(f"saving the {keep_bits}-bit models as .keras and reloading them with iqcore.load_model")
    results["saved"] = save_and_reload(kept, data[2], out_dir, keep_bits, progress)

    progress.step(f"converting the {keep_bits}-bit models to int8 TFLite and running the interpreter")
    results["tflite"] = convert_all(kept, results["saved"], data, out_dir, keep_bits, progress)

    progress.step("plotting accuracy and SQNR against bits")
    results["plot"] = os.path.join(out_dir, "accuracy_vs_bits.png")
    plot(results["quantized"], float_acc, results["plot"])
    results["seconds"] = round(progress.elapsed(), 1)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2, default=str)
    _summary(results, stream)
    return results
