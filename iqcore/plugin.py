"""The plugin API: everything a method plugin imports from iqcore, and the promise that comes with it.

A plugin imports ``iqcore.plugin`` (and, in its tests, :mod:`iqcore.testing`), nothing else from iqcore::

    from iqcore import plugin

    class WeightsMyQuantizer(plugin.InferableQuantizer):
        method, target = "mine", "weights"
        ...

    @plugin.hookimpl
    def register_quantizers(register):
        register(WeightsMyQuantizer)

Stability: every name in ``__all__`` keeps its meaning and signature within a major version of iqcore
(arguments may be added with defaults); removing or changing one is a major release, announced one minor
release ahead with a ``DeprecationWarning``. Modules whose names start with ``_`` are private and change
without notice. docs/plugins.md documents each name.

Contents:

* hooks: :data:`hookimpl`, and :class:`QuantizableWeight` and :class:`Exporter` for ``register_layers`` and
  ``register_exporters``;
* quantizer bases: :class:`InferableQuantizer` (with ``set_layout``, ``set_grid``, ``reference`` and the
  ``calibrate`` classmethod), :class:`ThresholdWeightsQuantizer`, :class:`ThresholdActivationQuantizer`,
  :class:`QuantizationParams`, :data:`CONFIG_VERSION`, :func:`threshold_range`, :func:`check_ranges`;
* calibration: :class:`Settings`, :class:`WeightsObservation`, :class:`ActivationObservation`,
  :func:`search_range`, :func:`positive`, :func:`power_of_two_ceil` (also in :mod:`iqcore.calibration`);
* validation (each raises ``TypeError``/``ValueError`` naming the parameter): :func:`check_bool`,
  :func:`check_int`, :func:`check_num_bits`, :func:`check_floats`, :func:`check_positive`,
  :func:`check_power_of_two`, :func:`check_count`, :func:`check_layout`;
* tensors and kernels (these import TensorFlow on first use): :func:`as_float_tensor`,
  :func:`check_tensor_layout`, :func:`fake_quant` (the exact TensorFlow kernel on a grid), :func:`reference`
  (its NumPy reference), :func:`codes`.
"""

from __future__ import annotations

import numpy as np

from iqcore._quantizer import (
    CONFIG_VERSION,
    InferableQuantizer,
    QuantizationParams,
    ThresholdActivationQuantizer,
    ThresholdWeightsQuantizer,
    check_ranges,
    threshold_range,
)
from iqcore._registry import Exporter, QuantizableWeight
from iqcore._validation import (
    check_bool,
    check_count,
    check_floats,
    check_int,
    check_layout,
    check_num_bits,
    check_positive,
    check_power_of_two,
)
from iqcore.calibration import (
    ActivationObservation,
    Settings,
    WeightsObservation,
    positive,
    power_of_two_ceil,
    search_range,
)
from iqcore.hookspecs import hookimpl


def as_float_tensor(x, name: str = "x"):
    """``x`` as a TensorFlow tensor of a floating dtype; ``TypeError`` for integer, bool, complex or string."""
    from iqcore import _kernels

    return _kernels.as_float_tensor(x, name)


def check_tensor_layout(x, grid):
    """Check a per-channel input's rank and channel count against ``grid`` (``ValueError``); returns ``x``."""
    from iqcore import _kernels

    return _kernels.check_layout(x, grid)


def fake_quant(x, grid):
    """TensorFlow fake-quantization of ``x`` on ``grid``, bit-exact in eager, graph and XLA modes."""
    from iqcore import _kernels

    return _kernels.fake_quant(x, grid)


def reference(x, grid) -> np.ndarray:
    """The NumPy reference of :func:`fake_quant` (float32 in and out)."""
    from iqcore import _grid

    return _grid.fake_quant(x, grid)


def codes(x, grid):
    """Signed integer codes of ``x`` on ``grid`` (int8 up to 8 bits, int16 above), as a TensorFlow tensor."""
    from iqcore import _kernels

    return _kernels.codes(x, grid)


__all__ = [
    "CONFIG_VERSION",
    "ActivationObservation",
    "Exporter",
    "InferableQuantizer",
    "QuantizableWeight",
    "QuantizationParams",
    "Settings",
    "ThresholdActivationQuantizer",
    "ThresholdWeightsQuantizer",
    "WeightsObservation",
    "as_float_tensor",
    "check_bool",
    "check_count",
    "check_floats",
    "check_int",
    "check_layout",
    "check_num_bits",
    "check_positive",
    "check_power_of_two",
    "check_ranges",
    "check_tensor_layout",
    "codes",
    "fake_quant",
    "hookimpl",
    "positive",
    "power_of_two_ceil",
    "reference",
    "search_range",
    "threshold_range",
]
