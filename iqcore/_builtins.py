"""iqcore's own hook implementations, registered before any plugin: the Keras layer types it quantizes and the
int8 TFLite exporter. Plugins extend both through the same hooks (docs/plugins.md)."""

from iqcore._registry import Exporter, QuantizableWeight
from iqcore.hookspecs import hookimpl


@hookimpl
def register_layers(register):
    from iqcore.keras._layers import keras  # the hook runs only from iqcore.keras, where TensorFlow is loaded

    layers = keras.layers
    for cls in (layers.Conv1D, layers.Conv2D, layers.Conv3D, layers.Dense):
        register(cls, QuantizableWeight("kernel", channel_axis=-1, input_axis=-2))
    register(layers.DepthwiseConv2D, QuantizableWeight("kernel", channel_axis=-2, input_axis=-2))
    # A transposed convolution spreads each input over several outputs: no per-channel-mean bias correction.
    register(layers.Conv2DTranspose, QuantizableWeight("kernel", channel_axis=-2))
    register(layers.Conv1DTranspose, QuantizableWeight("kernel", channel_axis=-2))


def _export_tflite(model, path) -> None:
    from iqcore.keras import to_tflite

    flatbuffer = to_tflite(model)
    with open(path, "wb") as f:
        f.write(flatbuffer)


@hookimpl
def register_exporters(register):
    register(Exporter("tflite", _export_tflite, ".tflite",
                      "fully int8 TFLite flatbuffer with the quantizers' own weight scales"))
