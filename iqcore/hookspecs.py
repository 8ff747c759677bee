"""The plugin hooks. A plugin is a module named by an entry point in the ``iqcore`` group::

    [project.entry-points.iqcore]
    lut = "iq_lut"

that implements hooks with ``@iqcore.plugin.hookimpl``. Each hook takes a callback and is documented with an
example in docs/plugins.md.
"""

import pluggy

hookspec = pluggy.HookspecMarker("iqcore")
hookimpl = pluggy.HookimplMarker("iqcore")


@hookspec
def register_quantizers(register):
    """Register quantizer classes by calling ``register(cls)`` once per class.

    ``cls`` subclasses :class:`iqcore.plugin.InferableQuantizer` and sets ``method`` (a lower-case name such
    as ``"symmetric"``) and ``target`` (``"weights"`` or ``"activation"``); ``iqcore.get_quantizer(method,
    target)`` then builds it, and ``cls.calibrate`` lets ``quantize_model`` choose its parameters from data.
    Registering a (method, target) that another plugin also registers makes that pair unusable until one of
    them is blocked (``IQCORE_BLOCK_PLUGINS``).
    """


@hookspec
def register_layers(register):
    """Register Keras layer types that ``quantize_model`` quantizes: ``register(layer_class, *weights)``.

    Each weight is an :class:`iqcore.plugin.QuantizableWeight` (the weight's name, its channel axis, and its
    input-channel axis for bias correction). Subclasses of ``layer_class`` are covered too; a plugin's entry
    for a class replaces iqcore's own.
    """


@hookspec
def register_exporters(register):
    """Register deployment formats: ``register(iqcore.plugin.Exporter(name, export, suffix, description))``.

    ``export(model, path)`` writes a quantized Keras model to ``path``, or raises ``ValueError`` naming the
    layer and the reason it cannot; ``iqcore export --format NAME`` and ``iqcore.keras.export`` call it.
    """


@hookspec
def register_commands(subparsers):
    """Add ``iqcore`` subcommands: ``p = subparsers.add_parser(name, help=...)``, then
    ``p.set_defaults(func=run)`` where ``run(args)`` returns the exit code (an argparse sub-parsers action)."""
