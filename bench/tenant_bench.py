"""Benchmark (not a test): one team's hostile submits against another team's reads (issue 26:
one team's request never slows another).

    python bench/tenant_bench.py [--seconds 20]

Starts a redis-server and SeaweedFS of its own and `stylebatch serve` in a process of its
own, with two teams. Team beta polls ``GET /v1/jobs`` (one request at a time, as a page's
live view does) for ``--seconds`` alone, then as long again while team alpha posts hostile
manifests back to back from two threads: another team's glob, another bucket, the server's
own disk (``/usr``), a link out of its folder, and its own prefix past the listing bound
(STYLEBATCH_MAX_LISTED). Reports each hostile kind's time to refusal (median, max) and
beta's latency (p50, p99, max) alone and under attack. Writes
bench/results/tenants-cpu-2core.json. tests/integration/test_tenants.py holds the bounds: a
hostile submit refused in under 1 s, beta's p99 under 100 ms.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOKENS = {"alpha": "alpha-token-0123456789abcdef", "beta": "beta-token-0123456789abcdef"}
PNG = (ROOT / "examples" / "images" / "tubingen.jpg").read_bytes()


def hostile(own: str, other_bucket: str, link: str) -> dict[str, str]:
    """Team alpha's hostile manifests (JSON text), by kind: each must be refused, naming
    nothing."""

    def doc(entry: Any) -> dict:
        return {
            "name": "hostile",
            "output": {"location": "s3://outs/alpha/x"},
            "content": [entry],
            "styles": [{"name": "s", "image": "s3://ins/alpha/0000.png"}],
            "params": {"preset": "draft", "sizes": [32]},
        }

    number = json.dumps(doc("s3://ins/alpha/0000.png"))[:-1] + ', "priority": ' + "9" * 5000
    return {
        "another team's glob": json.dumps(doc({"glob": "s3://ins/beta/*/*"})),
        "another bucket": json.dumps(doc({"prefix": f"s3://{other_bucket}/"})),
        "the server's disk": json.dumps(doc({"prefix": "/usr"})),
        "a link out of its folder": json.dumps(doc({"glob": f"{link}/*.png"})),
        "its own prefix, past the bound": json.dumps(doc({"prefix": own})),
        "a 5,000-digit number": number + "}",
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(seconds: float, folder: Path, objects: int = 2500) -> dict[str, Any]:
    import httpx

    from tests.support.services import (
        ACCESS_KEY,
        SECRET_KEY,
        RedisServer,
        S3Server,
        free_port,
        wait_for,
    )

    for name in ("redis", "s3"):
        (folder / name).mkdir()
    redis_server = RedisServer(folder / "redis")
    s3 = S3Server(folder / "s3")
    server = None
    try:
        client = s3.client()
        for bucket in ("ins", "outs", "other-bucket"):
            client.create_bucket(Bucket=bucket)
        for i in range(objects):  # more than STYLEBATCH_MAX_LISTED below
            client.put_object(Bucket="ins", Key=f"alpha/{i:04}.png", Body=PNG)
        client.put_object(Bucket="ins", Key="beta/x/secret.png", Body=PNG)
        disk = folder / "disk"
        (disk / "alpha").mkdir(parents=True)
        (disk / "beta").mkdir()
        (disk / "alpha" / "out").symlink_to(disk / "beta")
        teams = {
            name: {
                "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
                "allowed_inputs": [f"s3://ins/{name}", str(disk / name)],
                "allowed_outputs": [f"s3://outs/{name}"],
            }
            for name, token in TOKENS.items()
        }
        port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "STYLEBATCH_S3_ENDPOINT": s3.endpoint,
            "STYLEBATCH_REDIS_URL": redis_server.url(0),
            "STYLEBATCH_ALLOWED_INPUTS": f"s3://ins,{disk}",
            "STYLEBATCH_ALLOWED_OUTPUTS": "s3://outs",
            "STYLEBATCH_WEB_TEAMS": json.dumps(teams),
            "STYLEBATCH_MAX_LISTED": "2000",
            "STYLEBATCH_WEB_REQUEST_BURST": "100000",
            "STYLEBATCH_WEB_SUBMIT_BURST": "100000",
            "STYLEBATCH_WEB_SUBMITS_PER_MINUTE": "100000",
            "STYLEBATCH_CACHE_DIR": str(folder / "cache"),
        }
        server = subprocess.Popen(
            [sys.executable, "-m", "scheduler.cli", "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{base}/healthz").status_code == 200, 60, "serve")
        manifests = hostile("s3://ins/alpha", "other-bucket", str(disk / "alpha" / "out"))
        return measure(base, manifests, seconds)
    finally:
        if server is not None:
            server.terminate()
            server.wait(20)
        s3.stop()
        redis_server.stop()


def measure(base: str, manifests: dict[str, str], seconds: float) -> dict[str, Any]:
    import httpx

    def poll(until: float) -> list[float]:
        took = []
        with httpx.Client(base_url=base, timeout=30) as c:
            headers = {"Authorization": f"Bearer {TOKENS['beta']}"}
            c.get("/v1/jobs", headers=headers)  # a warm connection, as a page's poller has
            while time.monotonic() < until:
                started = time.perf_counter()
                answer = c.get("/v1/jobs", headers=headers)
                took.append(time.perf_counter() - started)
                assert answer.status_code == 200, answer.text
                time.sleep(0.01)
        return took

    alone = poll(time.monotonic() + seconds)
    refusals: dict[str, list[float]] = {kind: [] for kind in manifests}
    leaks: list[str] = []
    stop = time.monotonic() + seconds

    def attack() -> None:
        headers = {
            "Authorization": f"Bearer {TOKENS['alpha']}",
            "Content-Type": "application/json",
        }
        with httpx.Client(base_url=base, timeout=60) as c:
            while time.monotonic() < stop:
                for kind, data in manifests.items():
                    started = time.perf_counter()
                    answer = c.post("/v1/jobs", content=data, headers=headers)
                    refusals[kind].append(time.perf_counter() - started)
                    if answer.status_code != 422 or "beta" in answer.text or "/usr" in answer.text:
                        leaks.append(f"{kind}: {answer.status_code} {answer.text[:200]}")

    attackers = [threading.Thread(target=attack) for _ in range(2)]
    for t in attackers:
        t.start()
    attacked = poll(stop)
    for t in attackers:
        t.join()

    def latency(values: list[float]) -> dict[str, float]:
        return {
            "requests": len(values),
            "p50_ms": round(1000 * statistics.median(values), 2),
            "p99_ms": round(1000 * percentile(values, 0.99), 2),
            "max_ms": round(1000 * max(values), 2),
        }

    return {
        "beta GET /v1/jobs alone": latency(alone),
        "beta GET /v1/jobs while alpha attacks": latency(attacked),
        "refusals": {
            kind: {
                "count": len(v),
                "median_ms": round(1000 * statistics.median(v), 1),
                "max_ms": round(1000 * max(v), 1),
            }
            for kind, v in refusals.items()
            if v
        },
        "answers that were not a 422 naming nothing": leaks[:20],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        figures = run(args.seconds, Path(folder))
    figures["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs ({platform.node()})"
    print(json.dumps(figures, indent=1))
    out = ROOT / "bench" / "results" / "tenants-cpu-2core.json"
    out.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
