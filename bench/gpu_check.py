"""The prepared GPU check (not a test): one run on a lent card, under 8 minutes on one H100.

    python bench/gpu_check.py                   # on the card: JSON + the table in performance.md
    python bench/gpu_check.py --dry-run         # on this CPU, tiny sizes: the script end to end

It measures, naming the card it ran on:

1. each preset's step against the raw step (VGG19 forward and input gradient of Gram losses,
   bf16, channels_last: what any Gatys iteration must do) at 512 and 1024 px, batch 1 and 8,
   the engine eager and captured as a CUDA graph (difference of two runs of one scale, so set-up
   and capture cancel);
2. renders per hour of each preset at 512 px in batches of 8, and `standard` at 1024 px alone;
3. peak GPU memory of each of those;
4. one `standard` step under ``torch.cuda.set_sync_debug_mode("error")`` (any host sync in the
   step raises);
5. the W2 square root on the card (Newton-Schulz, float64) against float64 eigh on the same
   features: value and gradient cosine per layer, batch 1 and 8.

Every section is timed against a deadline (--budget seconds, 420 by default) and the ones left
when it runs out are recorded as skipped, never silently dropped. Results go to
bench/results/gpu-check-<card>.json after every section, and a markdown table between the
``gpu-check`` markers of docs/performance.md (``--docs``; the dry run writes no docs unless
given a path). Random VGG19 weights (``random:0``): speed does not depend on their values.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.engine_bench import gram_step, load  # noqa: E402
from common.params import PRESETS as PARAMS  # noqa: E402
from common.params import RenderParams  # noqa: E402
from workers.engine import EngineConfig, RenderItem, StyleEngine  # noqa: E402
from workers.engine.losses import StyleTarget, moments, wasserstein2  # noqa: E402

PRESETS = {n: EngineConfig.from_params(RenderParams(preset=n).resolved()) for n in PARAMS}
START, END = "<!-- gpu-check:start -->", "<!-- gpu-check:end -->"
LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
STYLES = ["starry_night.jpg", "wave.jpg", "shipwreck.jpg", "composition_vii.jpg"] * 2


class Deadline:
    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def card(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"device": "cpu", "name": platform.processor() or platform.machine()}
    props = torch.cuda.get_device_properties(device)
    return {
        "device": "cuda",
        "name": torch.cuda.get_device_name(device),
        "memory_gib": round(props.total_memory / 2**30, 1),
        "capability": f"{props.major}.{props.minor}",
        "cuda": torch.version.cuda,
    }


def items_for(size: int, batch: int) -> list[RenderItem]:
    content = load("tubingen.jpg", size)
    styles = STYLES[:batch]
    return [RenderItem(content, [(load(s, size), 1.0)], seed=i) for i, s in enumerate(styles)]


def timed_render(engine: StyleEngine, items, config) -> float:
    sync(engine.device)
    started = time.perf_counter()
    engine.render_batch(items, config)
    sync(engine.device)
    return time.perf_counter() - started


def step_ms(engine: StyleEngine, items, config, short: int, long: int) -> float:
    """Milliseconds per step at one scale: the optimisation loop alone (targets and set-up
    left out) timed at two lengths, both past the graph's warm-up and capture, so those
    cancel in the difference; the better of two tries."""
    one = replace(config, start=max(items[0].content.shape[-2:]))
    adam, spent = engine._adam, []

    def timed(*args, **kwargs):
        sync(engine.device)
        started = time.perf_counter()
        adam(*args, **kwargs)
        sync(engine.device)
        spent.append(time.perf_counter() - started)

    engine._adam = timed  # type: ignore[method-assign]
    try:
        engine.render_batch(items, replace(one, iterations=short))  # shapes, autotuning
        tries = []
        for _ in range(2):
            engine.render_batch(items, replace(one, iterations=long))
            engine.render_batch(items, replace(one, iterations=short))
            tries.append(spent[-2] - spent[-1])
    finally:
        engine._adam = adam  # type: ignore[method-assign]
    return 1e3 * min(tries) / (long - short)


def raw_ms(engine: StyleEngine, size: int, batch: int, repeat: int) -> float:
    x = torch.rand(batch, 3, size * 3 // 4, size, device=engine.device)
    step = gram_step(engine.net, x.contiguous(memory_format=engine.memory_format))
    for _ in range(3):
        step()
    sync(engine.device)
    started = time.perf_counter()
    for _ in range(repeat):
        step()
    sync(engine.device)
    return 1e3 * (time.perf_counter() - started) / repeat


def steps_section(engines, sizes, batches, short, long, report, deadline) -> None:
    rows = report.setdefault("steps", [])
    for size in sizes:
        for batch in batches:
            if deadline.left() < 30:
                rows.append({"size": size, "batch": batch, "skipped": "out of time"})
                continue
            items = items_for(size, batch)
            raw = raw_ms(engines["captured"], size, batch, repeat=max(3, long // 2))
            row = {"size": size, "batch": batch, "raw_ms": raw, "presets": {}}
            for name, config in PRESETS.items():
                entry = {}
                for mode, engine in engines.items():
                    ms = step_ms(engine, items, config, short, long)
                    entry[f"{mode}_ms"], entry[f"{mode}_ratio"] = ms, ms / raw
                row["presets"][name] = entry
            rows.append(row)
            print(json.dumps(row), flush=True)


def peak(engine: StyleEngine) -> float | None:
    if engine.device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(engine.device) / 2**30


def reset_peak(engine: StyleEngine) -> None:
    if engine.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(engine.device)


def renders_section(engine, size, batch, big, shorten, report, deadline) -> None:
    out = report.setdefault("renders", {})
    jobs = [(name, size, batch) for name in PRESETS] + [("standard", big, 1)]
    for name, side, count in jobs:
        key = f"{name}_{side}px_batch{count}"
        if deadline.left() < 20:
            out[key] = {"skipped": "out of time"}
            continue
        config = shorten(PRESETS[name])
        items = items_for(side, count)
        engine.render_batch(items, replace(config, iterations=6))  # shapes and autotuning
        reset_peak(engine)
        seconds = timed_render(engine, items, config)
        out[key] = {
            "seconds": seconds,
            "per_render": seconds / count,
            "renders_per_hour": 3600 * count / seconds,
            "iterations": [n for _, n in config.schedule(side)],
            "peak_gib": peak(engine),
        }
        print(key, json.dumps(out[key]), flush=True)


def sync_debug_section(engine: StyleEngine, size: int, report: dict) -> None:
    """Three eager steps of `standard` with CUDA's sync debug mode on "error" inside the step
    only (the targets' eigh and the loss read-back after the loop are per scale)."""
    if engine.device.type != "cuda":
        report["sync_debug"] = {"skipped": "needs CUDA (the fake-CUDA test covers the CPU)"}
        return
    adam = engine._adam

    def strict(*args, **kwargs):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return adam(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode(0)

    engine._adam = strict  # type: ignore[method-assign]
    try:
        config = replace(PRESETS["standard"], start=size, iterations=3)
        engine.render_batch(items_for(size, 1), config)
        report["sync_debug"] = {"ok": True, "steps": 3}
    except RuntimeError as exc:
        report["sync_debug"] = {"ok": False, "error": str(exc)[:500]}
    finally:
        engine._adam = adam  # type: ignore[method-assign]


def sqrt_section(engine: StyleEngine, size: int, batches, report: dict) -> None:
    """Newton-Schulz on the device against float64 eigh (on the CPU) on the same fp32
    features of the engine's own network: per layer, the worst image of the batch."""
    out = report.setdefault("sqrt_accuracy", [])
    for batch in batches:
        items = items_for(size, batch)
        contents = torch.stack([it.content for it in items]).to(engine.device)
        shape = tuple(contents.shape[-2:])
        styles = torch.cat(
            [F.interpolate(it.styles[0][0][None], size=shape, mode="area") for it in items]
        ).to(engine.device)
        with torch.no_grad():
            fc = engine._features(contents, set(LAYERS), "avg")
            fs = engine._features(styles, set(LAYERS), "avg")
        for layer in LAYERS:
            feat, style = fc[layer].float(), fs[layer].float()
            stats = moments(style, torch.float64)
            values, grads = {}, {}
            for method, where in (("newton", engine.device), ("eigh", torch.device("cpu"))):
                target = StyleTarget(*(s.to(where) for s in stats), "wasserstein", method)
                f = feat.detach().to(where).requires_grad_(True)
                value = wasserstein2(f, target)
                (grad,) = torch.autograd.grad(value.sum(), f)
                values[method], grads[method] = value.detach().cpu(), grad.double().cpu()
            error = ((values["newton"] - values["eigh"]).abs() / values["eigh"].abs()).max()
            cosine = torch.nn.functional.cosine_similarity(
                grads["newton"].flatten(1), grads["eigh"].flatten(1), dim=1
            ).min()
            row = {
                "batch": batch,
                "layer": layer,
                "positions": feat.shape[-1] * feat.shape[-2],
                "channels": feat.shape[1],
                "value_rel_error": float(error),
                "grad_cosine": float(cosine),
                "finite": bool(torch.isfinite(values["newton"]).all()),
            }
            out.append(row)
            print(json.dumps(row), flush=True)


def table(report: dict) -> str:
    """The markdown that goes between the markers in docs/performance.md."""
    lines = [
        f"Card: **{report['card']['name']}** ({report['card'].get('memory_gib', '-')} GiB), "
        f"torch {report['torch']}, CUDA {report['card'].get('cuda', '-')}, "
        f"{report['date']}, commit {report['commit']}"
        + (" (dry run on a CPU: tiny sizes, not figures)" if report["dry_run"] else "")
        + ". `python bench/gpu_check.py`; JSON in `bench/results/`.",
        "",
        "| size | batch | raw step | preset | eager | ratio | CUDA graph | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report.get("steps", []):
        if "skipped" in row:
            lines.append(f"| {row['size']} | {row['batch']} | skipped: {row['skipped']} |||||")
            continue
        for name, e in row["presets"].items():
            lines.append(
                f"| {row['size']} px | {row['batch']} | {row['raw_ms']:.2f} ms | {name} | "
                f"{e['eager_ms']:.2f} ms | {e['eager_ratio']:.2f}x | "
                f"{e['captured_ms']:.2f} ms | **{e['captured_ratio']:.2f}x** |"
            )
    lines += ["", "| render | seconds | per render | renders/h | peak memory |"]
    lines += ["|---|---|---|---|---|"]
    for key, r in report.get("renders", {}).items():
        if "skipped" in r:
            lines.append(f"| {key} | skipped: {r['skipped']} ||||")
            continue
        memory = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.1f} GiB"
        lines.append(
            f"| {key} | {r['seconds']:.2f} | {r['per_render']:.2f} s | "
            f"**{r['renders_per_hour']:,.0f}** | {memory} |"
        )
    sync_debug = report.get("sync_debug", {})
    lines += ["", f'Step under `set_sync_debug_mode("error")`: {json.dumps(sync_debug)}.']
    accuracy = report.get("sqrt_accuracy", [])
    if accuracy:
        worst = max(a["value_rel_error"] for a in accuracy)
        cosine = min(a["grad_cosine"] for a in accuracy)
        finite = all(a["finite"] for a in accuracy)
        lines.append(
            f"W2 square root on the device against float64 eigh, every layer, batch "
            f"{sorted({a['batch'] for a in accuracy})}: value within {worst:.1e} relative, "
            f"gradient cosine >= {cosine:.5f}, {'all finite' if finite else 'NOT FINITE'}."
        )
    return "\n".join(lines)


def write_docs(path: Path, text: str) -> None:
    doc = path.read_text()
    if START not in doc or END not in doc:
        raise SystemExit(f"{path} has no {START} ... {END} markers")
    head, rest = doc.split(START, 1)
    path.write_text(f"{head}{START}\n{text}\n{END}{rest.split(END, 1)[1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="on the CPU, tiny sizes")
    parser.add_argument("--device", help="default: cuda, or cpu with --dry-run")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for all sections")
    parser.add_argument("--docs", type=Path, help="markdown file with the gpu-check markers")
    parser.add_argument("--out", type=Path, help="JSON (default bench/results/gpu-check-*.json)")
    args = parser.parse_args()
    device = torch.device(args.device or ("cpu" if args.dry_run else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run with --dry-run (or --device cpu)")
    if device.type == "cpu":
        torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    deadline = Deadline(args.budget)
    dry = args.dry_run or device.type == "cpu"
    info = card(device)
    commit = ""
    try:
        import subprocess

        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        pass
    report: dict = {
        "card": info,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "commit": commit,
        "dry_run": dry,
        "weights": "random:0",
    }
    slug = re.sub(r"[^a-z0-9]+", "-", info["name"].lower()).strip("-") or "cpu"
    name = f"gpu-check-{'dryrun-' if dry else ''}{slug}.json"
    out = args.out or ROOT / "bench" / "results" / name
    print("running on", json.dumps(info), flush=True)

    engines = {
        "captured": StyleEngine("random:0", device),
        "eager": StyleEngine("random:0", device, cuda_graphs=False),
    }
    if dry:
        sizes, batches, short, long, size, big = [32, 48], [1, 2], 6, 10, 48, 64

        def shorten(config):  # a few iterations per scale, the presets' own pyramids
            return replace(config, start=32, iterations=3)
    else:
        sizes, batches, short, long, size, big = [512, 1024], [1, 8], 10, 30, 512, 1024

        def shorten(config):
            return config

    sections = [
        ("sync_debug", lambda: sync_debug_section(engines["eager"], size, report)),
        ("sqrt_accuracy", lambda: sqrt_section(engines["captured"], size, batches, report)),
        ("steps", lambda: steps_section(engines, sizes, batches, short, long, report, deadline)),
        ("renders", lambda: renders_section(
            engines["captured"], size, max(batches), big, shorten, report, deadline
        )),
    ]  # fmt: skip
    for name, run in sections:
        started = time.perf_counter()
        try:
            run()
        except Exception as exc:  # a section that fails leaves the others' figures
            report.setdefault("errors", {})[name] = "".join(
                traceback.format_exception_only(type(exc), exc)
            ).strip()
            traceback.print_exc()
        report.setdefault("section_seconds", {})[name] = round(time.perf_counter() - started, 1)
        out.write_text(json.dumps(report, indent=1) + "\n")
    text = table(report)
    print(text)
    docs = args.docs or (None if dry else ROOT / "docs" / "performance.md")
    if docs:
        write_docs(docs, text)
    print("wrote", out, "and", docs or "no docs", flush=True)
    sys.exit(1 if report.get("errors") else 0)


if __name__ == "__main__":
    main()
