"""A Keras layer that calls one TensorFlow function from a fixed table: the Keras 3 stand-in for Keras 2's
``TFOpLambda`` (which Keras 3 does not have), so that models the seed's toolchain wrote with TF ops on
constant operands (``tf.subtract(c, x)``, ``tf.matmul(x, c, transpose_b=True)``) load on Keras 3."""

from __future__ import annotations

import tensorflow as tf

from iqcore.keras._layers import PACKAGE

keras = tf.keras

#: The TF functions a :class:`TFOperation` may call, by the name Keras 2's ``TFOpLambda`` stores
#: (``tf.<name>``). Only these: a stored name never reaches ``getattr``.
FUNCTIONS = {
    "math.add": tf.math.add, "__operators__.add": tf.math.add, "math.subtract": tf.math.subtract,
    "math.multiply": tf.math.multiply, "math.truediv": tf.math.truediv, "math.divide": tf.math.divide,
    "math.maximum": tf.math.maximum, "math.minimum": tf.math.minimum, "linalg.matmul": tf.linalg.matmul,
    "matmul": tf.linalg.matmul, "concat": tf.concat, "compat.v1.transpose": tf.transpose,
}


@keras.utils.register_keras_serializable(package=PACKAGE)
class TFOperation(keras.layers.Layer):  # type: ignore[name-defined]
    """Calls ``tf.<function>`` on its inputs with the call's other arguments.

    Args:
        function: A key of :data:`FUNCTIONS` (``"math.subtract"``, ``"linalg.matmul"``...).
        **kwargs: Keras layer arguments.

    Raises:
        ValueError: For a function outside the table (the message lists the allowed names).
    """

    def __init__(self, function, **kwargs):
        if function not in FUNCTIONS:
            raise ValueError(f"function is {function!r}; allowed: {sorted(FUNCTIONS)}")
        super().__init__(**kwargs)
        self.function = function

    def call(self, *args, **kwargs):
        return FUNCTIONS[self.function](*args, **kwargs)

    def compute_output_spec(self, *args, **kwargs):
        flat = tf.nest.flatten(args)
        symbolic = [i for i, a in enumerate(flat) if isinstance(a, keras.KerasTensor)]

        def traced(*tensors):
            values = list(flat)
            for i, t in zip(symbolic, tensors, strict=True):
                values[i] = t
            return self.call(*tf.nest.pack_sequence_as(args, values), **kwargs)

        specs = [tf.TensorSpec(flat[i].shape, flat[i].dtype) for i in symbolic]
        out = tf.function(traced).get_concrete_function(*specs).structured_outputs
        return keras.KerasTensor(tuple(out.shape), out.dtype.name)

    def get_config(self):
        return {**super().get_config(), "function": self.function}
