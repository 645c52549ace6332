"""Benchmark (not a test): expand and enqueue a 10,000-render manifest into a real Redis.

    python bench/enqueue_bench.py [--renders 10000]

Starts its own redis-server on a free loopback port, writes tiny input files, and times
validation + expansion and submission (job record + task messages) separately.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.expand import plan_job
from common.queue import RENDER_QUEUE, make_app
from common.settings import Settings
from common.state import JobStore
from scheduler.submit import submit


def start_redis() -> tuple[subprocess.Popen, int]:
    """A redis-server of its own on a free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    server = subprocess.Popen(["redis-server", *args], stdout=subprocess.DEVNULL)
    for _ in range(50):
        try:
            redis.Redis(port=port).ping()
            break
        except redis.ConnectionError:
            time.sleep(0.1)
    return server, port


def bulk_manifest(folder: Path, renders: int, size: int) -> Path:
    """About ``renders`` renders: sqrt(renders) tiny content files x as many styles."""
    side = math.isqrt(renders)
    for kind in ("content", "style"):
        (folder / kind).mkdir()
        for i in range(side):
            Image.new("RGB", (8, 8), (i % 256, i // 256, 0)).save(folder / kind / f"{i:04d}.png")
    manifest = {
        "name": "bulk",
        "output": {"location": str(folder / "out")},
        "content": [{"glob": "content/*.png"}],
        "styles": [{"name": f"s{i:04d}", "image": f"style/{i:04d}.png"} for i in range(side)],
        "params": {"preset": "draft", "sizes": [size]},
    }
    path = folder / "bulk.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--renders", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=512, help="2048: one render per task")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="sb-enqueue-"))
    server, port = start_redis()
    try:
        path = bulk_manifest(folder, args.renders, args.size)
        settings = Settings(redis_url=f"redis://127.0.0.1:{port}/0", allowed_inputs=("/",))
        t = time.perf_counter()
        plan = plan_job(path, settings)
        planned = time.perf_counter() - t
        app = make_app(settings)
        store = JobStore.from_url(settings.redis_url, settings.redis_tls_ca)
        t = time.perf_counter()
        result = submit(plan, settings, app, store)
        submitted = time.perf_counter() - t
        client = redis.Redis(port=port)
        queued = sum(client.llen(k) for k in client.keys(f"{RENDER_QUEUE}*"))
        report = {
            "renders": len(plan.renders), "tasks": result.tasks, "messages_in_redis": queued,
            "validate_expand_s": round(planned, 3), "submit_s": round(submitted, 3),
            "total_s": round(planned + submitted, 3),
            # job state (record, specs, states), not the queued messages
            "job_state_bytes_per_render": round(store.memory(plan.job_id) / len(plan.renders)),
            "queue_bytes_per_render": round(sum(
                client.memory_usage(k) or 0 for k in client.keys(f"{RENDER_QUEUE}*")
            ) / len(plan.renders)),
        }  # fmt: skip
        print(json.dumps(report, indent=2))
    finally:
        server.terminate()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
