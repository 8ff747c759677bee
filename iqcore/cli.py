"""The ``iqcore`` command line: ``list``, ``inspect MODEL``, ``export MODEL OUT``, ``convert OLD NEW``, ``demo``,
and plugins' commands.

    iqcore list                          # installed methods and targets, and plugins that failed to load
    iqcore inspect model.keras           # each quantized layer of a saved model
    iqcore export model.keras m.tflite   # a deployment format (--list shows the installed ones)
    iqcore demo --out DIR                # train, quantize, save, reload and convert a small CNN

Every error is one line on stderr (``iqcore <command>: error: <reason>``) and a non-zero exit code:
2 for bad arguments, 1 when the command could not do its job.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any, NoReturn

import numpy as np

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CommandError(Exception):
    """A command failed for a reason the user can act on; the message is printed on one line."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are a single line (the reason and where to get help)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table with columns padded to their widest cell."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- iqcore list ----------------------------------------------------------------------------------------------
def _cmd_list(args: argparse.Namespace) -> int:
    from iqcore import _plugins as plugins
    from iqcore import _registry as registry

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", plugins.PluginWarning)  # failures are printed below instead
        try:
            infos = registry.list_quantizers()
            failed = plugins.failures()
        except plugins.PluginError as e:  # IQCORE_STRICT_PLUGINS=1
            raise CommandError(str(e)) from None
    if args.json:
        print(json.dumps({
            "quantizers": [
                {"method": i.method, "target": i.target, "class": f"{i.cls.__module__}.{i.cls.__qualname__}",
                 "plugin": i.plugin, "distribution": i.distribution, "version": i.version}
                for i in infos
            ],
            "failed_plugins": [{"plugin": f.plugin, "distribution": f.distribution, "error": f.error}
                               for f in failed],
        }, indent=2))
        return EXIT_OK
    if infos:
        rows = [(i.method, i.target, f"{i.cls.__module__}.{i.cls.__qualname__}", i.distribution, i.version)
                for i in infos]
        print(_table(("METHOD", "TARGET", "CLASS", "DISTRIBUTION", "VERSION"), rows))
    else:
        print("No quantizers registered: install a plugin such as iq-symmetric.")
    if failed:
        print(f"\nPlugins that failed to load ({len(failed)}):")
        for f in failed:
            print(f"  {f.plugin} ({f.distribution}): {f.error}")
    return EXIT_OK


# -- iqcore inspect -------------------------------------------------------------------------------------------
def quantizer_summary(quantizer) -> dict[str, str]:
    """The columns ``iqcore inspect`` shows for one quantizer: method, bits, axis and its own summary."""
    config = quantizer.get_config()
    axis = config.get("channel_axis") if config.get("per_channel", False) else None
    return {
        "method": type(quantizer).method or type(quantizer).__name__,
        "bits": str(config.get("num_bits", "?")),
        "axis": "per-tensor" if axis is None else str(axis),
        "params": quantizer.summary(),
    }


def _layer_quantizers(layer, iqkeras) -> list[tuple[str, Any]]:
    """``(target, quantizer)`` pairs held by one iqcore layer (none for other layers)."""
    if isinstance(layer, iqkeras.QuantizationWrapper):
        return [(f"weights ({name})", q) for name, q in layer.weights_quantizers.items()]
    if isinstance(layer, iqkeras.ActivationQuantizationHolder):
        return [("activation", layer.quantizer)]
    return []


def _load_saved_model(path: str):
    if not os.path.exists(path):
        raise CommandError(f"no such file: {path}")
    try:
        from iqcore import keras as iqkeras
    except ImportError as e:
        raise CommandError(f"the Keras integration (iqcore.keras) is not available: {e}") from None
    loader = getattr(iqkeras, "load_model", None)
    if loader is None:
        raise CommandError("iqcore.keras has no load_model()")
    try:
        return loader(path)
    except Exception as e:  # noqa: BLE001 - any loading failure becomes a one-line reason
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CommandError(f"cannot load {path}: {type(e).__name__}: {reason}") from None


