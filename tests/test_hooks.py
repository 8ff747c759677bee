"""The hooks beyond registration: layers, exporters and commands, each through a plugin object registered in
this process (and unregistered after), plus one real installed distribution written from docs/plugins.md."""

import ast
import pathlib
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from test_plugins import install, run

import iqcore
from iqcore import _plugins, _registry, cli, plugin, selfcheck
from iqcore import keras as iqkeras

keras = tf.keras
ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA = [np.random.default_rng(i).uniform(-1, 1, (4, 6, 6, 2)).astype(np.float32) for i in range(2)]


@pytest.fixture
def register_plugin():
    """Register plugin objects in this process's plugin manager; unregister them afterwards."""
    pm = _plugins.get_plugin_manager()
    added = []

    def add(obj, name):
        pm.register(obj, name=name)
        added.append(obj)
        _registry.refresh()

    yield add
    for obj in added:
        pm.unregister(obj)
    _registry.refresh()


def namespace(**hooks):
    """A plugin object: a class whose attributes are the hook implementations."""
    return type("Plugin", (), {name: staticmethod(plugin.hookimpl(fn)) for name, fn in hooks.items()})


class WideConv(keras.layers.Conv2D):
    """A user's subclass of Conv2D."""


def test_a_subclass_of_a_registered_layer_is_quantized():
    inp = keras.Input((6, 6, 2))
    model = keras.Model(inp, WideConv(3, 3, name="wide")(inp))
    qmodel = iqkeras.quantize_model(model, weights_method="symmetric")
    assert isinstance(qmodel.get_layer("wide_quantized"), iqkeras.QuantizationWrapper)


def test_register_layers_adds_a_layer_type_to_quantize_model(register_plugin):
    class Scale(keras.layers.Layer):
        def build(self, input_shape):
            self.gamma = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="gamma")

        def call(self, x):
            return x * self.gamma

    def register_layers(register):
        register(Scale, plugin.QuantizableWeight("gamma", channel_axis=0))

    register_plugin(namespace(register_layers=register_layers), "scale-layers")
    inp = keras.Input((6, 6, 2))
    model = keras.Model(inp, Scale(name="scale")(inp))
    model.get_layer("scale").gamma.assign([0.3, -1.7])
    qmodel = iqkeras.quantize_model(model, weights_method="pot", weights_bits=4)
    q = qmodel.get_layer("scale_quantized").weights_quantizers["gamma"]
    assert q.per_channel and q.channel_axis == 0 and q.threshold == [0.5, 2.0]


def test_a_plugins_layer_entry_replaces_iqcores_own_for_the_same_class(register_plugin):
    def register_layers(register):
        register(keras.layers.Dense, plugin.QuantizableWeight("kernel", channel_axis=0))

    register_plugin(namespace(register_layers=register_layers), "dense-rows")
    inp = keras.Input((5,))
    qmodel = iqkeras.quantize_model(keras.Model(inp, keras.layers.Dense(3, name="fc")(inp)), weights_method="pot")
    assert qmodel.get_layer("fc_quantized").weights_quantizers["kernel"].channel_axis == 0


def test_a_layers_hook_that_raises_is_reported_and_the_built_in_table_still_works(register_plugin):
    def register_layers(register):
        register("not a class", plugin.QuantizableWeight("kernel"))

    register_plugin(namespace(register_layers=register_layers), "bad-layers")
    with pytest.warns(iqcore.PluginWarning, match="bad-layers.*register_layers failed"):
        table = _registry.layers()
    assert keras.layers.Conv2D in table


def test_register_exporters_adds_a_format_to_export_and_the_cli(register_plugin, tmp_path, capsys):
    def write_names(model, path):
        pathlib.Path(path).write_text("\n".join(layer.name for layer in model.layers))

    def register_exporters(register):
        register(plugin.Exporter("names", write_names, ".txt", "layer names"))

    register_plugin(namespace(register_exporters=register_exporters), "names-format")
    inp = keras.Input((6, 6, 2))
    model = iqkeras.quantize_model(keras.Model(inp, keras.layers.Conv2D(3, 3, name="conv")(inp)),
                                   weights_method="symmetric")
    assert iqkeras.export(model, tmp_path / "m.txt") == "names"
    assert "conv_quantized" in (tmp_path / "m.txt").read_text()
    assert cli.main(["export", "--list"]) == 0
    listed = capsys.readouterr().out
    assert re.search(r"^names\s+\.txt", listed, re.M) and re.search(r"^tflite\s+\.tflite", listed, re.M)


def test_export_to_an_unknown_format_names_the_installed_ones(tmp_path):
    with pytest.raises(ValueError, match=r"format is 'onnx-nope'; allowed: .*tflite"):
        iqkeras.export(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]), tmp_path / "x", "onnx-nope")


