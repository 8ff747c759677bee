"""The ``iqcore`` console script, run as a user runs it: the installed entry point, in a subprocess."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

BIN = os.path.dirname(sys.executable)
IQCORE = shutil.which("iqcore", path=BIN) or shutil.which("iqcore")


def run(*args, env=None, timeout=300):
    if IQCORE is None:
        pytest.fail("the iqcore console script is not installed (pip install -e .)")
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    return subprocess.run([IQCORE, *args], capture_output=True, text=True, env=full_env, timeout=timeout,
                          check=False)


def error_lines(result):
    """The stderr lines iqcore itself printed (TensorFlow's start-up logs are not iqcore's)."""
    return [line for line in result.stderr.splitlines() if line.startswith("iqcore")]


def test_help_names_the_three_commands():
    result = run("--help")
    assert result.returncode == 0
    for command in ("list", "inspect", "demo"):
        assert command in result.stdout


def test_list_shows_every_builtin_method_and_target_with_its_distribution():
    result = run("list")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[2:] if line.strip()]
    listed = {(r[0], r[1], r[3]) for r in rows}
    for method in ("pot", "symmetric", "uniform"):
        for target in ("weights", "activation"):
            assert (method, target, f"iq-{method}") in listed


def install_broken_plugin(folder):
    """A real (unpacked) distribution ``iq-broken`` whose ``iqcore`` entry point fails to import."""
    dist = folder / "iq_broken-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: iq-broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[iqcore]\nbroken = iq_broken_module\n")
    (folder / "iq_broken_module.py").write_text("raise ImportError('this plugin is broken on purpose')\n")
    return {"PYTHONPATH": str(folder)}


def test_list_reports_a_broken_plugin_with_its_reason_and_keeps_the_others(tmp_path):
    result = run("list", "--json", env=install_broken_plugin(tmp_path))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert [(f["plugin"], f["distribution"]) for f in data["failed_plugins"]] == [("broken", "iq-broken")]
    assert "this plugin is broken on purpose" in data["failed_plugins"][0]["error"]
    assert len(data["quantizers"]) == 6


def test_list_in_strict_mode_exits_1_naming_the_broken_plugin(tmp_path):
    result = run("list", env={**install_broken_plugin(tmp_path), "IQCORE_STRICT_PLUGINS": "1"})
    assert result.returncode == 1
    assert len(error_lines(result)) == 1
    assert "'broken' (distribution iq-broken)" in error_lines(result)[0]


def test_unknown_command_exits_2_with_a_one_line_reason():
    result = run("lst")
    assert result.returncode == 2
    assert len(error_lines(result)) == 1
    assert "invalid choice: 'lst'" in error_lines(result)[0]


def test_demo_rejects_a_bit_width_outside_2_to_16_before_doing_any_work():
    result = run("demo", "--bits", "1")
    assert result.returncode == 2
    assert len(error_lines(result)) == 1
    assert "outside 2..16" in error_lines(result)[0]


def test_inspect_of_a_missing_file_exits_1_naming_the_file(tmp_path):
    missing = tmp_path / "nothing.keras"
    result = run("inspect", str(missing))
    assert result.returncode == 1
    assert error_lines(result) == [f"iqcore inspect: error: no such file: {missing}"]


def test_inspect_of_a_file_that_is_not_a_model_exits_1_with_one_line(tmp_path):
    bogus = tmp_path / "bogus.keras"
    bogus.write_text("not a zip archive")
    result = run("inspect", str(bogus))
    assert result.returncode == 1
    assert len(error_lines(result)) == 1
    assert error_lines(result)[0].startswith(f"iqcore inspect: error: cannot load {bogus}")


def test_inspect_prints_one_row_per_quantizer_of_a_saved_model(tmp_path):
    from iqcore import keras as iqkeras

    keras = iqkeras.keras
    model = keras.Sequential([keras.Input(shape=(6, 6, 2)), keras.layers.Conv2D(3, 3, name="conv"),
                              keras.layers.Flatten(name="flat"), keras.layers.Dense(4, name="head")])
    data = np.random.default_rng(0).normal(size=(8, 6, 6, 2)).astype(np.float32)
    qmodel = iqkeras.quantize_model(model, weights_method="symmetric", weights_bits=6, activation_method="pot",
                                    representative_data=[data])
    path = tmp_path / "q.keras"
    qmodel.save(str(path))
    result = run("inspect", str(path))
    assert result.returncode == 0, result.stderr
    rows = [line.split()[:5] for line in result.stdout.splitlines()[2:]]
    assert ["conv", "weights", "(kernel)", "symmetric", "6"] in rows
    assert ["head", "weights", "(kernel)", "symmetric", "6"] in rows
    assert sum(1 for r in rows if r[1] == "activation" and r[2] == "pot") == 3  # the input, conv and head


def test_demo_writes_the_table_models_tflite_and_plot(tmp_path):
    out = tmp_path / "demo"
    result = run("demo", "--out", str(out), "--epochs", "2", "--bits", "8", "4", "--seed", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert {(r["method"], r["bits"]) for r in results["quantized"]} == {
        (m, b) for m in ("pot", "symmetric", "uniform") for b in (8, 4)}
    assert all(entry["reloaded_outputs_identical"] for entry in results["saved"].values())
    assert 0.0 <= results["tflite"]["symmetric"]["accuracy"] <= 1.0
    assert (out / "accuracy_vs_bits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "SQNR (dB)" in result.stdout
