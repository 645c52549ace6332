"""Benchmark (not a test): job state at 100,000 renders, as issue 11 checks it.

    python bench/state_bench.py [--renders 100000]

Submits a ~100,000-render manifest with `stylebatch submit` against a redis-server of its own,
with no workers; times `stylebatch status` and `stylebatch jobs` (whole commands, interpreter
start included) and reads Redis's SLOWLOG (threshold 10 ms) over those commands. Then ends the
job as finished, runs `stylebatch gc --older-than-days 0` and counts the keys left. Writes
bench/results/state-<N>-2core.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from enqueue_bench import bulk_manifest, start_redis  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--renders", type=int, default=100_000)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="sb-state-"))
    server, port = start_redis()
    url = f"redis://127.0.0.1:{port}/0"
    env = {
        **os.environ,
        "STYLEBATCH_REDIS_URL": url,
        "STYLEBATCH_ALLOWED_INPUTS": "/",
        "STYLEBATCH_ALLOWED_OUTPUTS": "/",
        "STYLEBATCH_MAX_RENDERS": str(2 * args.renders),
        "COLUMNS": "200",
    }

    def cli(*argv: str) -> tuple[float, subprocess.CompletedProcess]:
        t = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "scheduler.cli", *argv],
            cwd=ROOT, env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        return time.perf_counter() - t, done

    try:
        path = bulk_manifest(folder, args.renders, 512)
        r = redis.Redis(port=port, decode_responses=True)
        r.config_set("slowlog-log-slower-than", 10_000)  # microseconds: submit's commands too
        r.slowlog_reset()
        submit_s, submitted = cli("submit", str(path), "--weights", "random")
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.strip().splitlines()[-1]
        renders = int(r.hget(f"sb:job:{{{job_id}}}", "total"))
        memory = sum(
            r.memory_usage(k) or 0
            for k in r.scan_iter(f"sb:job:{{{job_id}}}*")
        )  # fmt: skip
        times = {}
        for name, argv in {
            "status": ("status", job_id),
            "status_json": ("status", job_id, "--json"),
            "jobs": ("jobs",),
            "jobs_json": ("jobs", "--json"),
        }.items():
            runs = [cli(*argv) for _ in range(3)]
            assert all(p.returncode == 0 for _, p in runs), runs[0][1].stderr
            times[name] = round(min(t for t, _ in runs), 3)
        baseline = min(cli("--help")[0] for _ in range(3))  # interpreter and imports alone
        slow = [(e["duration"], " ".join(map(str, e["command"]))[:80]) for e in r.slowlog_get(128)]

        r.hset(f"sb:job:{{{job_id}}}", mapping={"status": "done", "finished": 0})  # ended long ago
        keys_before = r.dbsize()
        gc_s, swept = cli("gc", "--older-than-days", "0")
        report = {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU",
            "renders": renders,
            "submit_s": round(submit_s, 2),
            "job_state_bytes": memory,
            "job_state_bytes_per_render": round(memory / renders),
            "command_seconds_best_of_3": times,
            "cli_startup_seconds_best_of_3": round(baseline, 3),
            "slowlog_over_10ms": slow,
            "gc_seconds": round(gc_s, 2),
            "gc_output": swept.stdout.strip(),
            "keys_before_gc": keys_before,
            "keys_after_gc": r.dbsize(),
        }
        print(json.dumps(report, indent=2))
        out = ROOT / "bench" / "results" / f"state-{args.renders}-2core.json"
        out.write_text(json.dumps(report, indent=2) + "\n")
    finally:
        server.terminate()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
