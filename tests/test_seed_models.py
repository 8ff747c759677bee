"""Files the seed's toolchain wrote (tests/fixtures, made by ``nox -s mct_fixtures`` with mct-quantizers 1.7.0
on TensorFlow 2.15) load through iqcore.load_model as iqcore layers with bit-identical outputs; ``iqcore
convert`` rewrites them; LUT quantizers are refused by name; code -128 reaches int8 TFLite only through the
explicit narrow-range option."""

import json
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import iqcore
from iqcore.keras import (
    ActivationQuantizationHolder,
    QuantizationWrapper,
    get_metadata,
    load_seed_model,
    narrow_weights,
    to_tflite,
)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
MODELS = ["cnn_pot", "mlp_uniform", "code_min", "mct_ptq", "constants"]  # mct_ptq: MCT 2.6.1's own PTQ and exporter
IQCORE = shutil.which("iqcore", path=os.path.dirname(sys.executable)) or shutil.which("iqcore")


def fixture(name):
    return os.path.join(FIXTURES, name)


def same_bits(a, b):
    return np.array_equal(np.asarray(a, np.float32).view(np.uint32), np.asarray(b, np.float32).view(np.uint32))


@pytest.mark.parametrize("ext", ["keras", "h5"])
@pytest.mark.parametrize("name", MODELS)
def test_seed_files_load_with_bit_identical_outputs(name, ext):
    model = iqcore.load_model(fixture(f"{name}.{ext}"))
    expected = np.load(fixture(f"{name}.npz"))
    assert same_bits(model(expected["x"]), expected["y"])
    kinds = {type(layer).__name__ for layer in model.layers}
    assert "QuantizationWrapper" in kinds and "ActivationQuantizationHolder" in kinds
    assert not any("Keras" in k or "Metadata" in k for k in kinds)
    meta = get_metadata(model)
    if name == "mct_ptq":  # MCT's exporter wrote no MetadataLayer
        assert meta == {}
    else:
        assert meta["model"] == name and meta["author"] == "iqcore fixtures" and meta["mctq_version"] == "1.7.0"


def test_the_mapping_names_each_layer_and_quantizer():
    model, mapped = load_seed_model(fixture("cnn_pot.keras"))
    text = "\n".join(map(str, mapped))
    assert "keras_quantization_wrapper: KerasQuantizationWrapper(Conv2D).kernel -> QuantizationWrapper: " \
           "WeightsPOTInferableQuantizer -> pot/weights (iq-pot)" in text
    assert "image_q: KerasActivationQuantizationHolder -> ActivationQuantizationHolder" in text
    conv = model.get_layer("keras_quantization_wrapper")
    q = conv.weights_quantizers["kernel"]
    assert isinstance(conv, QuantizationWrapper) and q.threshold == [0.5, 1.0, 0.5, 0.25]
    assert (q.per_channel, q.channel_axis, q.input_rank) == (True, 3, 4)
    assert isinstance(model.get_layer("image_q"), ActivationQuantizationHolder)


def test_seed_per_tensor_layout_and_adjusted_uniform_ranges_come_through():
    model, _ = load_seed_model(fixture("mlp_uniform.h5"))
    fc2 = model.get_layer("keras_quantization_wrapper_4").weights_quantizers["kernel"]
    assert fc2.per_channel is False and fc2.input_rank is None and fc2.channel_axis == 1
    # the seed stored the ranges it had adjusted; adjusting again keeps them (and the seed does the same)
    assert fc2.min_range == pytest.approx([-0.62451613], abs=1e-8)


@pytest.mark.parametrize("ext", ["keras", "h5"])
def test_lut_quantizers_are_refused_naming_the_layer_and_the_plugin(ext):
    match = r"keras_quantization_wrapper_5.*WeightsLUTSymmetricInferableQuantizer.*plugin"
    with pytest.raises(ValueError, match=match):
        iqcore.load_model(fixture(f"lut.{ext}"))


def test_code_minus_128_reaches_tflite_only_through_the_explicit_narrow_range_step():
    model = iqcore.load_model(fixture("code_min.keras"))
    with pytest.raises(ValueError, match="code -128"):
        to_tflite(model)
    before = model.get_layer("keras_quantization_wrapper_6").layer.kernel.numpy().copy()
    moved = narrow_weights(model)
    assert len(moved) == 1 and moved[0].moved >= 3 and moved[0].max_shift == 0.5 / 128
    after = model.get_layer("keras_quantization_wrapper_6").layer.kernel.numpy()
    assert int(np.count_nonzero(after != before)) == moved[0].moved
    assert model.get_layer("keras_quantization_wrapper_6").weights_quantizers["kernel"].narrow_range
    assert to_tflite(model)[4:8] == b"TFL3"
    assert narrow_weights(model) == []  # nothing left to move


def run_cli(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([IQCORE, *args], capture_output=True, text=True, env=env, timeout=300, check=False)


def test_convert_command_rewrites_a_seed_file_and_prints_what_it_mapped(tmp_path):
    out = tmp_path / "cnn.keras"
    result = run_cli("convert", fixture("cnn_pot.h5"), str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "mapped keras_quantization_wrapper_1: KerasQuantizationWrapper(DepthwiseConv2D).depthwise_kernel" \
        in result.stdout
    assert "mapped metadata_layer: MetadataLayer -> model metadata" in result.stdout
    with zipfile.ZipFile(out) as z:
        assert "Keras" not in json.dumps([e["class_name"] for e in json.loads(z.read("config.json"))["config"]
                                          ["layers"]])
    expected = np.load(fixture("cnn_pot.npz"))
    model = iqcore.load_model(out)
    assert same_bits(model(expected["x"]), expected["y"])
    assert get_metadata(model)["model"] == "cnn_pot"


def test_convert_reports_code_minus_128_and_moves_it_only_when_asked(tmp_path):
    plain = run_cli("convert", fixture("code_min.keras"), str(tmp_path / "a.keras"))
    assert plain.returncode == 0 and "rerun with --narrow-range" in plain.stdout
    narrow = run_cli("convert", fixture("code_min.keras"), str(tmp_path / "b.keras"), "--narrow-range")
    assert narrow.returncode == 0, narrow.stderr[-2000:]
    assert "weights moved to the narrow-range grid, by at most 0.00390625" in narrow.stdout
    refused = run_cli("convert", fixture("lut.keras"), str(tmp_path / "c.keras"))
    assert refused.returncode == 1 and "WeightsLUTSymmetricInferableQuantizer" in refused.stderr
    assert not (tmp_path / "c.keras").exists()
