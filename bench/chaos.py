"""Fault-injection harness: a real fleet under a seeded schedule of faults, then the
invariants checked against Redis and S3.

    python bench/chaos.py --seed 7 --jobs 12 --faults 100   # the long run
    python bench/chaos.py --seed 1 --short                  # CI's (tests/fleet/test_chaos.py)

The fleet: Redis (append-only, fsync always), SeaweedFS, two CPU render workers (each
reaching Redis through a TCP proxy of its own, which a partition cuts), a bookkeeping worker
(watchdog, finalize, webhooks), `stylebatch beat` on an S3-sourced schedule due every minute,
and a webhook receiver that fails some deliveries. Several jobs are submitted with
`stylebatch submit` (some killed part way and submitted again, as a cron retry would).

Faults, drawn from the seed: SIGKILL of a worker's process group; SIGSTOP past the worker
timeout, then SIGCONT; a partition of one worker from Redis; a Redis restart; an S3 outage;
duplicate deliveries of render tasks; a submit killed mid-create; the bookkeeping worker
killed mid-finalize. With ``--sentinel``, Redis is a Sentinel set (primary, replica, three
sentinels) and a failover is one more fault kind.

Invariants, once every job has ended (or the deadline passed): every job ended; each render
ended once and was counted once (per job and in the fleet's counters); the outputs in S3 are
exactly the done and skipped renders, each carrying its render id; each summary agrees with
Redis and with S3 (status per render, seconds of each output); one webhook delivery id per
job end, however often it was retried. Prints the faults by kind, recovery time per kind,
and lost and double-counted renders, and writes a JSON report with ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.state import JobStore  # noqa: E402
from tests.support.services import (  # noqa: E402
    ACCESS_KEY,
    SECRET_KEY,
    RedisServer,
    S3Server,
    Worker,
    wait_for,
)

KINDS = (
    "kill_worker",
    "pause_worker",
    "partition_worker",
    "restart_redis",
    "s3_outage",
    "duplicate_tasks",
    "kill_submit",
    "kill_bookkeeping_finalizing",
)
WORKER_TIMEOUT = 4.0


class Proxy:
    """A TCP proxy on loopback between one worker and Redis: ``cut`` drops every connection
    and refuses new ones until ``heal`` (a partition of that worker alone)."""

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.down = threading.Event()
        self.conns: set[socket.socket] = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def retarget(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self._drop()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if self.down.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()
            with self.lock:
                self.conns -= {src, dst}

    def _drop(self) -> None:
        with self.lock:
            conns, self.conns = list(self.conns), set()
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
                s.close()

    def cut(self) -> None:
        self.down.set()
        self._drop()

    def heal(self) -> None:
        self.down.clear()


class Receiver:
    """The webhook receiver: records every POST's delivery id; fails a seeded share."""

    def __init__(self, rng: random.Random, fail_share: float = 0.3):
        self.posts: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                failing = rng.random() < fail_share
                outer.posts.append({"delivery": body["delivery"], "job": body["job"],
                                    "failed": failing})  # fmt: skip
                self.send_response(503 if failing else 204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class Harness:
    def __init__(self, args: argparse.Namespace):
        import torch

        from workers.engine import random_state_dict

        self.args = args
        self.rng = random.Random(args.seed)
        self.folder = Path(tempfile.mkdtemp(prefix="sb-chaos-"))
        self.weights = self.folder / "vgg19-chaos.pth"
        torch.save(random_state_dict(1234), self.weights)
        self.sentinels = None
        if args.sentinel:
            from tests.support.services import SentinelSet

            self.sentinels = SentinelSet(self.folder / "sentinel")
            self.redis_port = self.sentinels.master()
        else:
            self.redis = RedisServer(self.folder, appendonly=True)
            self.redis_port = self.redis.port
        (self.folder / "s3").mkdir()
        self.s3 = S3Server(self.folder / "s3")
        self.receiver = Receiver(self.rng)
        self.env = self._env()
        self.store = JobStore.from_settings(self._settings())
        self.workers: dict[str, Worker] = {}
        self.proxies: dict[str, Proxy] = {}
        self.beat: subprocess.Popen | None = None
        self.faults: list[dict[str, Any]] = []
        self.jobs: set[str] = set()
        self.manifests: list[Path] = []

    # the fleet
    def _env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "STYLEBATCH_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "STYLEBATCH_S3_ENDPOINT": self.s3.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "STYLEBATCH_WEIGHTS": str(self.weights),
            "STYLEBATCH_MAX_TIME_LIMIT": "60",
            "STYLEBATCH_WORKER_TIMEOUT": str(WORKER_TIMEOUT),
            "STYLEBATCH_HEARTBEAT_INTERVAL": "1",
            "STYLEBATCH_WATCHDOG_INTERVAL": "1",
            "STYLEBATCH_STALL_AFTER": "6",
            "STYLEBATCH_CACHE_DIR": str(self.folder / "cache"),
            "STYLEBATCH_DEVICE": "cpu",
            "STYLEBATCH_WEBHOOK_ALLOWED": self.receiver.url.rsplit("/", 1)[0] + "/",
            "STYLEBATCH_WEBHOOK_SECRET": "chaos",
            "STYLEBATCH_WEBHOOK_BACKOFF": "0.5",
            "STYLEBATCH_WEBHOOK_RETRIES": "20",
            "STYLEBATCH_SCHEDULES": "s3://inputs/schedules/",
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT),
            "COLUMNS": "200",
        }
        if self.sentinels is not None:
            env.update(self.sentinels.env())
        return env

    def _settings(self) -> Any:
        from unittest import mock

        from common.settings import Settings

        keys = {k: v for k, v in self.env.items() if k.startswith(("STYLEBATCH_", "AWS_"))}
        with mock.patch.dict(os.environ, keys):
            return Settings.from_env()

    def start(self) -> None:
        from scheduler.cli.services import worker_commands

        self._inputs()
        commands = worker_commands([], "chaos", "INFO", cpu_workers=2)
        for argv, extra in commands:
            name = argv[argv.index("-n") + 1].split("@")[0]
            env = {**self.env, **extra}
            if name.startswith("cpu") and self.sentinels is None:
                self.proxies[name] = Proxy(self.redis_port)
                env["STYLEBATCH_REDIS_URL"] = f"redis://127.0.0.1:{self.proxies[name].port}/0"
            self.workers[name] = Worker(argv, env, self.folder / f"{name}.log")
        for worker in self.workers.values():
            worker.wait_ready(120)
        self._start_beat()

    def _start_beat(self) -> None:
        with open(self.folder / "beat.log", "ab") as log:
            self.beat = subprocess.Popen(
                [sys.executable, "-m", "scheduler.cli", "beat", "--loglevel", "INFO"],
                env=self.env,
                cwd=self.folder,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _inputs(self) -> None:
        import io

        from PIL import Image

        s3 = self.s3.client()
        for bucket in ("inputs", "outputs"):
            with contextlib.suppress(Exception):
                s3.create_bucket(Bucket=bucket)
        examples = ROOT / "examples" / "images"
        for path in sorted(examples.glob("*.jpg")):
            img = Image.open(path).convert("RGB")
            img.thumbnail((48, 48))
            buf = io.BytesIO()
            img.save(buf, "PNG")
            s3.put_object(Bucket="inputs", Key=f"img/{path.stem}.png", Body=buf.getvalue())
        s3.put_object(Bucket="inputs", Key="schedules/nightly.yaml", Body=self._manifest(
            "scheduled", 2, 2, schedule=True).encode())  # fmt: skip

    def _manifest(self, name: str, contents: int, styles: int, schedule: bool = False) -> str:
        import yaml

        names = ["tubingen", "shipwreck", "golden_gate", "composition_vii", "starry_night"]
        names = [n for n in names if (ROOT / "examples" / "images" / f"{n}.jpg").exists()]
        pool = [f"s3://inputs/img/{n}.png" for n in names]
        data: dict[str, Any] = {
            "name": name,
            "output": {
                "location": f"s3://outputs/{name}",
                "key": "{slot}/{content}/{style}-{size}.{ext}"
                if schedule
                else "{content}/{style}-{size}.{ext}",
            },
            "content": [pool[i % len(pool)] for i in range(contents)],
            "styles": [
                {
                    "name": f"s{j}",
                    "image": pool[(j + 1) % len(pool)],
                    "params": {"seed": j},
                }
                for j in range(styles)
            ],
            "params": {
                "preset": "draft",
                "sizes": [32, 40],
                "pyramid": {"start": 24, "ratio": 1.4, "iterations": 3},
            },
            "notify": {"webhook": self.receiver.url},
        }
        if len(set(data["content"])) < contents:  # distinct contents: vary by size instead
            data["content"] = sorted(set(data["content"]))
        if schedule:
            data["schedule"] = {"cron": "* * * * *", "timezone": "Europe/Berlin"}
        return yaml.safe_dump(data)

    def submit(self, name: str, contents: int, styles: int, kill_after: float | None = None) -> str:
        path = self.folder / f"{name}.yaml"
        if not path.exists():
            path.write_text(self._manifest(name, contents, styles))
            self.manifests.append(path)
        argv = [sys.executable, "-m", "scheduler.cli", "submit", str(path)]
        if kill_after is not None:
            proc = subprocess.Popen(argv, env=self.env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
            time.sleep(kill_after)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for _ in range(30):  # the operator (or cron) submits again until it goes through
            done = subprocess.run(argv, env=self.env, cwd=ROOT, capture_output=True, text=True,
                                  timeout=120)  # fmt: skip
            if done.returncode == 0:
                job = done.stdout.strip().splitlines()[-1]
                self.jobs.add(job)
                return job
            time.sleep(2)
        raise RuntimeError(f"submit of {name} never went through: {done.stderr[-500:]}")

    # faults
    def inject(self, kind: str) -> dict[str, Any]:
        rng = self.rng
        began = time.monotonic()
        render_workers = sorted(n for n in self.workers if n.startswith("cpu"))
        detail: dict[str, Any] = {}
        if kind == "kill_worker":
            name = rng.choice(render_workers)
            self.workers[name].kill()
            time.sleep(rng.uniform(0.5, 2))
            self.workers[name].start()
            detail["worker"] = name
        elif kind == "pause_worker":
            name = rng.choice(render_workers)
            pid = self.workers[name].proc.pid
            os.killpg(pid, signal.SIGSTOP)
            time.sleep(WORKER_TIMEOUT + rng.uniform(1.5, 4))  # reaped meanwhile
            os.killpg(pid, signal.SIGCONT)
            detail["worker"] = name
        elif kind == "partition_worker" and self.proxies:
            name = rng.choice(sorted(self.proxies))
            self.proxies[name].cut()
            time.sleep(WORKER_TIMEOUT + rng.uniform(0.5, 3))
            self.proxies[name].heal()
            detail["worker"] = name
        elif kind in ("restart_redis", "partition_worker") and self.sentinels is None:
            self.redis.stop()
            time.sleep(rng.uniform(0.5, 2))
            self.redis.start()
            kind = "restart_redis"
        elif kind in ("restart_redis", "failover_redis", "partition_worker"):
            from common.redis_client import planned_failover

            kind = "failover_redis"
            try:
                planned_failover(self._settings())  # writes paused, replicas caught up, switched
            except TimeoutError as exc:  # it gave up and unpaused: nothing changed
                kind, detail["error"] = "failover_gave_up", str(exc)
        elif kind == "s3_outage":
            self.s3.stop()
            time.sleep(rng.uniform(2, 8))
            self.s3.start()
        elif kind == "duplicate_tasks":
            detail["tasks"] = self._duplicate()
        elif kind == "kill_submit":
            n = len(self.manifests)
            name = f"killed-{n}"
            detail["job"] = self.submit(name, 3, 3, kill_after=rng.uniform(0.3, 2.5))
        elif kind == "kill_bookkeeping_finalizing":
            detail["finalizing"] = self._kill_bookkeeping_mid_finalize()
        fault = {"kind": kind, "at": time.time(), "seconds": time.monotonic() - began, **detail}
        self.faults.append(fault)
        return fault

    def _duplicate(self) -> int:
        """Publish the tasks of running and pending renders again, as a redelivery would."""
        from common.dispatch import enqueue
        from common.queue import make_app

        app = make_app(self._settings())
        sent = 0
        for job in sorted(self.jobs):
            info = self.store.get(job)
            if info is None or info.terminal:
                continue
            ids = self.store.with_status(job, "running") + self.store.with_status(job, "pending")
            if ids:
                sent += enqueue(app, job, self.store.specs(job, ids[:20]), 5, self._settings())
        return sent

    def _kill_bookkeeping_mid_finalize(self) -> bool:
        """Wait (a little) for a job to be finalizing, then SIGKILL the bookkeeping worker."""
        deadline = time.monotonic() + 20
        seen = False
        while time.monotonic() < deadline and not seen:
            seen = any(
                (i := self.store.get(j)) is not None and i.status == "finalizing"
                for j in self.store.active()
            )
            time.sleep(0.1)
        self.workers["bookkeeping"].kill()
        time.sleep(self.rng.uniform(0.5, 2))
        self.workers["bookkeeping"].start()
        return seen

    # progress
    def ended_total(self) -> int:
        try:
            return sum(int(v) for k, v in self.store.fleet_counters().items()
                       if k.startswith("renders_ended:"))  # fmt: skip
        except Exception:
            return -1

    def settle(self, timeout: float) -> bool:
        def ended() -> bool:
            return all((i := self.store.get(j)) is not None and i.terminal for j in self.jobs)

        def delivered() -> bool:  # deliveries go on after a job ends (retries, resends)
            infos = [self.store.get(j) for j in self.jobs]
            return all(
                i is None
                or not i.meta.get("webhook")
                or i.meta.get("webhook_status") == "delivered"
                for i in infos
            )

        try:
            wait_for(ended, timeout, "every job ended")
            wait_for(delivered, 180, "every webhook delivered")
            return True
        except TimeoutError:
            return False

    def stop_beat(self) -> None:
        if self.beat is not None and self.beat.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.beat.pid, signal.SIGTERM)
            self.beat.wait(20)
        time.sleep(1)

    def stop(self) -> None:
        self.stop_beat()
        for worker in self.workers.values():
            with contextlib.suppress(Exception):
                worker.stop()
        with contextlib.suppress(Exception):
            self.s3.stop()
        if self.sentinels is not None:
            self.sentinels.stop()
        else:
            with contextlib.suppress(Exception):
                self.redis.stop()


def check(h: Harness) -> dict[str, Any]:
    """The invariants, against Redis and S3; returns what was found."""
    store, s3 = h.store, h.s3.client()
    jobs = sorted(h.jobs | set(store.active()) | {j.job_id for j in store.jobs(limit=1000)})
    problems: list[str] = []
    lost = double = 0
    counted = 0
    objects: dict[str, dict[str, str]] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="outputs"):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if "/_jobs/" in key or key.endswith(("summary.json", "contact_sheet.png")):
                continue
            objects[key] = s3.head_object(Bucket="outputs", Key=key)["Metadata"]
    expected_outputs: dict[str, str] = {}
    for job in jobs:
        info = store.get(job)
        if info is None:
            problems.append(f"{job}: gone from Redis")
            continue
        if not info.terminal:
            problems.append(f"{job}: still {info.status}")
        states = store.states(job)
        specs = {r.id: r for r in store.specs(job)}
        by_status = Counter(s["status"] for s in states.values())
        ended = sum(info.count(s) for s in ("done", "skipped", "failed", "cancelled"))
        counted += ended
        unended = sum(n for s, n in by_status.items() if s in ("pending", "running"))
        lost += unended
        if ended != info.total or int(info.meta.get("ended", 0)) != info.total:
            double += max(0, ended - info.total)
            problems.append(f"{job}: ended {ended} of {info.total} ({dict(by_status)})")
        for s in ("done", "skipped", "failed", "cancelled"):
            if info.count(s) != by_status.get(s, 0):
                problems.append(f"{job}: n_{s} {info.count(s)} but {by_status.get(s, 0)} states")
        loc = info.location
        keys = {
            rid: (f"{loc.prefix}/{spec.key}" if loc.prefix else spec.key)
            for rid, spec in specs.items()
        }
        for rid, state in states.items():
            if state["status"] in ("done", "skipped"):
                expected_outputs[keys[rid]] = rid
        summary = _summary(s3, loc, job)
        if info.terminal and info.status != "failed":
            if summary is None:
                problems.append(f"{job}: no summary in S3")
                continue
            for record in summary["renders"]:
                rid = record["id"]
                if record["status"] != states.get(rid, {}).get("status"):
                    problems.append(f"{job}: summary says {rid} {record['status']}")
                meta = objects.get(keys.get(rid, ""), {})
                mine, theirs = record.get("seconds"), meta.get("seconds")
                agree = mine is None or not theirs or abs(float(theirs) - mine) <= 1e-6
                if record["status"] == "done" and not agree:
                    problems.append(f"{job}: {rid} took {mine} s in the summary, {theirs} in S3")
    for key, rid in expected_outputs.items():
        meta = objects.get(key)
        if meta is None:
            problems.append(f"output missing: {key}")
        elif meta.get("render-id") != rid:
            problems.append(f"{key} carries {meta.get('render-id')}, not {rid}")
    extra = sorted(set(objects) - set(expected_outputs))
    problems += [f"output of no done render: {k}" for k in extra]
    fleet = sum(int(v) for k, v in store.fleet_counters().items() if k.startswith("renders_ended:"))
    if fleet != counted:
        problems.append(f"fleet counted {fleet} render ends, the jobs {counted}")
        double += max(0, fleet - counted)
    deliveries: dict[str, set[str]] = defaultdict(set)
    for post in h.receiver.posts:
        deliveries[post["job"]].add(post["delivery"])
    for job in jobs:
        info = store.get(job)
        if info is None or not info.terminal or not info.meta.get("webhook"):
            continue
        ids = deliveries.get(job, set())
        if ids != {info.meta.get("webhook_delivery")} or info.meta.get("webhook_status") != (
            "delivered"
        ):
            problems.append(f"{job}: deliveries {sorted(ids)}, {info.meta.get('webhook_status')}")
    return {
        "jobs": len(jobs),
        "renders": sum((store.get(j).total if store.get(j) else 0) for j in jobs),
        "lost": lost,
        "double_counted": double,
        "superseded": int(store.fleet_counters().get("superseded", 0)),
        "webhook_posts": len(h.receiver.posts),
        "problems": problems,
    }


