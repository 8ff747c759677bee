"""The calibration pass of :func:`iqcore.keras.quantize_model`: one forward pass of a float model over the
representative data, keeping running statistics of chosen tensors.

For each layer output that gets an activation quantizer it keeps the smallest and largest value, the mean and, for
the strategies that need more than the range, a random sample of the values; for each layer input that bias
correction needs, the mean of every channel.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import tensorflow as tf

from iqcore import calibration
from iqcore.keras._graph import input_names, nodes

keras = tf.keras


def input_batches(data):
    """Yield lists of numpy arrays (one per model input) from an array, a tf.data.Dataset or an iterable."""
    if isinstance(data, (np.ndarray, tf.Tensor)):
        data = [data]
    for batch in data:
        if isinstance(batch, dict):
            raise TypeError("representative_data batches must be arrays or lists of arrays; got a dict")
        if isinstance(batch, (list, tuple)):
            yield [np.asarray(b) for b in batch]
        else:
            yield [np.asarray(batch)]


class Sampler:
    """:func:`iqcore.calibration.subsample` with the drawn positions kept per size: many tensors of a calibration
    batch have the same size, and the draw depends only on the size and the seed.

    Each batch draws with its own seed, so only the positions of the latest seed are kept, and those of seed 0
    (the draw from the samples of all batches, once per tensor after the pass).
    """

    def __init__(self):
        self.positions: dict[int, dict[int, np.ndarray | None]] = {0: {}}

    def __call__(self, values: np.ndarray, seed: int = 0) -> np.ndarray:
        """The values ``calibration.subsample(values, calibration.MAX_SAMPLES, seed)`` returns."""
        values = np.asarray(values).reshape(-1)
        if seed not in self.positions:
            self.positions = {0: self.positions[0], seed: {}}
        kept = self.positions[seed]
        if values.size not in kept:
            drawn = calibration.subsample(np.arange(values.size), calibration.MAX_SAMPLES, seed)
            kept[values.size] = None if drawn.size == values.size else drawn  # None: all of them, in order
        positions = kept[values.size]
        return values if positions is None else values[positions]


@dataclasses.dataclass
class Observed:
    """Running statistics of one tensor over the representative data."""

    low: float = np.inf
    high: float = -np.inf
    total: float = 0.0
    count: int = 0
    channel_sum: np.ndarray | None = None
    channel_count: int = 0
    samples: list = dataclasses.field(default_factory=list)
    sampler: Sampler = dataclasses.field(default_factory=Sampler)

    def add(self, values: np.ndarray, keep_samples: bool, channel_means: bool, seed: int) -> None:
        self.low = min(self.low, float(values.min()))
        self.high = max(self.high, float(values.max()))
        self.total += float(values.sum(dtype=np.float64))
        self.count += values.size
        if channel_means and values.ndim >= 2:
            flat = values.reshape(-1, values.shape[-1])
            sums = flat.sum(axis=0, dtype=np.float64)
            self.channel_sum = sums if self.channel_sum is None else self.channel_sum + sums
            self.channel_count += flat.shape[0]
        if keep_samples:
            self.samples.append(self.sampler(values, seed))

    def observation(self, fixed=None) -> calibration.ActivationObservation:
        if fixed is not None:
            return calibration.ActivationObservation(fixed[0], fixed[1], fixed_range=True)
        samples = self.sampler(np.concatenate(self.samples)) if self.samples else np.zeros(0, np.float32)
        return calibration.ActivationObservation(self.low, self.high, samples, self.total / max(self.count, 1))

    def channel_mean(self) -> np.ndarray | None:
        return None if self.channel_sum is None else self.channel_sum / max(self.channel_count, 1)


class Progress:
    """A Keras progress bar over the calibration batches, shown when ``verbose`` and the pass takes a while."""

    DELAY = 2.0

    def __init__(self, verbose: int, total: int | None):
        self.verbose, self.total, self.start, self.bar = verbose, total, time.perf_counter(), None

    def update(self, done: int) -> None:
        if not self.verbose:
            return
        if self.bar is None and time.perf_counter() - self.start > self.DELAY:
            self.bar = keras.utils.Progbar(self.total, unit_name="batch")
        if self.bar is not None:
            self.bar.update(done)


def observe(model, outputs: list[str], inputs_of: list[str], data, keep_samples: bool, verbose: int
             ) -> tuple[dict[str, Observed], dict[str, Observed]]:
    """One pass over ``data``: statistics of the named layers' outputs (a model input's name for that input)
    and of the inputs of the layers in ``inputs_of`` (with per-channel means, for bias correction)."""
    by_name = {layer.name: layer for layer in nodes(model)}
    names = input_names(model)

    def tensor(n):
        return model.inputs[names.index(n)] if n in names else by_name[n].output

    tensors = [tensor(n) for n in outputs] + [by_name[n].input for n in inputs_of]
    probe_inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    probe = keras.Model(probe_inputs, tensors)
    sampler = Sampler()
    seen_out = {n: Observed(sampler=sampler) for n in outputs}
    seen_in = {n: Observed(sampler=sampler) for n in inputs_of}
    slots = [seen_out[n] for n in outputs] + [seen_in[n] for n in inputs_of]
    total = len(data) if hasattr(data, "__len__") and not isinstance(data, (np.ndarray, tf.Tensor)) else None
    progress = Progress(verbose, total)
    batches = 0
    for batches, batch in enumerate(input_batches(data), start=1):
        outs = probe(batch if len(batch) > 1 else batch[0], training=False)
        if not isinstance(outs, (list, tuple)):
            outs = [outs]
        for i, (slot, out) in enumerate(zip(slots, outs, strict=True)):
            slot.add(np.asarray(out), keep_samples and i < len(outputs), i >= len(outputs), seed=batches)
        progress.update(batches)
    if not batches:
        raise ValueError("representative_data is empty; allowed: at least one batch of model inputs")
    return seen_out, seen_in