def test_iqcore_export_writes_int8_tflite_from_a_saved_model(tmp_path):
    inp = keras.Input((6, 6, 2))
    model = keras.Model(inp, keras.layers.Conv2D(3, 3, name="conv")(inp))
    qmodel = iqkeras.quantize_model(model, weights_method="pot", activation_method="pot", representative_data=DATA,
                                    verbose=0)
    qmodel.save(str(tmp_path / "m.keras"))
    result = subprocess.run([sys.executable, "-m", "iqcore.cli", "export", str(tmp_path / "m.keras"),
                             str(tmp_path / "m.tflite")], capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m.tflite").read_bytes()[4:8] == b"TFL3"


def test_register_commands_adds_a_subcommand(register_plugin, capsys):
    def register_commands(subparsers):
        p = subparsers.add_parser("hello", help="say hello")
        p.add_argument("--name", default="world")
        p.set_defaults(func=lambda args: print(f"hello {args.name}") or 0)

    register_plugin(namespace(register_commands=register_commands), "hello-command")
    assert cli.main(["hello", "--name", "iqcore"]) == 0
    assert capsys.readouterr().out.strip() == "hello iqcore"


def test_a_command_that_clashes_with_a_built_in_is_skipped_with_a_warning(register_plugin, capsys):
    def register_commands(subparsers):
        subparsers.add_parser("list")

    register_plugin(namespace(register_commands=register_commands), "clash-command")
    with pytest.warns(iqcore.PluginWarning, match="clash-command.*register_commands failed"):
        assert cli.main(["list", "--json"]) == 0
    assert '"quantizers"' in capsys.readouterr().out


class WeightsNoCalibration(plugin.ThresholdWeightsQuantizer):
    method = "nocal"

    @classmethod
    def calibrate(cls, observation, settings):
        return plugin.InferableQuantizer.calibrate.__func__(cls, observation, settings)


def test_a_method_that_cannot_calibrate_is_refused_by_quantize_model_naming_it(register_plugin):
    register_plugin(namespace(register_quantizers=lambda register: register(WeightsNoCalibration)), "nocal")
    inp = keras.Input((4,))
    with pytest.raises(ValueError, match=r"method 'nocal' .*cannot calibrate itself"):
        iqkeras.quantize_model(keras.Model(inp, keras.layers.Dense(2)(inp)), weights_method="nocal")


def test_the_selfcheck_reports_a_method_that_cannot_calibrate_as_not_checked(register_plugin):
    register_plugin(namespace(register_quantizers=lambda register: register(WeightsNoCalibration)), "nocal")
    rows = {(r.method, r.target): r for r in selfcheck.sweep((8,))}
    assert "cannot calibrate itself" in rows[("nocal", "weights")].problem
    assert selfcheck.failed(rows.values())


def test_a_layers_plugin_written_from_the_guide_quantizes_its_layer_when_installed(tmp_path):
    guide = (ROOT / "docs" / "plugins.md").read_text()
    block = re.search(r"<!-- plugin-example: iq_scale -->\n```python\n(.*?)```", guide, re.S).group(1)
    install(tmp_path, "iq-scale", "iq_scale", block, "scale")
    script = textwrap.dedent("""
        import json, numpy as np, tensorflow as tf
        import iqcore.keras as iqkeras
        import iq_scale
        inp = tf.keras.Input((4, 3))
        model = tf.keras.Model(inp, iq_scale.ChannelScale(name="s")(inp))
        q = iqkeras.quantize_model(model, weights_method="symmetric", weights_bits=4)
        w = q.get_layer("s_quantized")
        print(json.dumps({"weights": list(w.weights_quantizers), "axis": w.weights_quantizers["gamma"].channel_axis}))
    """)
    out = run(tmp_path, script, IQCORE_STRICT_PLUGINS="1")
    assert out == {"weights": ["gamma"], "axis": 0}


PUBLIC = {"iqcore", "iqcore.plugin", "iqcore.testing", "iqcore.keras", "iqcore.calibration"}


def _iqcore_imports(path: pathlib.Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "iqcore"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "iqcore":
            found += [node.module] + [f"{node.module}.{a.name}" for a in node.names
                                      if f"{node.module}.{a.name}".startswith("iqcore._")
                                      or a.name.startswith("_")]
    return found


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in [
    *ROOT.glob("plugins/*/**/*.py"), *ROOT.glob("examples/*/**/*.py")] if "build" not in p.parts))
def test_plugins_and_examples_import_only_the_public_api(path):
    private = [m for m in _iqcore_imports(ROOT / path) if m not in PUBLIC]
    assert not private, f"{path} imports private iqcore modules: {private}; allowed: {sorted(PUBLIC)}"


BUILT_IN_METHODS = {"pot", "symmetric", "uniform"}


def _method_branches(path: pathlib.Path) -> list[int]:
    """Lines comparing with, or keying a dict by, a built-in method's name."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        values = []
        if isinstance(node, ast.Compare):
            for operand in [node.left, *node.comparators]:
                values += [operand] + list(getattr(operand, "elts", []))
        elif isinstance(node, ast.Dict):
            values = [k for k in node.keys if k is not None]
        elif isinstance(node, ast.match_case):
            values = list(ast.walk(node.pattern))
        if any(isinstance(v, ast.Constant) and v.value in BUILT_IN_METHODS for v in values):
            lines.append(node.lineno if hasattr(node, "lineno") else 0)
    return lines


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("iqcore/**/*.py")))
def test_the_core_never_branches_on_a_built_in_methods_name(path):
    lines = _method_branches(ROOT / path)
    assert not lines, f"{path} branches on a method name at lines {lines}"