def _summary(s3: Any, loc: Any, job: str) -> dict[str, Any] | None:
    key = "/".join(p for p in (loc.prefix, "_jobs", job, "summary.json") if p)
    try:
        return json.loads(s3.get_object(Bucket=loc.root, Key=key)["Body"].read())
    except Exception:
        return None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--jobs", type=int, default=10, help="jobs submitted by hand")
    parser.add_argument("--faults", type=int, default=100)
    parser.add_argument("--short", action="store_true", help="the CI run: 3 jobs, each kind once")
    parser.add_argument("--sentinel", action="store_true", help="Redis as a Sentinel set")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.short:
        args.jobs, args.faults = 3, len(KINDS)
    h = Harness(args)
    started = time.monotonic()
    try:
        h.start()
        kinds = list(KINDS) + (["failover_redis"] if args.sentinel else [])
        schedule = [kinds[i % len(kinds)] for i in range(args.faults)]
        h.rng.shuffle(schedule)
        submitted = 0
        recovery: dict[str, list[float]] = defaultdict(list)
        for i, kind in enumerate(schedule):
            if submitted < args.jobs and (i % max(1, args.faults // args.jobs) == 0):
                size = h.rng.choice([(2, 4), (3, 5), (4, 6)])
                h.submit(f"job-{submitted}", *size)
                submitted += 1
            before = h.ended_total()
            fault = h.inject(kind)
            print(f"{time.monotonic() - started:7.1f} s  fault {i + 1:3d} {fault['kind']}",
                  flush=True)  # fmt: skip
            t0 = time.monotonic()
            deadline = t0 + (25 if args.short else 6)
            while time.monotonic() < deadline and h.ended_total() <= before:
                time.sleep(0.2)
            if h.ended_total() > before:
                recovery[fault["kind"]].append(time.monotonic() - t0)
        while submitted < args.jobs:
            h.submit(f"job-{submitted}", 2, 3)
            submitted += 1

        def slots_fired() -> int:
            return len([j for j in h.store.jobs(limit=1000) if j.meta.get("name") == "scheduled"])

        with contextlib.suppress(TimeoutError):  # a slot is due each minute: let one come
            wait_for(lambda: slots_fired() > 0, 100, "a scheduled slot")
        beat_alive = h.beat is not None and h.beat.poll() is None
        slots = slots_fired()
        h.stop_beat()  # no new slots: what fired so far must end
        h.jobs |= {j.job_id for j in h.store.jobs(limit=1000)}
        settled = h.settle(240 if args.short else 900)
        report = check(h)
        logs = {p.name: p.read_text(errors="replace") for p in h.folder.glob("*.log")}
        report["abandoned_stale"] = sum(
            t.count("was taken from this process") for n, t in logs.items() if n.startswith("cpu")
        )
        report["reaped"] = logs.get("bookkeeping.log", "").count("is silent; re-driven")
        if not beat_alive:
            report["problems"].append("beat died")
        if slots == 0:
            report["problems"].append("beat submitted no slot")
        report.update(
            beat_slots=slots,
            seed=args.seed,
            settled=settled,
            seconds=round(time.monotonic() - started, 1),
            faults=dict(Counter(f["kind"] for f in h.faults)),
            recovery_seconds={
                k: {"median": round(statistics.median(v), 2), "max": round(max(v), 2), "n": len(v)}
                for k, v in sorted(recovery.items())
            },
            machine=f"{os.cpu_count()} cores",
        )
    finally:
        h.stop()
    print(json.dumps({k: v for k, v in report.items() if k != "problems"}, indent=2))
    for problem in report["problems"][:40]:
        print("PROBLEM", problem)
    print(f"lost {report['lost']}, double-counted {report['double_counted']}, "
          f"problems {len(report['problems'])}, logs in {h.folder}")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    result = main()
    sys.exit(0 if not result["problems"] and result["settled"] else 1)
