"""Benchmark (not a test): quality of each preset and method under held-out networks.

    python bench/quality.py [--size 128] [--budget 100] [--device cpu] [--seconds S]

For fixed content/style pairs from ../shared/images, renders the textbook single-scale Gatys
loop, `draft`, `standard`, `high` and the sliced-Wasserstein method, and scores every output
with networks the engine never optimises against: a VGG19 with another seed, and a ResNet-18
(another architecture). Style distance: the relative Gaussian W2 and the sliced W2 (fixed
directions) of the output's features against the style's, averaged over layers. Content
distance: the relative feature error against the content at a middle layer.

Budgets: on the CPU every method gets the same pixel-iterations (the same pyramid and
iterations; the single-scale loop as many full-size steps as that costs). With --seconds, every
method gets the same wall time instead (iterations calibrated from a short run): use that on
a GPU. Writes bench/results/quality-<device>.json and the side-by-side grid
docs/quality-grid-<device>.jpg (rows: pairs; columns: content, style, then each method).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.params import RenderParams  # noqa: E402
from workers.engine import EngineConfig, RenderItem, StyleEngine  # noqa: E402
from workers.engine.losses import StyleTarget, moments, wasserstein2  # noqa: E402
from workers.engine.vgg import IMAGENET_MEAN, IMAGENET_STD, load_vgg19  # noqa: E402
from workers.images import to_image, to_tensor  # noqa: E402

IMAGES = ROOT.parent / "shared" / "images"
PAIRS = [
    ("content/tubingen.jpg", "style/starry_night.jpg"),
    ("content/golden_gate.jpg", "style/wave.jpg"),
    ("content/chicago.jpg", "style/composition_vii.jpg"),
]
METHODS = ("textbook", "draft", "standard", "high", "sliced")


def picture(name: str, side: int) -> torch.Tensor:
    img = Image.open(IMAGES / name).convert("RGB")
    img.thumbnail((side, side), Image.Resampling.LANCZOS)
    return to_tensor(img)


def config_of(method: str, size: int, budget: int) -> EngineConfig:
    """Each preset's own settings over one shared pyramid (equal pixel-iterations)."""
    if method == "textbook":  # Gatys et al.: one scale, Gram loss, plain Adam from the content
        full = sum(
            n * (s / size) ** 2 for s, n in config_of("standard", size, budget).schedule(size)
        )
        return EngineConfig(start=size, iterations=max(1, round(full)), ema=0.0)
    preset = "standard" if method == "sliced" else method
    params = RenderParams(preset=preset, sizes=[size]).resolved()
    base = EngineConfig.from_params(params)  # one pyramid for all: 2 ** 0.5 steps from size/2
    config = replace(base, start=size // 2, ratio=2**0.5, iterations=budget)
    return replace(config, style_loss="sliced") if method == "sliced" else config


class HeldOut:
    """Feature extractors the engine never optimises against."""

    def __init__(self, device: torch.device):
        import torchvision

        self.vgg = load_vgg19("random:7")[0].to(device).eval()
        torch.manual_seed(11)
        self.resnet = torchvision.models.resnet18(weights=None).to(device).eval()
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    @torch.no_grad()
    def features(self, image: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        vgg = self.vgg(
            image[None], {"relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1", "relu4_2"}
        )
        net, x = self.resnet, (image[None] - self.mean) / self.std
        res = {"stem": net.relu(net.bn1(net.conv1(x)))}
        x = net.maxpool(res["stem"])
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = res[name] = getattr(net, name)(x)
        res_style = [res[k] for k in ("stem", "layer1", "layer2", "layer3", "layer4")]
        return {
            "vgg19-seed7": {
                "style": [vgg[k] for k in sorted(vgg) if k != "relu4_2"],
                "content": vgg["relu4_2"],
            },
            "resnet18": {"style": res_style, "content": res["layer3"]},
        }


def sliced_distance(feat: torch.Tensor, style: torch.Tensor, directions: int = 256) -> float:
    """Relative sliced W2 on fixed directions (seed 123), quantiles matched by interpolation."""
    x, y = (f[0].flatten(1).T.double() for f in (feat, style))
    gen = torch.Generator().manual_seed(123)
    d = torch.randn(x.shape[1], directions, generator=gen, dtype=torch.float64).to(x.device)
    d /= d.norm(dim=0, keepdim=True)
    px, py = (x @ d).sort(0).values, (y @ d).sort(0).values
    at = (torch.arange(len(px), dtype=torch.float64, device=x.device) + 0.5) / len(px)
    pos = (at * len(py) - 0.5).clamp(0, len(py) - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp_max(len(py) - 1)
    frac = (pos - lo).unsqueeze(1)
    qy = py[lo] * (1 - frac) + py[hi] * frac
    return float((px - qy).square().mean() * x.shape[1] / y.square().sum(1).mean())


def scores(held: HeldOut, out: torch.Tensor, content: torch.Tensor, style: torch.Tensor) -> dict:
    fo, fc, fs = held.features(out), held.features(content), held.features(style)
    result = {}
    for net in fo:
        w2 = [
            float(wasserstein2(o, StyleTarget(*moments(s, torch.float64), "wasserstein"))[0])
            for o, s in zip(fo[net]["style"], fs[net]["style"], strict=True)
        ]
        sw = [
            sliced_distance(o, s) for o, s in zip(fo[net]["style"], fs[net]["style"], strict=True)
        ]
        co, cc = fo[net]["content"].double(), fc[net]["content"].double()
        result[net] = {
            "style_w2": sum(w2) / len(w2),
            "style_sliced": sum(sw) / len(sw),
            "content": float((co - cc).square().mean() / cc.square().mean()),
        }
    return result


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
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--budget", type=int, default=100, help="iterations per scale")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, help="equal wall time per render instead")
    parser.add_argument("--weights", default="random:0", help="what the engine optimises with")
    args = parser.parse_args()
    device = torch.device(args.device)
    engine = StyleEngine(args.weights, device)
    held = HeldOut(device)
    report: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores"
        + (f", {torch.cuda.get_device_name()}" if device.type == "cuda" else ", no GPU"),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "engine_weights": args.weights,
        "held_out": ["vgg19 random:7", "resnet18 (torchvision, seed 11, untrained)"],
        "size": args.size,
        "budget": f"{args.seconds} s each" if args.seconds else "equal pixel-iterations",
        "pairs": {},
    }
    rows = []
    for content_name, style_name in PAIRS:
        content, style = picture(content_name, args.size), picture(style_name, args.size)
        item = RenderItem(content, [(style, 1.0)])
        row, pair = [content, style], {}
        for method in METHODS:
            config = config_of(method, args.size, args.budget)
            if args.seconds:  # calibrate: iterations that fill the time on this device
                probe = replace(config, iterations=max(2, config.iterations_at(0, 1) // 10))
                started = time.perf_counter()
                engine.render(item, probe)
                rate = (time.perf_counter() - started) / sum(
                    n for _, n in probe.schedule(args.size)
                )
                per_scale = len(config.schedule(args.size))
                config = replace(config, iterations=max(1, round(args.seconds / rate / per_scale)))
            started = time.perf_counter()
            result = engine.render(item, config)
            took = time.perf_counter() - started
            pair[method] = {
                "seconds": round(took, 2),
                "schedule": result.schedule,
                **scores(held, result.image.to(device), content.to(device), style.to(device)),
            }
            row.append(result.image)
            print(content_name, style_name, method, json.dumps(pair[method]), flush=True)
        report["pairs"][f"{content_name} x {style_name}"] = pair
        rows.append(row)
    means = {}
    for method in METHODS:
        means[method] = {
            f"{net}.{k}": sum(p[method][net][k] for p in report["pairs"].values()) / len(PAIRS)
            for net in ("vgg19-seed7", "resnet18")
            for k in ("style_w2", "style_sliced", "content")
        }
    report["means"] = means
    name = "cuda" if device.type == "cuda" else "cpu-2core"
    out = ROOT / "bench" / "results" / f"quality-{name}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    grid(rows, ["content", "style", *METHODS], args.size).save(
        ROOT / "docs" / f"quality-grid-{name}.jpg", quality=88, optimize=True
    )
    print(json.dumps(means, indent=1))


if __name__ == "__main__":
    main()