def inspect_rows(model) -> list[tuple[str, str, str, str, str, str]]:
    """``(layer, target, method, bits, axis, params)`` for every quantizer in ``model`` (nested layers too)."""
    from iqcore import keras as iqkeras

    rows = []
    for layer in iqkeras.flatten_layers(model):
        for target, q in _layer_quantizers(layer, iqkeras):
            s = quantizer_summary(q)
            name = layer.layer.name if isinstance(layer, iqkeras.QuantizationWrapper) else layer.name
            rows.append((name, target, s["method"], s["bits"], s["axis"], s["params"]))
    return rows


def _cmd_inspect(args: argparse.Namespace) -> int:
    model = _load_saved_model(args.model)
    rows = inspect_rows(model)
    if not rows:
        print(f"{args.model}: no quantized layers")
        return EXIT_OK
    print(_table(("LAYER", "TARGET", "METHOD", "BITS", "AXIS", "PARAMETERS"), rows))
    return EXIT_OK


# -- iqcore export --------------------------------------------------------------------------------------------
def _cmd_export(args: argparse.Namespace) -> int:
    from iqcore import _registry as registry

    formats = registry.exporters()
    if args.list or args.model is None:
        rows = [(name, info.exporter.suffix, info.distribution, info.exporter.description)
                for name, info in sorted(formats.items())]
        print(_table(("FORMAT", "SUFFIX", "DISTRIBUTION", "DESCRIPTION"), rows))
        return EXIT_OK
    if args.out is None:
        raise CommandError("OUT is missing: give the file to write (iqcore export MODEL OUT --format NAME)")
    if args.format is not None and args.format not in formats:
        raise CommandError(f"unknown format {args.format!r}; installed: {', '.join(sorted(formats)) or 'none'}")
    model = _load_saved_model(args.model)
    from iqcore import keras as iqkeras

    try:
        name = iqkeras.export(model, args.out, format=args.format)
    except ValueError as e:
        raise CommandError(str(e).strip().splitlines()[0]) from None
    print(f"wrote {args.out} ({name}, {os.path.getsize(args.out)} bytes)")
    return EXIT_OK


