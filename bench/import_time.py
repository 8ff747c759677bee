"""Time of ``import iqcore`` plus plugin discovery on top of ``import tensorflow``, in this fresh process.

Run by ``run.py`` once per sample. Prints one JSON line.
"""

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

t0 = time.perf_counter()
import tensorflow  # noqa: E402,F401

t1 = time.perf_counter()
import iqcore  # noqa: E402

iqcore.list_quantizers()  # loads every plugin through its entry point
t2 = time.perf_counter()
print(json.dumps({"tensorflow_ms": (t1 - t0) * 1e3, "iqcore_ms": (t2 - t1) * 1e3}))
