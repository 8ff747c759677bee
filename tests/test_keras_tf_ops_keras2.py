"""Keras 2: TensorFlow ops applied to Keras tensors (``x + 3.0``, ``x * (1 / 6)``: ``TFOpLambda`` layers, whose
inbound nodes hold their other operands as keyword arguments or constants) survive the rebuild of
``quantize_model``, as in MobileNetV3's hard-sigmoid."""

import numpy as np
import pytest
import tensorflow as tf
from keras_models import batches

import iqcore.keras
from iqcore.keras import ActivationQuantizationHolder, quantize_model, run_tflite, to_tflite

pytestmark = pytest.mark.skipif(iqcore.keras.KERAS_3, reason="TFOpLambda layers are Keras 2 only")

keras = tf.keras
L = keras.layers


def _hard_swish_model(constant_first: bool):
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = L.BatchNormalization(name="bn")(L.Conv2D(4, 3, name="conv")(inp))
    shifted = 3.0 + x if constant_first else x + 3.0
    gate = L.ReLU(6.0, name="relu6")(shifted) * (1.0 / 6.0)
    x = L.Multiply(name="swish")([x, gate])
    return keras.Model(inp, L.Dense(5, name="fc")(L.GlobalAveragePooling2D(name="pool")(x)))


@pytest.mark.parametrize("constant_first", [False, True], ids=["x_plus_3", "3_plus_x"])
def test_tf_ops_on_keras_tensors_quantize_and_convert(constant_first):
    model = _hard_swish_model(constant_first)
    assert any(type(layer).__name__ == "TFOpLambda" for layer in model.layers)
    data = batches((8, 8, 3), n=2, seed=1)
    q = quantize_model(model, weights_method="symmetric", activation_method="uniform", representative_data=data,
                       verbose=0)
    assert sum(type(layer).__name__ == "TFOpLambda" for layer in q.layers) == 2
    assert not any(isinstance(layer, L.BatchNormalization) for layer in q.layers)  # folded into conv
    x = np.concatenate(batches((8, 8, 3), n=2, seed=2))
    out = q(x).numpy()
    assert np.all(np.isfinite(out)) and out.shape == model(x).shape
    flatbuffer = to_tflite(q, allow_float=True)
    holder = next(layer for layer in q.layers if isinstance(layer, ActivationQuantizationHolder))
    on_grid = holder(x).numpy()
    lite, step, _ = run_tflite(flatbuffer, on_grid)
    assert np.all(np.isfinite(lite))
    assert np.abs(lite - q(on_grid).numpy()).max() <= 4 * step
