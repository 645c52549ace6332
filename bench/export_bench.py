"""Benchmark (not a test): a 100,000-render job's approved set exported as one zip, streamed
from S3 through `stylebatch serve` (issue 30: under 200 MB of the server's memory).

    python bench/export_bench.py [--renders 100000] [--bytes 2048]

Starts a redis-server and SeaweedFS of its own and `stylebatch serve` in a process of its
own. Records a ~100,000-render job (no workers: each render ended by the scripts a worker
uses), writes each render's output to S3 (``--bytes`` each), approves them all, then
downloads ``GET /v1/jobs/{job}/export`` and reads the server's peak resident memory (VmHWM)
before and after. Checks the zip whole: every entry, its bytes' CRC, renders.csv's rows.
Writes bench/results/export-<N>-2core.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

TOKEN = "alpha-token-0123456789abcdef"


def peak_kib(pid: int) -> tuple[int, int]:
    """(VmHWM, VmRSS) of a process, KiB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmHWM", "VmRSS")):
            name, value = line.split(":", 1)
            found[name] = int(value.split()[0])
    return found["VmHWM"], found["VmRSS"]


def main() -> None:
    import httpx
    import yaml
    from enqueue_bench import bulk_manifest

    from common.expand import plan_job
    from common.settings import Settings
    from common.state import Held, JobStore
    from tests.support.services import (
        ACCESS_KEY,
        SECRET_KEY,
        RedisServer,
        S3Server,
        free_port,
        wait_for,
    )

    parser = argparse.ArgumentParser()
    parser.add_argument("--renders", type=int, default=100_000)
    parser.add_argument("--bytes", type=int, default=2048, help="each output's size")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="sb-export-"))
    for name in ("redis", "s3", "plan"):
        (folder / name).mkdir()
    redis_server = RedisServer(folder / "redis")
    s3 = S3Server(folder / "s3")
    server = None
    result: dict = {"renders": args.renders, "output_bytes": args.bytes}
    try:
        client = s3.client()
        client.create_bucket(Bucket="outs")
        path = bulk_manifest(folder / "plan", args.renders, 512)
        data = yaml.safe_load(path.read_text())
        data["output"]["location"] = "s3://outs/alpha/bulk"
        path.write_text(yaml.safe_dump(data))
        settings = Settings(
            redis_url=redis_server.url(0), allowed_inputs=("/",), allowed_outputs=("s3://outs",),
            max_renders=2 * args.renders,
        )  # fmt: skip
        t = time.perf_counter()
        plan = plan_job(path, settings, "random")
        store = JobStore.from_url(redis_server.url(0))
        assert store.create(plan)
        job = plan.job_id
        result["renders"] = len(plan.renders)
        result["record_seconds"] = round(time.perf_counter() - t, 1)

        t = time.perf_counter()
        body = bytes(range(256)) * (args.bytes // 256)

        def one(render) -> None:
            key = f"alpha/bulk/{render.key}"
            for attempt in range(8):  # SeaweedFS under load answers InternalError at times
                try:
                    client.put_object(Bucket="outs", Key=key, Body=body + render.id.encode())
                    break
                except Exception:
                    if attempt == 7:
                        raise
                    time.sleep(0.5 * 2**attempt)
            claim = store.claim(job, render.id, "W", 600, 3)
            store.finish(Held(job, render.id, claim.attempt), "done", seconds=0.5, device="cpu")

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, plan.renders))
        assert store.begin_finalize(job, "t", 60) == "ok" and store.end_job(job, "done", token="t")
        store.decide(job, "approved", [(r.id, None) for r in plan.renders], "", "alpha")
        result["outputs_seconds"] = round(time.perf_counter() - t, 1)

        port = free_port()
        teams = {
            "alpha": {
                "token_sha256": hashlib.sha256(TOKEN.encode()).hexdigest(),
                "allowed_inputs": ["/"],
                "allowed_outputs": ["s3://outs/alpha"],
            }
        }
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "STYLEBATCH_S3_ENDPOINT": s3.endpoint,
            "STYLEBATCH_REDIS_URL": redis_server.url(0),
            "STYLEBATCH_ALLOWED_INPUTS": "/",
            "STYLEBATCH_ALLOWED_OUTPUTS": "s3://outs",
            "STYLEBATCH_WEB_TEAMS": json.dumps(teams),
            "STYLEBATCH_CACHE_DIR": str(folder / "cache"),
        }
        server = subprocess.Popen(
            [sys.executable, "-m", "scheduler.cli", "serve", "--port", str(port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{base}/healthz").status_code == 200, 60, "serve")
        headers = {"Authorization": f"Bearer {TOKEN}"}
        httpx.get(f"{base}/v1/jobs/{job}", headers=headers)  # warm
        result["server_rss_before_mib"] = round(peak_kib(server.pid)[1] / 1024, 1)
        zipped = folder / "export.zip"
        t = time.perf_counter()
        with httpx.stream(
            "GET", f"{base}/v1/jobs/{job}/export", headers=headers, timeout=600
        ) as answer, zipped.open("wb") as out:  # fmt: skip
            assert answer.status_code == 200, answer.status_code
            for chunk in answer.iter_raw(1 << 20):
                out.write(chunk)
        seconds = time.perf_counter() - t
        hwm, rss = peak_kib(server.pid)
        size = zipped.stat().st_size
        result |= {
            "export_seconds": round(seconds, 1),
            "zip_mib": round(size / 2**20, 1),
            "mib_per_second": round(size / 2**20 / seconds, 1),
            "server_peak_rss_mib": round(hwm / 1024, 1),
            "server_rss_after_mib": round(rss / 1024, 1),
        }
        with zipfile.ZipFile(zipped) as archive:
            names = archive.namelist()
            assert archive.testzip() is None
            rows = archive.read("renders.csv").decode().count("\n") - 1
        result |= {"entries": len(names) - 1, "csv_rows": rows}
        assert result["entries"] == len(plan.renders) == rows, result
    finally:
        if server is not None:
            server.terminate()
            server.wait(20)
        s3.stop()
        redis_server.stop()
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}"
    out = ROOT / "bench" / "results" / f"export-{result['renders']}-2core.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
