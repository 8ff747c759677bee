"""Draw each built-in quantizer's transfer function (output against input) for docs/concepts.md.

    python docs/scripts/transfer_plots.py docs/img

writes ``transfer_pot.png``, ``transfer_symmetric.png`` and ``transfer_uniform.png``: for each method, the
weights quantizer (signed) and the activation quantizer at 3 bits, so that every step is visible. The
quantizers come from the installed plugins through ``iqcore.get_quantizer``.
"""

import os
import sys

import matplotlib.pyplot as plt
import numpy as np

import iqcore

plt.switch_backend("Agg")

BITS = 3
CASES = {
    "pot": [
        ("weights, T = 1", dict(target="weights", num_bits=BITS, threshold=[1.0])),
        ("activation, T = 1, unsigned", dict(target="activation", num_bits=BITS, threshold=[1.0], signed=False)),
    ],
    "symmetric": [
        ("weights, T = 0.8", dict(target="weights", num_bits=BITS, threshold=[0.8])),
        ("activation, T = 0.8, unsigned", dict(target="activation", num_bits=BITS, threshold=[0.8], signed=False)),
    ],
    "uniform": [
        ("weights, [-0.45, 1.0]", dict(target="weights", num_bits=BITS, min_range=[-0.45], max_range=[1.0])),
        ("activation, [0.2, 1.0] (moved to [0, 1])",
         dict(target="activation", num_bits=BITS, min_range=[0.2], max_range=[1.0])),
    ],
}


def draw(method: str, out_dir: str) -> str:
    x = np.linspace(-1.5, 1.5, 3001, dtype=np.float32)
    fig, axes = plt.subplots(1, len(CASES[method]), figsize=(9, 3.6), sharey=True)
    for ax, (title, params) in zip(axes, CASES[method], strict=True):
        params = dict(params)
        q = iqcore.get_quantizer(method, params.pop("target"), **params)
        y = np.asarray(q(x))
        ax.plot(x, x, color="lightgray", linewidth=1, label="identity")
        ax.step(x, y, where="post", linewidth=1.8, label=f"{method}, {BITS} bits")
        ax.set(title=title, xlabel="input x")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    axes[0].set_ylabel("output q(x)")
    fig.suptitle(f"Transfer function: {method}")
    fig.tight_layout()
    path = os.path.join(out_dir, f"transfer_{method}.png")
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)
    return path


def main(argv: list[str]) -> int:
    out_dir = argv[1] if len(argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "img")
    os.makedirs(out_dir, exist_ok=True)
    for method in CASES:
        print(draw(method, out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
