"""The ``iqcore`` command line: ``list``, ``inspect MODEL`` and ``demo``.

    iqcore list                 # installed methods and targets, and plugins that failed to load
    iqcore inspect model.keras  # each quantized layer of a saved model
    iqcore demo --out DIR       # train, quantize, save, reload and convert a small CNN

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
    from iqcore import plugins, registry

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
def _short(values: list[float]) -> str:
    """``0.5`` for one value, ``[0.25..2] (16 ch)`` for many."""
    if len(values) == 1:
        return f"{values[0]:.6g}"
    return f"[{min(values):.6g}..{max(values):.6g}] ({len(values)} ch)"


def quantizer_summary(quantizer) -> dict[str, str]:
    """The columns ``iqcore inspect`` shows for one quantizer: method, bits, axis and a parameter summary."""
    config = quantizer.get_config()
    per_channel = config.get("per_channel", False)
    axis = config.get("channel_axis") if per_channel else None
    if "threshold" in config:
        params = f"T={_short(list(config['threshold']))}"
        if "signed" in config:
            params += " signed" if config["signed"] else " unsigned"
    elif "min_range" in config and "max_range" in config:
        params = f"min={_short(list(config['min_range']))} max={_short(list(config['max_range']))}"
    else:
        keys = sorted(k for k in config if k not in {"num_bits", "per_channel", "channel_axis", "input_rank",
                                                      "config_version"})
        params = " ".join(keys)
    return {
        "method": type(quantizer).method or type(quantizer).__name__,
        "bits": str(config.get("num_bits", "?")),
        "axis": "per-tensor" if axis is None else str(axis),
        "params": params,
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
    print(_table(("LAYER", "TARGET", "METHOD", "BITS", "AXIS", "THRESHOLD / RANGE"), rows))
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
    return parser


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
