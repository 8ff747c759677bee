"""Loader fuzz over the seed's fixture files (see tests/seed_fuzz.py): config edits, byte flips and truncations
of .keras and .h5 files. Each mutation is refused with ValueError/TypeError/OSError (with a message) or loads;
nothing aborts the process and no other exception escapes. Batches run in subprocesses; set
IQCORE_SEED_FUZZ=1000 (or more) for the full run whose counts docs/robustness.md reports."""

import collections
import json
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "seed_fuzz.py")
TOTAL = int(os.environ.get("IQCORE_SEED_FUZZ", "64"))
BATCH = 100


def run_batch(start, count):
    """RESULT records of mutations start..start+count; a batch whose process dies is restarted after the
    mutation that killed it, which is recorded as 'crashed'."""
    results, i = [], start
    while i < start + count:
        proc = subprocess.run([sys.executable, SCRIPT, "--start", str(i), "--count", str(start + count - i)],
                              capture_output=True, text=True, timeout=1800, check=False,
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        got = [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        results += got
        i += len(got)
        if proc.returncode != 0 and i < start + count:
            results.append({"i": i, "outcome": "crashed", "error": f"exit code {proc.returncode}",
                            "message": proc.stderr[-500:]})
            i += 1
    return results


@pytest.mark.parametrize("start", range(0, TOTAL, BATCH))
def test_fuzzed_seed_files_are_refused_or_load(start):
    results = run_batch(start, min(BATCH, TOTAL - start))
    counts = collections.Counter(r["outcome"] for r in results)
    print(f"mutations {start}..{start + len(results) - 1}: {dict(counts)}")
    bad = [r for r in results if r["outcome"] in ("crashed", "other")]
    assert not bad, bad[:5]
    assert all(r["message"].strip() for r in results if r["outcome"] == "refused")
    assert counts["refused"] and counts["identical"]  # the fuzz reaches both sides
