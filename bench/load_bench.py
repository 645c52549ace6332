"""Load benchmark (not a test): a 10,000-render manifest of tiny renders submitted to a real
Redis and SeaweedFS and drained by several CPU worker processes on this machine.

    python bench/load_bench.py [--contents 100 --styles 100 --workers 3] [--out load.json]

Reports enqueue time, throughput, per-render time outside the engine, every process's memory
over time, and checks that every render has exactly one output (nothing lost or duplicated).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.state import JobStore  # noqa: E402
from scheduler.cli.services import worker_commands  # noqa: E402
from tests.support.services import ACCESS_KEY, SECRET_KEY, RedisServer, S3Server, Worker  # noqa: E402
from workers.engine import random_state_dict  # noqa: E402


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children, in MB."""
    total = 0
    pids = [
        str(pid),
        *subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split(),
    ]
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--contents", type=int, default=100)
    parser.add_argument("--styles", type=int, default=100)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--out", default="load.json")
    args = parser.parse_args()
    import torch

    folder = Path(tempfile.mkdtemp(prefix="sb-load-"))
    redis_server = RedisServer(folder)
    s3 = S3Server(folder)
    try:
        client = s3.client()
        for bucket in ("load-in", "load-out"):
            client.create_bucket(Bucket=bucket)
        for kind, count in (("c", args.contents), ("s", args.styles)):
            for i in range(count):
                buf = io.BytesIO()
                Image.new("RGB", (16, 16), (i % 256, (7 * i) % 256, 90)).save(buf, "PNG")
                client.put_object(Bucket="load-in", Key=f"{kind}/{i:04d}.png", Body=buf.getvalue())
        weights = folder / "vgg.pth"
        torch.save(random_state_dict(0), weights)
        manifest = {
            "name": "load",
            "output": {"location": "s3://load-out/load", "key": "{style}/{content}.{ext}"},
            "content": [{"glob": "s3://load-in/c/*.png"}],
            "styles": [
                {"name": f"s{i:04d}", "image": f"s3://load-in/s/{i:04d}.png"}
                for i in range(args.styles)
            ],
            "params": {"preset": "draft", "sizes": [16], "pyramid": {"start": 16, "iterations": 1}},
        }
        path = folder / "load.yaml"
        path.write_text(yaml.safe_dump(manifest))
        env = {
            **os.environ,
            "STYLEBATCH_REDIS_URL": redis_server.url(),
            "STYLEBATCH_S3_ENDPOINT": s3.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "STYLEBATCH_WEIGHTS": str(weights),
            "STYLEBATCH_CACHE_DIR": str(folder / "cache"),
            "OMP_NUM_THREADS": "1",
            "STYLEBATCH_MAX_TIME_LIMIT": "600",
            "PYTHONPATH": str(ROOT),
        }
        commands = worker_commands([], "load", "INFO", cpu_workers=args.workers)
        workers = [
            Worker(argv, {**env, **e}, folder / f"w{i}.log") for i, (argv, e) in enumerate(commands)
        ]
        for w in workers:
            w.wait_ready(120)
        started = time.perf_counter()
        submit = subprocess.run(
            [sys.executable, "-m", "scheduler.cli", "submit", str(path)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        job_id = submit.stdout.strip().splitlines()[-1]
        store = JobStore.from_url(redis_server.url())
        memory: dict[str, list] = {w.name: [] for w in workers}
        while store.get(job_id).status not in ("done", "cancelled"):
            t = round(time.perf_counter() - started, 1)
            for w in workers:
                memory[w.name].append([t, round(rss_mb(w.proc.pid), 1)])
            time.sleep(2)
        wall = time.perf_counter() - started
        states = store.states(job_id)
        engine = sum(s.get("seconds") or 0 for s in states.values())
        heads = []
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket="load-out", Prefix="load/"
        ):
            heads += [
                o["Key"]
                for o in page.get("Contents", [])
                if o["Key"].endswith(".png") and "contact_sheet" not in o["Key"]
            ]
        ids = {
            client.head_object(Bucket="load-out", Key=k)["Metadata"]["render-id"]
            for k in heads[:: max(1, len(heads) // 500)]
        }
        renders = len(states)
        info = store.get(job_id)
        report = {
            "machine": f"{os.cpu_count()} cores",
            "renders": renders,
            "render_workers": args.workers,
            "submit_line": submit.stdout.strip().splitlines()[0],
            "wall_s": round(wall, 1),
            "renders_per_s": round(renders / wall, 1),
            "engine_s_per_render": round(engine / renders, 4),
            "outside_engine_s_per_render": round(
                args.workers * wall / renders - engine / renders, 4
            ),
            "counts": {s: info.count(s) for s in ("done", "skipped", "failed", "cancelled")},
            "output_objects": len(heads),
            "distinct_render_ids_sampled": len(ids),
            "peak_rss_mb": {k: max(v for _, v in series) for k, series in memory.items()},
            "rss_mb_over_time": memory,
        }
        assert len(heads) == renders and info.count("done") == renders, report
        Path(args.out).write_text(json.dumps(report, indent=2))
        print(json.dumps({k: v for k, v in report.items() if k != "rss_mb_over_time"}, indent=2))
        for w in workers:
            w.stop()
    finally:
        s3.stop()
        redis_server.stop()


if __name__ == "__main__":
    main()
