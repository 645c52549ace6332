"""A local fleet for the fleet tier: worker processes started the way `stylebatch worker` starts
them, sharing one Redis database and one S3 server, and the `stylebatch` command line against
it. Tests start fleets through ``start_fleet`` (tests/conftest.py: the ``fleet_factory``
fixture), never by hand."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

from common.settings import Settings
from common.state import JobStore
from scheduler.cli.services import worker_commands
from tests.support.manifests import write_manifest
from tests.support.paths import ROOT
from tests.support.services import ACCESS_KEY, SECRET_KEY, Worker, wait_for

MAX_TIME_LIMIT = 20  # seconds; the visibility timeout follows from it (see common/queue.py)
INPUTS = "inputs"


class LocalFleet:
    """Settings and clients of a fleet on ``redis_url`` (a database of ``redis_server``) and
    ``s3_server``; its workers, once ``start`` has started them."""

    def __init__(
        self, folder: Path, redis_server, s3_server, weights_file: Path, redis_url: str
    ) -> None:
        self.folder, self.s3_server, self.redis_url = folder, s3_server, redis_url
        self.redis_server, self.weights = redis_server, weights_file
        self.env = {
            **os.environ,
            "STYLEBATCH_REDIS_URL": self.redis_url,
            "STYLEBATCH_REDIS_TLS_CA": getattr(redis_server, "ca", ""),
            "STYLEBATCH_S3_ENDPOINT": s3_server.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "STYLEBATCH_WEIGHTS": str(weights_file),
            "STYLEBATCH_MAX_TIME_LIMIT": str(MAX_TIME_LIMIT),
            # recovery in seconds rather than minutes (defaults: 60, 10, 15, 300)
            "STYLEBATCH_WORKER_TIMEOUT": "5",
            "STYLEBATCH_HEARTBEAT_INTERVAL": "1",
            "STYLEBATCH_WATCHDOG_INTERVAL": "1",
            "STYLEBATCH_STALL_AFTER": "8",
            "STYLEBATCH_CACHE_DIR": str(folder / "cache"),
            "STYLEBATCH_DEVICE": "cpu",
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT),
            "COLUMNS": "200",
        }
        self.workers: dict[str, Worker] = {}
        self.store = JobStore.from_url(self.redis_url, getattr(redis_server, "ca", ""))

    def settings_env(self) -> dict[str, str]:
        """The fleet's settings, for code the test runs itself (beat, a hand-made submit)."""
        return {k: v for k, v in self.env.items() if k.startswith(("STYLEBATCH_", "AWS_"))}

    def settings(self) -> Settings:
        with mock.patch.dict(os.environ, self.settings_env()):
            return Settings.from_env()

    def plan(self, path: Path, weights: str | None = None):
        """Plan a manifest as `submit` would (inputs identified with the fleet's S3), without
        its checks (every input allowed here): for hand-made jobs that the workers must refuse
        themselves."""
        import dataclasses

        from common.expand import plan_job
        from common.storage import s3_client

        with mock.patch.dict(os.environ, self.settings_env()):
            s3_client.cache_clear()
            try:
                fleet = Settings.from_env()
                anything = dataclasses.replace(fleet, allowed_inputs=("s3://", "/"))
                return plan_job(path, anything, weights)
            finally:
                s3_client.cache_clear()

    def start(self, names: list[str]) -> None:
        started = worker_commands([], "test", "INFO", cpu_workers=2)
        commands = {argv[argv.index("-n") + 1].split("@")[0]: (argv, env) for argv, env in started}
        for name in names:
            argv, env = commands[name]
            self.workers[name] = Worker(argv, {**self.env, **env}, self.folder / f"{name}.log")
        for name in names:
            self.workers[name].wait_ready()

    def stop(self) -> None:
        for worker in self.workers.values():
            worker.stop()

    def cli(
        self, *args: str, env_extra: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "scheduler.cli", *args],
            env={**self.env, **(env_extra or {})},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def submit(self, manifest: Path, *extra: str) -> str:
        result = self.cli("submit", str(manifest), *extra)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().splitlines()[-1]

    def wait_done(self, job_id: str, timeout: float = 240) -> None:
        wait_for(lambda: self.store.get(job_id).terminal, timeout, f"job {job_id}")

    def objects(self, prefix: str) -> dict[str, dict]:
        s3 = self.s3_server.client()
        found = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket="outputs", Prefix=prefix):
            for obj in page.get("Contents", []):
                found[obj["Key"]] = s3.head_object(Bucket="outputs", Key=obj["Key"])["Metadata"]
        return found


def start_fleet(
    folder: Path,
    redis_server,
    s3_server,
    weights_file: Path,
    redis_url: str,
    workers: list[str] | tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> LocalFleet:
    """A fleet with ``env`` over its settings and ``workers`` (names from `stylebatch worker`:
    cpu0, cpu1, bookkeeping) started and ready; none for a fleet whose test submits first."""
    fleet = LocalFleet(folder, redis_server, s3_server, weights_file, redis_url)
    fleet.env |= env or {}
    try:
        if workers:
            fleet.start(list(workers))
    except BaseException:
        fleet.stop()  # those that did start
        raise
    return fleet


def manifest(
    folder: Path, name: str, contents: list[str], styles: list[str], sizes=(40,), **params
) -> Path:
    data = {
        "name": name,
        "output": {"location": f"s3://outputs/{name}"},
        "content": [f"s3://{INPUTS}/img/{c}.png" for c in contents],
        "styles": [{"name": s, "image": f"s3://{INPUTS}/img/{s}.png"} for s in styles],
        "params": {
            "preset": "draft",
            "sizes": list(sizes),
            "pyramid": {"start": 32, "ratio": 1.5, "iterations": 4},
            **params,
        },
    }
    return write_manifest(folder / name, data)


def upload_inputs(s3_server, images: dict[str, Path]) -> None:
    """The test images (and a gradient) as s3://inputs/img/NAME.png, and an outputs bucket."""
    import contextlib
    import io

    from PIL import Image

    s3 = s3_server.client()
    for bucket in (INPUTS, "outputs"):
        with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
            s3.create_bucket(Bucket=bucket)
    for name, path in images.items():
        s3.upload_file(str(path), INPUTS, f"img/{name}.png")
    buf = io.BytesIO()
    Image.linear_gradient("L").resize((64, 48)).convert("RGB").save(buf, "PNG")
    s3.put_object(Bucket=INPUTS, Key="img/gradient.png", Body=buf.getvalue())
