"""Every engine mode once on the present device (a check to run on a GPU, not a test):
colour modes, L-BFGS, Wasserstein-2 with style init, max pooling, blended styles, batch of 2.

    python bench/gpu_modes.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.engine_bench import load
from workers.engine import EngineConfig, RenderItem, StyleEngine


def main() -> None:
    engine = StyleEngine("random:0", "auto")
    content, a, b = (load(n, 256) for n in ("tubingen.jpg", "starry_night.jpg", "wave.jpg"))
    modes = [
        {"color": "luminance"},
        {"color": "histogram"},
        {"optimizer": "lbfgs", "ema": 0.0},
        {"init": "style", "style_loss": "wasserstein"},
        {"init": "noise", "pooling": "max"},
    ]
    for mode in modes:
        started = time.perf_counter()
        items = [RenderItem(content, [(a, 0.7), (b, 0.3)], 1), RenderItem(content, [(b, 1.0)], 2)]
        results = engine.render_batch(items, EngineConfig(start=128, iterations=30, **mode))
        ok = all(torch.isfinite(r.image).all() and r.image.shape == content.shape for r in results)
        losses = {k: round(v, 5) for k, v in results[0].losses.items()}
        print(f"{mode}: {'ok' if ok else 'FAILED'} {time.perf_counter() - started:.2f} s {losses}")


if __name__ == "__main__":
    main()
