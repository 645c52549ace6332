"""Benchmark (not a test): the web front's pages and API on a 100,000-render job, beside a
10-render one (issue 21: a request's cost does not grow with the job).

    python bench/web_bench.py [--renders 100000]

Starts a redis-server of its own and the web front (uvicorn, in this process), records a job
of N renders through the real JobStore (10 styles, 7 sizes, 70 renders per content; 48 done
with small outputs on local disk, 5 failed), then times over HTTP (median of 5): the job page,
the gallery (all states; done only, with every thumbnail fetched: first view makes them,
later ones read them from the server's cache), the renders API unfiltered and filtered by
state, style, content, and the job's JSON. Writes bench/results/web-<N>-2core.json.
tests/fleet/test_web_api.py asserts the bounds (each under 1 s, the gallery under 2 MB).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DONE, FAILED = 48, 5


def big_web_job(store: Any, plan: Any, folder: Path, n: int = 100_000, team: str = "alpha") -> str:
    """Record a job of ``n`` renders for ``team`` (outputs on local disk under ``folder``):
    DONE of them done with a small PNG output each, FAILED failed with a reason."""
    from PIL import Image

    from common.state import Held
    from common.uris import Location

    first = plan.renders[0]
    renders = [
        dataclasses.replace(
            first,
            id=f"{i:024x}",
            key=f"big/{i}.png",
            size=48 + i % 7,
            style=f"style{i % 10}",
            content_name=f"shot{i // 70}",
        )
        for i in range(n)
    ]
    out = folder / "big-out"
    plan = dataclasses.replace(
        plan,
        job_id=f"web-big-{n}-{n:012x}",  # shaped as expand makes job ids: the web checks
        renders=renders,
        location=Location("file", str(out)),
    )
    store.delete(plan.job_id)
    assert store.create(plan, team=team)
    store.mark_sent(plan.job_id)
    picture = Image.linear_gradient("L").resize((64, 48)).convert("RGB")
    for i, render in enumerate(renders[: DONE + FAILED]):
        claim = store.claim(plan.job_id, render.id, "bench|h|1|t", 60, 3)
        held = Held(plan.job_id, render.id, claim.attempt)
        if i < DONE:
            path = out / render.key
            path.parent.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            picture.save(buf, "PNG")
            path.write_bytes(buf.getvalue())
            store.finish(held, "done", seconds=1.5, device="cpu", pixel_iterations=1e6)
        else:
            store.finish(held, "failed", error="input replaced since submit")
    return plan.job_id


def _timed(client: Any, path: str, headers: dict[str, str]) -> tuple[float, int, str]:
    started = time.perf_counter()
    answer = client.get(path, headers=headers)
    elapsed = time.perf_counter() - started
    assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
    return (
        elapsed,
        len(answer.content),
        answer.text
        if "html" in answer.headers.get("content-type", "")
        or "json" in answer.headers.get("content-type", "")
        else "",
    )


def measure(client: Any, job: str, headers: dict[str, str], runs: int = 5) -> dict:
    """name -> (median seconds, bytes transferred)."""
    paths = {
        "job page": f"/ui/jobs/{job}",
        "gallery": f"/ui/jobs/{job}/gallery",
        "gallery, one style and size": f"/ui/jobs/{job}/gallery?style=style3&size=50",
        "renders API": f"/v1/jobs/{job}/renders?limit=50",
        "renders API, done": f"/v1/jobs/{job}/renders?status=done&limit=50",
        "renders API, failed": f"/v1/jobs/{job}/renders?status=failed",
        "renders API, one content": f"/v1/jobs/{job}/renders?content=shot700",
        "renders API, pending, one style": f"/v1/jobs/{job}/renders?status=pending&style=style7",
        "job JSON": f"/v1/jobs/{job}",
    }
    figures: dict[str, tuple[float, int]] = {}
    for name, path in paths.items():
        timings, size = [], 0
        for _ in range(runs):
            seconds, size, _ = _timed(client, path, headers)
            timings.append(seconds)
        figures[name] = (round(statistics.median(timings), 4), size)

    def gallery_with_thumbnails() -> tuple[float, int]:
        started = time.perf_counter()
        _, size, html = _timed(client, f"/ui/jobs/{job}/gallery?status=done", headers)
        thumbs = re.findall(r'src="(/v1/jobs/[^"]+/thumbnail)"', html)
        assert len(thumbs) == DONE, len(thumbs)
        for src in thumbs:
            size += _timed(client, src, headers)[1]
        return round(time.perf_counter() - started, 4), size

    figures["gallery (done, with thumbnails), first view"] = gallery_with_thumbnails()
    views = [gallery_with_thumbnails() for _ in range(runs)]
    figures["gallery (done, with thumbnails)"] = (
        statistics.median(v[0] for v in views),
        views[-1][1],
    )
    return figures


def main() -> None:
    import httpx

    from common.expand import plan_job
    from common.settings import Settings
    from common.state import JobStore
    from scheduler.web.app import create_app
    from tests.support.manifests import tiny_manifest, write_manifest
    from tests.support.services import RedisServer
    from tests.support.web import Served, bearer, teams_json

    parser = argparse.ArgumentParser()
    parser.add_argument("--renders", type=int, default=100_000)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="sb-web-"))
    redis = RedisServer(folder)
    try:
        settings = Settings(
            redis_url=redis.url(0),
            allowed_inputs=("/",),
            allowed_outputs=("/",),
            web_teams=teams_json(inputs="/", outputs=str(folder)),
            web_thumbnails=str(folder / "thumbnails"),
        )
        store = JobStore.from_settings(settings)
        images = {n: ROOT / "examples" / "images" / f"{n}.jpg" for n in ("tubingen",)}
        images |= {"starry_night": images["tubingen"], "wave": images["tubingen"]}
        plan = plan_job(write_manifest(folder, tiny_manifest(images, folder / "o")), settings)
        started = time.perf_counter()
        big = big_web_job(store, plan, folder, args.renders)
        created = time.perf_counter() - started
        small = big_web_job(store, plan, folder / "small", 10 + DONE + FAILED)
        server = Served(create_app(settings))
        with httpx.Client(base_url=server.url, timeout=60) as client:
            result = {
                "renders": args.renders,
                "machine": f"{os.cpu_count()} CPU cores, no GPU ({platform.machine()})",
                "create_seconds": round(created, 1),
                "big": measure(client, big, bearer("alpha")),
                "small": measure(client, small, bearer("alpha")),
            }
        server.stop()
    finally:
        redis.stop()
    print(json.dumps(result, indent=1))
    out = ROOT / "bench" / "results" / f"web-{args.renders}-2core.json"
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
