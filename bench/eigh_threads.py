"""The W2 loss's per-step eigh on a CPU (not a test): LAPACK on all of the process's threads
against one thread (``workers.engine.losses.eigh``), alone and beside a busy neighbour.

    python bench/eigh_threads.py [--size 256] [--steps 40] [--out bench/results/x.json]

The matrices are a real step's: the five style layers' W2 matrices of tubingen.jpg against
starry_night.jpg at ``--size`` (random:0 weights), grouped by size as the loss groups them.
A step's eigh time is measured ``--steps`` times per mode, the modes interleaved; then again
while a neighbour process keeps one core busy with matmuls (what another render process, or
anything else on the node, does). Reports the median, the 90th percentile and the slowest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.engine_bench import load  # noqa: E402
from workers.engine.losses import Sandwich, StyleTarget, _mixed, eigh, moments  # noqa: E402
from workers.engine.vgg import load_vgg19  # noqa: E402

LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
NEIGHBOUR = (
    "import torch\ntorch.set_num_threads(1)\na = torch.randn(768, 768)\nwhile True:\n    a @ a\n"
)


def step_matrices(size: int) -> list[torch.Tensor]:
    net = load_vgg19("random:0")[0].eval()
    content, style = load("tubingen.jpg", size), load("starry_night.jpg", size)
    with torch.no_grad():
        cf, sf = net(content[None], set(LAYERS), "avg"), net(style[None], set(LAYERS), "avg")
    mats: dict[int, list[torch.Tensor]] = {}
    for name in LAYERS:
        mean, gram = moments(sf[name], torch.float64)
        _, mixed, _ = _mixed(cf[name], StyleTarget(mean, gram, "wasserstein"))
        if isinstance(mixed, Sandwich):
            mixed = mixed.root @ mixed.cov @ mixed.root
        mats.setdefault(mixed.shape[-1], []).append(mixed)
    return [torch.cat(group) for group in mats.values()]


def timings(mats: list[torch.Tensor], steps: int) -> dict[str, dict[str, float]]:
    modes = {"all_threads": torch.linalg.eigh, "one_thread": eigh}
    samples: dict[str, list[float]] = {m: [] for m in modes}
    for fn in modes.values():
        for mat in mats:
            fn(0.5 * (mat + mat.transpose(1, 2)))
    for _ in range(steps):
        for mode, fn in modes.items():
            started = time.perf_counter()
            for mat in mats:
                fn(0.5 * (mat + mat.transpose(1, 2)))
            samples[mode].append(1e3 * (time.perf_counter() - started))
    return {
        mode: {
            "median_ms": round(statistics.median(v), 1),
            "p90_ms": round(sorted(v)[int(0.9 * len(v))], 1),
            "max_ms": round(max(v), 1),
        }
        for mode, v in samples.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    mats = step_matrices(args.size)
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "size": args.size,
        "matrices": [list(m.shape) for m in mats],
        "load_before": os.getloadavg()[0],
        "alone": timings(mats, args.steps),
    }
    neighbour = subprocess.Popen([sys.executable, "-c", NEIGHBOUR])
    try:
        time.sleep(2)
        report["beside_one_busy_process"] = timings(mats, args.steps)
    finally:
        neighbour.kill()
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
