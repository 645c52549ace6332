"""Benchmark (not a test): preflight of a job with 10,000 distinct S3 inputs.

    python bench/preflight_bench.py [--inputs 10000]

Starts SeaweedFS on free loopback ports (as the tests do), uploads N tiny objects (spread over
a few folders, and a few folders of under 20, which are HEADed instead of listed), then times
`preflight` on a job that reads every one of them, plus one with a mistyped output bucket.
Writes bench/results/preflight-<N>[-head-only][-scattered].json: --scattered puts the inputs
in folders of 4 (found by listing what they share), --head-only HEADs every object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.expand import JobPlan, Render  # noqa: E402
from common.inputs import identify  # noqa: E402
from common.manifest import parse_manifest  # noqa: E402
from common.settings import Settings  # noqa: E402
from common.uris import Location  # noqa: E402
from scheduler.preflight import preflight  # noqa: E402
from tests.support.services import ACCESS_KEY, SECRET_KEY, S3Server  # noqa: E402


def plan_for(uris: list[str], output: str) -> JobPlan:
    manifest = parse_manifest(
        {
            "name": "bench",
            "output": {"location": output},
            "content": ["s3://bench-in/x.png"],
            "styles": [{"name": "s", "image": "s3://bench-in/style.png"}],
        },
        "bench",
    )
    bucket, _, prefix = output[5:].partition("/")
    renders = [
        Render(
            f"r{i}",
            u,
            f"c{i}",
            "s",
            (("s3://bench-in/style.png", 1.0),),
            64,
            {},
            f"{i}.png",
            "x",
            {},
        )
        for i, u in enumerate(uris)
    ]
    return JobPlan("bench", "bench", "bench", manifest, Location("s3", bucket, prefix), renders,
                   "random:0")  # fmt: skip


def check(uris: list[str], output: str, settings: Settings) -> list:
    """What `submit` does before enqueueing: identify (and check) every input, then preflight."""
    plan = plan_for(uris, output)
    plan.problems = identify(
        dict.fromkeys([*uris, "s3://bench-in/style.png"], "content"), settings
    )[1]
    return preflight(plan, settings)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--inputs", type=int, default=10_000)
    parser.add_argument("--head-only", action="store_true", help="HEAD every object, no LIST")
    parser.add_argument(
        "--scattered", action="store_true", help="inputs in folders of 4 (e.g. one per product)"
    )
    args = parser.parse_args()
    if args.head_only:
        import common.inputs

        common.inputs.LIST_FROM = 10**9
    import os

    folder = Path(tempfile.mkdtemp(prefix="sb-preflight-"))
    server = S3Server(folder)
    try:
        os.environ.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
        settings = Settings(s3_endpoint=server.endpoint)
        s3 = server.client()
        for bucket in ("bench-in", "bench-out"):
            s3.create_bucket(Bucket=bucket)
        if args.scattered:
            keys = [f"products/p{i // 4:05d}/{i % 4}.png" for i in range(args.inputs)]
        else:
            keys = [f"shots/batch{i % 8}/{i:06d}.png" for i in range(args.inputs - 40)]
            keys += [f"few/f{i % 4}/{i:03d}.png" for i in range(40)]  # 4 folders of 10: HEADed
        keys.append("style.png")
        started = time.perf_counter()
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(lambda k: s3.put_object(Bucket="bench-in", Key=k, Body=b"x" * 64), keys))
        upload = time.perf_counter() - started
        uris = [f"s3://bench-in/{k}" for k in keys[:-1]]
        results = {
            "inputs": len(uris),
            "upload_seconds": round(upload, 1),
            "machine": "2 cores",
            "head_only": args.head_only,
        }
        for label, output in (
            ("ok", "s3://bench-out/bench"),
            ("mistyped bucket", "s3://bench-outt/bench"),
        ):
            started = time.perf_counter()
            problems = check(uris, output, settings)
            took = time.perf_counter() - started
            results[label] = {"seconds": round(took, 2), "problems": [str(p) for p in problems]}
            print(f"{label}: {took:.2f} s, {len(problems)} problem(s) {problems[:2]}")
        missing_uri = uris[0].rsplit("/", 1)[0] + "/missing.png"
        started = time.perf_counter()
        problems = check([*uris[:-1], missing_uri], "s3://bench-out/bench", settings)
        results["one missing"] = {
            "seconds": round(time.perf_counter() - started, 2),
            "problems": [str(p) for p in problems],
        }
        print(f"one missing: {results['one missing']}")
        mode = ("-head-only" if args.head_only else "") + ("-scattered" if args.scattered else "")
        out = ROOT / "bench" / "results" / f"preflight-{args.inputs}{mode}.json"
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {out}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
