"""The LUT quantizer passes iqcore's conformance suite: the few lines a plugin author writes."""

from iq_lut import WeightsLUTInferableQuantizer
from iqcore.testing import QuantizerConformance


class TestLUTConformance(QuantizerConformance):
    quantizer_class = WeightsLUTInferableQuantizer
    valid_params = [
        dict(num_bits=2, lut_values=[-96, -24, 24, 96], threshold=[0.5]),
        dict(num_bits=3, lut_values=[-127, -60, -20, 0, 20, 60, 127], threshold=[1.0, 0.25, 4.0],
             per_channel=True, channel_axis=-1, input_rank=4),
        dict(num_bits=2, lut_values=[-6, 0, 5], threshold=[2.0, 0.5], per_channel=True, channel_axis=0,
             input_rank=2, lut_values_bitwidth=4),
    ]
    invalid_params = [
        dict(num_bits=2, lut_values=[], threshold=[1.0]),
        dict(num_bits=2, lut_values=[-3, -2, -1, 0, 1], threshold=[1.0]),
        dict(num_bits=2, lut_values=[0, 200], threshold=[1.0]),
        dict(num_bits=2, lut_values=[0, 0.5], threshold=[1.0]),
        dict(num_bits=2, lut_values=[1, 1], threshold=[1.0]),
        dict(num_bits=2, lut_values=[0, 1], threshold=[3.0]),
        dict(num_bits=2, lut_values=[0, 1], threshold=[-1.0]),
        dict(num_bits=2, lut_values="0,1", threshold=[1.0]),
        dict(num_bits=2, lut_values=[0, 1], threshold=[1.0], lut_values_bitwidth=9),
    ]
