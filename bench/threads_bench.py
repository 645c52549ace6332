"""CPU render processes beside each other (not a test): torch's default threads against the
sized ones (common.queue.torch_threads), on this machine's CPUs.

    python bench/threads_bench.py [--size 96] [--processes 2] [--out bench/results/x.json]

Starts ``--processes`` render processes at once, as `stylebatch worker --cpu-workers N`
does, each rendering the same small `draft` (random:0 weights), twice: first with torch's
default thread count in every process (every core of the machine each: what a render process
did before), then with each process's share (STYLEBATCH_TORCH_THREADS as the launcher sets
it). Reports each process's wall seconds and the threads it used; the figures name the
machine's CPUs and load, since a busy neighbour (another engineer's job, say) shifts both.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.queue import available_cpus, torch_threads  # noqa: E402
from common.settings import Settings  # noqa: E402

CHILD = """
import sys, time, torch
sys.path.insert(0, {root!r})
from common.settings import Settings
from workers.render import size_threads
if {sized}:
    size_threads(Settings.from_env())
from bench.engine_bench import PRESETS, load
from workers.engine import RenderItem, StyleEngine
engine = StyleEngine("random:0", "cpu")
item = RenderItem(load("tubingen.jpg", {size}), [(load("starry_night.jpg", {size}), 1.0)])
started = time.perf_counter()
engine.render(item, PRESETS["draft"])
print(torch.get_num_threads(), time.perf_counter() - started)
"""


def round_of(processes: int, size: int, sized: bool) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "STYLEBATCH_TORCH_THREADS"}
    if sized:  # what workers.launch gives each render process
        env["STYLEBATCH_TORCH_THREADS"] = str(torch_threads(Settings(), processes))
    code = CHILD.format(root=str(ROOT), sized=sized, size=size)
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    out = []
    for proc in procs:
        threads, seconds = proc.communicate()[0].split()
        out.append({"threads": int(threads), "seconds": round(float(seconds), 1)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report = {
        "machine": f"{os.cpu_count()} cores, {available_cpus()} available to this process",
        "load_average_before": os.getloadavg(),
        "size": args.size,
        "processes": args.processes,
        "preset": "draft",
    }
    started = time.perf_counter()
    report["default_threads"] = round_of(args.processes, args.size, sized=False)
    report["sized_threads"] = round_of(args.processes, args.size, sized=True)
    report["load_average_after"] = os.getloadavg()
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
