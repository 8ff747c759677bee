"""Loader fuzzing: mutate the seed's fixture files (config.json / model_config edits, byte flips, truncations of
.keras and .h5), load each through iqcore.load_model, and classify what happened.

    python tests/seed_fuzz.py --start 0 --count 200      # one line "RESULT {json}" per mutation

Outcomes: ``identical`` (loaded, outputs bit-identical), ``changed`` (loaded, the mutation hit a value that is
still valid, e.g. a weight's bytes or a threshold, and outputs differ), ``refused`` (ValueError, TypeError or
OSError at load), ``run_error`` (loaded, then the model refused the reference input, e.g. an edited input
shape), ``other`` (any other exception: a bug). A mutation that kills the process shows as a missing RESULT
line; tests/test_seed_fuzz.py runs batches in subprocesses and reports it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import sys
import tempfile
import zipfile

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
SOURCES = ["cnn_pot.keras", "cnn_pot.h5", "mlp_uniform.keras", "mlp_uniform.h5", "constants.keras", "constants.h5"]
KINDS = ["config", "config", "flip", "truncate"]
POOL = [None, True, False, 0, -1, 1, 2, 3, 8, 17, 8.5, -0.5, 1e38, 2.0**-140, float("nan"), float("inf"), "",
        "x", "Conv2D", "KerasQuantizationWrapper", "WeightsLUTSymmetricInferableQuantizer", [], [1.0], [0.0, -1.0],
        {}, {"class_name": "Dense", "config": {}}, [[1, 2]], "1" * 1000]


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def edit_config(config, rng: random.Random) -> str:
    """Apply one random edit to ``config`` in place; returns what was done."""
    paths = [p for p in _paths(config) if p]
    path = rng.choice(paths)
    parent = config
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    op = rng.choice(["replace", "replace", "delete", "insert", "numeric"])
    old = parent[key]
    if op == "delete":
        del parent[key]
    elif op == "insert" and isinstance(parent, dict):
        parent["fuzz_" + str(rng.randrange(100))] = rng.choice(POOL)
    elif op == "numeric" and isinstance(old, (int, float)) and not isinstance(old, bool):
        parent[key] = rng.choice([old * 2, -old, old + 1, old / 3, 0, old * 1e30])
    else:
        op = "replace"
        parent[key] = rng.choice(POOL)
    return f"{op} {'/'.join(map(str, path))[-120:]}"


def mutate(i: int, workdir: str) -> tuple[str, str, str]:
    """Write mutation ``i`` into ``workdir``; returns (path, source name, description)."""
    rng = random.Random(7919 * i + 17)
    source = SOURCES[i % len(SOURCES)]
    kind = KINDS[(i // len(SOURCES)) % len(KINDS)]
    src = os.path.join(FIXTURES, source)
    dst = os.path.join(workdir, f"m{i}{os.path.splitext(source)[1]}")
    data = bytearray(open(src, "rb").read())
    if kind == "flip":
        n = rng.choice([1, 1, 2, 4, 16])
        for _ in range(n):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        open(dst, "wb").write(data)
        return dst, source, f"flip {n} bits"
    if kind == "truncate":
        cut = rng.randrange(len(data))
        open(dst, "wb").write(data[:cut])
        return dst, source, f"truncate to {cut} of {len(data)} bytes"
    if source.endswith(".keras"):
        with zipfile.ZipFile(io.BytesIO(bytes(data))) as zin:
            config = json.loads(zin.read("config.json"))
            what = edit_config(config, rng)
            with zipfile.ZipFile(dst, "w") as zout:
                for item in zin.infolist():
                    body = json.dumps(config).encode() if item.filename == "config.json" else zin.read(item)
                    zout.writestr(item, body)
    else:
        import h5py

        shutil.copyfile(src, dst)
        with h5py.File(dst, "r+") as f:
            config = json.loads(f.attrs["model_config"])
            what = edit_config(config, rng)
            f.attrs["model_config"] = json.dumps(config)
    return dst, source, f"config: {what}"


def run(start: int, count: int) -> None:
    import numpy as np
    import tensorflow as tf

    import iqcore

    expected = {name: np.load(os.path.join(FIXTURES, name.split(".")[0] + ".npz")) for name in SOURCES}
    with tempfile.TemporaryDirectory() as workdir:
        for i in range(start, start + count):
            path, source, what = mutate(i, workdir)
            result = {"i": i, "source": source, "mutation": what}
            try:
                model = iqcore.load_model(path)
            except (ValueError, TypeError, OSError) as e:
                result.update(outcome="refused", error=type(e).__name__, message=str(e)[:300])
            except Exception as e:  # noqa: BLE001 - the fuzz records anything else as a bug
                result.update(outcome="other", error=type(e).__name__, message=str(e)[:300])
            else:
                x, y = expected[source]["x"], expected[source]["y"]
                try:
                    got = np.asarray(model(x), np.float32)
                except (ValueError, TypeError, tf.errors.OpError) as e:
                    result.update(outcome="run_error", error=type(e).__name__, message=str(e)[:200])
                else:
                    same = got.shape == y.shape and np.array_equal(got.view(np.uint32), y.view(np.uint32))
                    result.update(outcome="identical" if same else "changed")
                tf.keras.backend.clear_session()
            finally:
                if os.path.exists(path):
                    os.remove(path)
            print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--count", type=int, default=100)
    args = parser.parse_args()
    run(args.start, args.count)
    sys.exit(0)