# -- iqcore convert -------------------------------------------------------------------------------------------
def _cmd_convert(args: argparse.Namespace) -> int:
    if not os.path.exists(args.old):
        raise CommandError(f"no such file: {args.old}")
    if not args.new.endswith((".keras", ".h5")):
        raise CommandError(f"NEW must end in .keras or .h5; got {args.new!r}")
    try:
        from iqcore import keras as iqkeras
        from iqcore.keras import _seed_models as seed
        from iqcore.keras._tflite import export_problem, flatten_layers
    except ImportError as e:
        raise CommandError(f"the Keras integration (iqcore.keras) is not available: {e}") from None
    try:
        if seed.is_seed_model(args.old):
            model, mapped = seed.load_seed_model(args.old)
        else:
            model, mapped = iqkeras.load_model(args.old), []
    except (ValueError, TypeError, OSError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CommandError(f"cannot convert {args.old}: {reason}") from None
    for line in mapped:
        print(f"mapped {line}")
    if not mapped:
        print(f"{args.old}: no seed layers (already an iqcore model)")
    if args.narrow_range:
        moved = seed.narrow_weights(model)
        for m in moved:
            print(f"narrow range: {m}")
        if not moved:
            print("narrow range: no weight on code -128; nothing moved")
    else:
        for layer in flatten_layers(model):
            if isinstance(layer, iqkeras.QuantizationWrapper):
                for name, q in layer.weights_quantizers.items():
                    if "code -128" in (export_problem(layer.quantized_variables()[name], q) or ""):
                        print(f"note: {layer.name}/{name} has weights on code -128: int8 TFLite export refuses it; "
                              "rerun with --narrow-range to move them onto the narrow-range grid")
    model.save(args.new)
    print(f"wrote {args.new} ({os.path.getsize(args.new)} bytes)")
    return EXIT_OK


# -- iqcore compare ------------------------------------------------------------------------------------------
def _cmd_compare(args: argparse.Namespace) -> int:
    if not os.path.exists(args.tflite):
        raise CommandError(f"no such file: {args.tflite}")
    model = _load_saved_model(args.model)
    from iqcore import keras as iqkeras

    if len(model.inputs) != 1:
        raise CommandError(f"{args.model} has {len(model.inputs)} inputs; compare takes models with one input")
    holders = [layer for layer in iqkeras.flatten_layers(model)
               if isinstance(layer, iqkeras.ActivationQuantizationHolder)]
    low, high = -1.0, 1.0
    if holders and holders[0].input is model.inputs[0]:  # the input holder's range
        params = holders[0].quantizer.quantization_params()
        low = float((int(params.qmin) - int(params.zero_point)) * params.scale)
        high = float((int(params.qmax) - int(params.zero_point)) * params.scale)
    shape = [args.samples, *[int(d) for d in model.inputs[0].shape[1:]]]
    x = np.random.default_rng(args.seed).uniform(low, high, shape).astype(np.float32)
    with open(args.tflite, "rb") as f:
        rows = iqkeras.compare(model, f.read(), x)
    table = [(r.layer, "-" if r.tensor is None else r.tensor.split(";")[0][-48:], r.values,
              "-" if r.tensor is None else f"{100 * r.differ / max(r.values, 1):.2f}",
              "-" if r.tensor is None else f"{r.max_steps:g}") for r in rows]
    print(_table(("HOLDER", "TFLITE TENSOR", "VALUES", "% DIFFER", "MAX STEPS"), table))
    first = next((r for r in rows if r.tensor is not None and r.max_steps > 1.0), None)
    unmatched = sum(r.tensor is None for r in rows)
    print(f"\n{len(rows) - unmatched} of {len(rows)} holders matched a tensor of the file ({args.samples} inputs); "
          + (f"first more than one step apart: {first.layer} ({first.max_steps:g} steps)" if first else
             "none is more than one step apart"))
    return EXIT_OK


# -- iqcore demo ----------------------------------------------------------------------------------------------
def _cmd_demo(args: argparse.Namespace) -> int:
    from iqcore import demo

    try:
        demo.run(out_dir=args.out, seed=args.seed, epochs=args.epochs, bits=tuple(args.bits))
    except demo.DemoError as e:
        raise CommandError(str(e)) from None
    return EXIT_OK


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _bits(text: str) -> int:
    value = _positive_int(text)
    if not 2 <= value <= 16:
        raise argparse.ArgumentTypeError(f"{text!r} is outside 2..16")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``iqcore`` argument parser with its three sub-commands."""
    from iqcore import __version__

    parser = _Parser(
        prog="iqcore",
        description="Inference-only quantizers for Keras/TensorFlow: list the installed methods, inspect a "
                    "quantized model, run the demonstration.",
        epilog="examples:\n"
               "  iqcore list --json\n"
               "  iqcore inspect model.keras\n"
               "  iqcore export model.keras model.tflite\n"
               "  iqcore demo --out demo --bits 8 4\n\n"
               "'iqcore COMMAND --help' describes each command. Exit codes: 0 done, 1 failed (one-line reason on "
               "stderr), 2 bad arguments.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"iqcore {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("list", help="list registered quantizers and plugins that failed to load",
                       description="Every registered (method, target): its class and the distribution and "
                                   "version that provide it; then every plugin that failed to load, and why.")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("inspect", help="show the quantized layers of a saved model",
                       description="Load a saved .keras model through iqcore.keras.load_model and print, for "
                                   "each quantizer of each layer: target, method, bits, per-channel axis and a "
                                   "threshold or range summary.")
    p.add_argument("model", metavar="MODEL", help="path to a saved model (.keras)")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("demo", help="train, quantize, save, reload and convert a small CNN",
                       description="Train a small CNN on scikit-learn's bundled digits (no download), quantize "
                                   "weights and activations with each method at each bit width, print float "
                                   "and quantized accuracy and SQNR, save/reload the 8-bit model, convert it "
                                   "to int8 TFLite and plot accuracy against bits. Needs the 'demo' extra "
                                   "(pip install 'iqcore[demo]').")
    p.add_argument("--out", metavar="DIR", default="iqcore-demo",
                   help="folder for the saved model, the TFLite file and the plot (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed for the split and training (default: 0)")
    p.add_argument("--epochs", type=_positive_int, default=30, help="training epochs (default: %(default)s)")
    p.add_argument("--bits", type=_bits, nargs="+", default=[8, 6, 4], metavar="N",
                   help="bit widths to try, each in 2..16 (default: 8 6 4)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("export", help="write a saved quantized model in a deployment format",
                       description="Load a saved .keras model and write it with an exporter registered through "
                                   "the register_exporters hook (int8 TFLite ships with iqcore; plugins add "
                                   "more). Without MODEL, or with --list, list the installed formats.")
    p.add_argument("model", metavar="MODEL", nargs="?", help="path to a saved quantized model (.keras)")
    p.add_argument("out", metavar="OUT", nargs="?", help="the file to write")
    p.add_argument("--format", metavar="NAME", help="the format (default: the one whose suffix OUT has)")
    p.add_argument("--list", action="store_true", help="list the installed formats and exit")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("convert", help="rewrite a model saved with the seed's layers (mct-quantizers) as iqcore's",
                       description="Load a .keras or .h5 file written with mct-quantizers layers (or an iqcore "
                                   "model), map each seed layer and quantizer to iqcore's, print what was mapped, "
                                   "and save the result. Look-up-table quantizers and positional constants are "
                                   "refused, naming the layer.")
    p.add_argument("old", metavar="OLD", help="the saved model (.keras or .h5)")
    p.add_argument("new", metavar="NEW", help="the file to write (.keras or .h5)")
    p.add_argument("--narrow-range", action="store_true",
                   help="move weights on code -128 onto the narrow-range grid (needed for int8 TFLite); prints "
                        "how many weights moved and by how much")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("compare", help="where a quantized model and its int8 TFLite file part ways, layer by layer",
                       description="Run a saved quantized model and its int8 TFLite file on the same random inputs "
                                   "(uniform over the input holder's range) and print, for each activation holder, "
                                   "the file's tensor on the same grid, how many values differ and by how many "
                                   "steps, and the first holder more than one step apart.")
    p.add_argument("model", metavar="MODEL", help="the saved quantized model (.keras)")
    p.add_argument("tflite", metavar="TFLITE", help="its int8 TFLite file")
    p.add_argument("--samples", type=_positive_int, default=8, help="inputs to compare on (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the inputs (default: %(default)s)")
    p.set_defaults(func=_cmd_compare)
    _plugin_commands(sub)
    return parser


def _plugin_commands(sub) -> None:
    """Let every plugin add subcommands through the ``register_commands`` hook; a plugin whose hook fails (a
    name clash included) is reported and skipped."""
    from iqcore import _plugins as plugins

    pm = plugins.get_plugin_manager()
    for impl in pm.hook.register_commands.get_hookimpls():
        before, listed = dict(sub.choices), list(sub._choices_actions)
        try:
            impl.function(subparsers=sub)
            # Python 3.11+ raises on a taken name; 3.10 silently replaces the command.
            taken = [name for name in before if sub.choices.get(name) is not before[name]]
            if taken:
                raise ValueError(f"the command {taken[0]!r} already exists")
        except Exception as e:  # noqa: BLE001 - a plugin's bad command must not break the CLI
            sub.choices.clear()
            sub.choices.update(before)
            sub._choices_actions[:] = listed
            plugins.report_failure(impl.plugin_name, plugins.distribution(impl.plugin_name).name,
                                   f"register_commands failed: {type(e).__name__}: {e}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (the console script exits with it)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args)
    except CommandError as e:
        print(f"iqcore {args.command}: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"iqcore {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
