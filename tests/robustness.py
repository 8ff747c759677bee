"""Every bad input of issue 6 as data: what is tried, and the parameter its refusal must name.

``python tests/robustness.py`` runs each case and writes docs/robustness.md (the observed behaviour);
tests/test_robustness.py asserts the same cases. A case either must be refused with a TypeError or
ValueError whose message names ``param`` (and the offending value), or must return a result equal to the
NumPy reference (``returns``).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable

import numpy as np

import iqcore

W = dict(num_bits=8, threshold=[1.0])
PC = dict(num_bits=8, threshold=[1.0, 2.0, 3.0], per_channel=True, channel_axis=-1, input_rank=4)
A = dict(num_bits=8, threshold=[1.0], signed=True)
U = dict(num_bits=8, min_range=[-1.0], max_range=[1.0])


@dataclasses.dataclass
class Case:
    area: str
    tried: str
    run: Callable[[], object]
    param: str | None = None  # None: must return the reference result
    value: str | None = None  # text the message must contain besides the parameter (defaults to none)


def q(method, target, **params):
    return lambda: iqcore.get_quantizer(method, target, **params)


def call(quantizer_params, x, method="symmetric", target="weights"):
    """Call a quantizer on ``x``; returns (output, NumPy reference) so that the outcome can be checked."""
    def run():
        import tensorflow as tf

        from iqcore import _grid as g

        quantizer = iqcore.get_quantizer(method, target, **quantizer_params)
        got = quantizer(tf.constant(x))
        return got, g.fake_quant(x, quantizer.grid)
    return run


def from_config(method, target, base, **changes):
    def run():
        cls = iqcore._registry.get_class(method, target)
        config = {**cls(**base).get_config(), **changes}
        for k, v in list(changes.items()):
            if v is DELETE:
                del config[k]
        return cls.from_config(config)
    return run


DELETE = object()


def unknown_channels_at_trace_time():
    import tensorflow as tf

    quantizer = iqcore.get_quantizer("symmetric", "weights", **PC)
    fn = tf.function(quantizer, input_signature=[tf.TensorSpec([None] * 4, tf.float32)])
    return fn(tf.zeros((1, 2, 2, 5)))


CASES: list[Case] = []
for value in [0, 1, 17, 64, -1, True, 8.0, 8.5, "8", [8]]:
    for method, target, base in [("symmetric", "weights", W), ("pot", "activation", A), ("uniform", "weights", U)]:
        CASES.append(Case("num_bits", f"{method}/{target} num_bits={value!r}",
                          q(method, target, **{**base, "num_bits": value}), "num_bits", repr(value)))
for name in ["narrow_range", "per_channel"]:
    for value in [1, "yes", None]:
        CASES.append(Case("flags", f"{name}={value!r}", q("symmetric", "weights", **{**W, name: value}), name,
                          repr(value)))
for value in [1, "no"]:
    CASES.append(Case("flags", f"signed={value!r}", q("pot", "activation", **{**A, "signed": value}), "signed",
                      repr(value)))
THRESHOLDS = [0.0, -1.0, math.nan, math.inf, -math.inf, 2.0**-140, 2.0**128, 3.4e38, [], [[1.0]], "1.0", ["a"],
              [None], [1.0, 2.0]]
for value in THRESHOLDS:
    for method in ["symmetric", "pot"]:
        t = value if isinstance(value, (list, str)) else [value]
        CASES.append(Case("thresholds", f"{method} threshold={t!r}", q(method, "weights", **{**W, "threshold": t}),
                          "threshold"))
for value in [3.0, 0.3, 2.0**100 + 2.0**50, 1e300]:
    CASES.append(Case("thresholds", f"pot threshold=[{value!r}] (not a power of two)",
                      q("pot", "weights", **{**W, "threshold": [value]}), "threshold", "not a power of two"))
for low, high in [([1.0], [1.0]), ([2.0], [1.0]), ([math.nan], [1.0]), ([-1.0], [math.nan]),
                  ([-1.0, -2.0], [1.0, 2.0]), ([-3e38], [3e38]), ([-1e-44], [1e-44])]:
    param = "max_range" if math.isnan(high[0]) else "min_range"
    CASES.append(Case("uniform ranges", f"min_range={low!r}, max_range={high!r}",
                      q("uniform", "weights", num_bits=8, min_range=low, max_range=high), param))
for axis, rank, param in [(4, 4, "channel_axis"), (-5, 4, "channel_axis"), (None, 4, "channel_axis"),
                          (0, None, "input_rank"), (0, 0, "input_rank"), (1.5, 4, "channel_axis")]:
    CASES.append(Case("layout", f"per_channel=True, channel_axis={axis!r}, input_rank={rank!r}",
                      q("symmetric", "weights", num_bits=8, threshold=[1.0], per_channel=True, channel_axis=axis,
                        input_rank=rank), param))
CASES += [
    Case("tensors", "int32 tensor", call(W, np.zeros(3, np.int32)), "dtype", "int32"),
    Case("tensors", "bool tensor", call(W, np.zeros(3, bool)), "dtype", "bool"),
    Case("tensors", "string", call(W, "abc"), "dtype", "string"),
    Case("tensors", "rank-0 tensor, per-channel quantizer", call(PC, np.float32(1.0)), "rank", "input_rank"),
    Case("tensors", "rank-3 tensor, input_rank 4", call(PC, np.zeros((2, 2, 3), np.float32)), "rank",
         "input_rank"),
    Case("tensors", "5 channels, 3 thresholds", call(PC, np.zeros((1, 2, 2, 5), np.float32)), "channels", "3"),
    Case("tensors", "empty tensor (0, 2, 2, 3)", call(PC, np.zeros((0, 2, 2, 3), np.float32))),
    Case("tensors", "rank-0 tensor, per-tensor quantizer", call(W, np.float32(0.3))),
    Case("tensors", "NaN and ±inf values", call(W, np.array([np.nan, np.inf, -np.inf], np.float32))),
    Case("tensors", "channel dimension unknown until run time, 5 instead of 3", unknown_channels_at_trace_time,
         "channel dimension"),
    Case("configs", "unknown key 'thresold'", from_config("symmetric", "weights", W, thresold=[1.0]), "thresold"),
    Case("configs", "missing key 'threshold'", from_config("symmetric", "weights", W, threshold=DELETE), "threshold"),
    Case("configs", "num_bits '8' (wrong type)", from_config("pot", "weights", W, num_bits="8"), "num_bits"),
    Case("configs", "threshold NaN", from_config("pot", "weights", W, threshold=[math.nan]), "threshold"),
    Case("configs", "config_version 2 (a future format)", from_config("uniform", "weights", U, config_version=2),
         "config_version"),
]


@dataclasses.dataclass
class Outcome:
    refused: bool
    named: bool
    text: str
    wrong_output: bool


def observe(case: Case) -> Outcome:
    """Run one case: refused (with the parameter named?), or returned (equal to the reference?)."""
    try:
        result = case.run()
    except (TypeError, ValueError) as e:
        text = f"{type(e).__name__}: {e}"
        needles = [case.param] + ([case.value] if case.value else []) if case.param else []
        return Outcome(True, bool(needles) and all(n in str(e) for n in needles), text, False)
    except Exception as e:  # noqa: BLE001 - a run-time TF error is an outcome to report, not to hide
        text = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return Outcome(True, bool(case.param) and case.param in str(e), text, False)
    if case.param is not None:
        return Outcome(False, False, f"returned {result!r}", True)
    got, want = result
    got = np.asarray(got, np.float32)
    same = got.shape == want.shape and bool(np.all((got == want) | (np.isnan(got) & np.isnan(want))))
    return Outcome(False, False, f"returned shape {got.shape}, {'equal to' if same else 'DIFFERENT from'} the "
                   "reference", not same)


def markdown() -> str:
    rows = ["| area | input tried | observed |", "|---|---|---|"]
    refused = named = wrong = 0
    for case in CASES:
        out = observe(case)
        refused += out.refused
        named += out.named
        wrong += out.wrong_output
        text = out.text.replace("|", "\\|").replace("\n", " ")
        if len(text) > 160:
            text = text[:157] + "..."
        rows.append(f"| {case.area} | `{case.tried}` | {text} |")
    expected_refusals = sum(c.param is not None for c in CASES)
    head = (f"Inputs tried: {len(CASES)}; expected refusals: {expected_refusals}; refused: {refused}; refused with "
            f"the parameter named: {named}; crashes: 0 (the run completed); silent wrong outputs: {wrong}.\n")
    return head + "\n" + "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown())
    sys.exit(0)
