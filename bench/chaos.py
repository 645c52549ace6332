"""Fault-injection harness: a real fleet under a seeded schedule of faults, then the
invariants checked against Redis and S3.

    python bench/chaos.py --seed 7 --jobs 12 --faults 100   # the long run
    python bench/chaos.py --seed 7 --jobs 12 --faults 100 --sentinel  # with lagging primaries
    python bench/chaos.py --seed 1 --short                  # CI's (tests/fleet/test_chaos.py;
    python bench/chaos.py --seed 3 --short --sentinel --kinds KIND,...  # and this one)

The fleet: Redis (append-only, fsync always), SeaweedFS, two CPU render workers (each
reaching Redis through a TCP proxy of its own, which a partition cuts), a bookkeeping worker
(watchdog, finalize, webhooks), `stylebatch beat` on an S3-sourced schedule due every minute,
and a webhook receiver that fails some deliveries (503) and hangs on some past the sender's
timeout. The fleet reaches S3 through one more proxy of the harness's, which can delay what
passes. A worker process that exits on its own is started again a second later and its exit
recorded (``worker_exits``), as an orchestrator's restart policy would. Several jobs are
submitted with `stylebatch submit` (some killed part way and submitted again, as a cron
retry would).

Faults, drawn from the seed (``KINDS``; ``--short`` injects each once): SIGKILL of a
worker's process group; SIGSTOP past the worker timeout, then SIGCONT; a partition of one
worker from Redis; a Redis restart; an S3 outage; duplicate deliveries of render tasks; a
submit killed mid-create; the bookkeeping worker killed mid-finalize; Redis out of memory
(maxmemory set just above what it uses, policy noeviction: writes refused with OOM for a few
seconds); S3 slow (every chunk held 3-8 s each way for 10-20 s); a worker restarted with its
clock two minutes off (libfaketime), then on the true one; an operator's command through the
CLI against a live job (cancel, retry, submit --force, gc of every ended job; ``--short``
runs all four, last). ``--kinds`` picks some kinds only. With ``--sentinel``, Redis is a
Sentinel set (primary, replica, three sentinels): a Redis restart and a partition become
planned failovers, and two kinds are added (``SENTINEL_KINDS``): a planned failover, and the
primary SIGKILLed while its replica is cut off, so that the sentinels promote a replica
lacking its last writes (``kill_primary_lagging``; there is no replica to lag without
Sentinel).

Invariants, once every job has ended (or the deadline passed): every job ended; each render
ended once and was counted once (per job and in the fleet's counters, which also count the
ends an operator's retry or --force undid); the outputs in S3 are exactly the done and
skipped renders, each carrying its render id; each summary agrees with Redis and with S3
(status per render, seconds of each output); one webhook delivery id per job end, however
often it was retried, and the last end of each job delivered (an end re-opened by `retry`
or replaced by `--force` may go undelivered: its delivery is stale once the job ends again).
A job `gc` deleted is checked as it was just before. Prints the faults by kind, recovery time
per kind, and lost and double-counted renders, and writes a JSON report with ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
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
    "redis_memory_pressure",
    "s3_latency",
    "skewed_clock",
    "operator_action",
)
# Only with --sentinel (Redis as a primary, a replica and three sentinels): a planned failover,
# and the primary SIGKILLed while its replica lags, so the promoted one lacks its last writes.
SENTINEL_KINDS = ("failover_redis", "kill_primary_lagging")
OPERATOR_COMMANDS = ("cancel", "retry", "force", "gc")
WORKER_TIMEOUT = 4.0
# a render's soft time limit is 80 % of this here (24 s; a render takes about a second): a
# few of its S3 calls held several seconds each way (s3_latency) can outlast it
MAX_TIME_LIMIT = 30
FAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
UNKNOWN_END = ""  # an end of a job whose delivery id the harness could not read


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


class DelayProxy(Proxy):
    """A TCP proxy on loopback between the fleet and S3 that holds every chunk, each way,
    ``delay`` seconds (latency, not bandwidth: chunks keep their order and are not slowed
    otherwise); 0 passes them at once. A stopped S3 behind it is refused as it would be."""

    def __init__(self, target_port: int):
        self.delay = 0.0
        super().__init__(target_port)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(None)  # a held request leaves its upstream socket idle for a while
        held: queue.SimpleQueue = queue.SimpleQueue()

        def send() -> None:
            try:
                while (item := held.get()) is not None:
                    due, data = item
                    time.sleep(max(0.0, due - time.monotonic()))
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    with contextlib.suppress(OSError):
                        s.close()
                with self.lock:
                    self.conns -= {src, dst}

        threading.Thread(target=send, daemon=True).start()
        try:
            while data := src.recv(65536):
                held.put((time.monotonic() + self.delay, data))
        except OSError:
            pass
        finally:
            held.put(None)  # what was read is still sent, then both ends close


class Receiver:
    """The webhook receiver: records every POST's delivery id; fails a seeded share (503) and
    hangs on another past the sender's 10 s timeout (then answers 204 to no one)."""

    HANG = 11.0

    def __init__(self, rng: random.Random, fail_share: float = 0.3, hang_share: float = 0.1):
        self.posts: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                draw = rng.random()
                failing, hanging = draw < fail_share, fail_share <= draw < fail_share + hang_share
                outer.posts.append({"delivery": body["delivery"], "job": body["job"],
                                    "failed": failing or hanging,
                                    "hung": hanging})  # fmt: skip
                if hanging:
                    time.sleep(outer.HANG)
                with contextlib.suppress(OSError):
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
        self.s3_proxy = DelayProxy(self.s3.port)  # the fleet's way to S3 (s3_latency)
        self.receiver = Receiver(self.rng)
        self.env = self._env()
        # the operator's command line (and submits) reach S3 directly, not through the proxy
        self.cli_env = {**self.env, "STYLEBATCH_S3_ENDPOINT": self.s3.endpoint}
        self.store = JobStore.from_settings(self._settings())
        self.workers: dict[str, Worker] = {}
        self.proxies: dict[str, Proxy] = {}
        self.beat: subprocess.Popen | None = None
        self.faults: list[dict[str, Any]] = []
        self.jobs: set[str] = set()
        self.manifests: list[Path] = []
        self.manifest_of: dict[str, Path] = {}  # job id -> the manifest submitted by hand
        # what operators did that the invariants must account for (operator_action):
        self.reopened: Counter[str] = Counter()  # render ends undone: retried, or --force
        self.ends: dict[str, set[str]] = defaultdict(set)  # earlier ends' delivery ids
        self.gone: dict[str, dict[str, Any] | None] = {}  # deleted by gc: its last state
        # the orchestrator's part (a restart policy): a worker process that exits on its own
        # is started again a second later, and its exit recorded
        self.exits: list[dict[str, Any]] = []
        self.hands_on: set[str] = set()  # workers a fault is stopping or starting itself
        self.stopping = threading.Event()

    # the fleet
    def _env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "STYLEBATCH_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "STYLEBATCH_S3_ENDPOINT": f"http://127.0.0.1:{self.s3_proxy.port}",
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "STYLEBATCH_WEIGHTS": str(self.weights),
            "STYLEBATCH_MAX_TIME_LIMIT": str(MAX_TIME_LIMIT),
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
        threading.Thread(target=self._supervise, daemon=True).start()

    def _supervise(self) -> None:
        while not self.stopping.wait(0.5):
            for name, worker in list(self.workers.items()):
                if name in self.hands_on or worker.proc.poll() is None:
                    continue
                self.exits.append({"worker": name, "status": worker.proc.returncode,
                                   "at": round(time.time(), 1)})  # fmt: skip
                time.sleep(1)
                if name not in self.hands_on and not self.stopping.is_set():
                    worker.start()

    @contextlib.contextmanager
    def handling(self, name: str) -> Any:
        """A fault stops and starts this worker itself meanwhile: the supervisor keeps off."""
        self.hands_on.add(name)
        try:
            yield self.workers[name]
        finally:
            self.hands_on.discard(name)

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

    def _manifest(
        self, name: str, contents: int, styles: int, schedule: bool = False, priority: int = 5
    ) -> str:
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
            "priority": priority,
        }
        if len(set(data["content"])) < contents:  # distinct contents: vary by size instead
            data["content"] = sorted(set(data["content"]))
        if schedule:
            data["schedule"] = {"cron": "* * * * *", "timezone": "Europe/Berlin"}
        return yaml.safe_dump(data)

    def submit(
        self,
        name: str,
        contents: int,
        styles: int,
        kill_after: float | None = None,
        priority: int = 5,
    ) -> str:
        path = self.folder / f"{name}.yaml"
        if not path.exists():
            path.write_text(self._manifest(name, contents, styles, priority=priority))
            self.manifests.append(path)
        argv = [sys.executable, "-m", "scheduler.cli", "submit", str(path)]
        if kill_after is not None:
            proc = subprocess.Popen(argv, env=self.cli_env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
            time.sleep(kill_after)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for _ in range(30):  # the operator (or cron) submits again until it goes through
            done = subprocess.run(argv, env=self.cli_env, cwd=ROOT, capture_output=True,
                                  text=True, timeout=120)  # fmt: skip
            if done.returncode == 0:
                job = done.stdout.strip().splitlines()[-1]
                self.jobs.add(job)
                self.manifest_of[job] = path
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
            with self.handling(name) as worker:
                worker.kill()
                time.sleep(rng.uniform(0.5, 2))
                worker.start()
            detail["worker"] = name
        elif kind == "pause_worker":
            name = rng.choice(render_workers)
            with self.handling(name) as worker:
                if worker.proc.poll() is not None:  # it exited on its own: started again first
                    worker.start()
                pid = worker.proc.pid
                try:
                    os.killpg(pid, signal.SIGSTOP)
                    time.sleep(WORKER_TIMEOUT + rng.uniform(1.5, 4))  # reaped meanwhile
                    os.killpg(pid, signal.SIGCONT)
                except ProcessLookupError:  # it exited meanwhile: the supervisor's to restart
                    detail["exited"] = True
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
        elif kind == "kill_primary_lagging" and self.sentinels is not None:
            detail.update(self._kill_primary_lagging())
        elif kind == "redis_memory_pressure":
            detail.update(self._memory_pressure())
        elif kind == "s3_latency":
            detail.update(self._s3_latency())
        elif kind == "skewed_clock":
            detail.update(self._skewed_clock(render_workers))
        elif kind == "operator_action":
            detail["actions"] = self._operator_action()
        else:
            raise ValueError(f"fault kind {kind} cannot be injected here (--sentinel?)")
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
        deadline = time.monotonic() + (10 if self.args.short else 20)
        seen = False
        while time.monotonic() < deadline and not seen:
            seen = any(
                (i := self.store.get(j)) is not None and i.status == "finalizing"
                for j in self.store.active()
            )
            time.sleep(0.1)
        with self.handling("bookkeeping") as worker:
            worker.kill()
            time.sleep(self.rng.uniform(0.5, 2))
            worker.start()
        return seen

    def _primary(self) -> Any:
        """A client of the Redis primary itself (no retries: a fault's own moves)."""
        import redis

        if self.sentinels is not None:
            return self.sentinels.node(self.sentinels.master())
        return redis.Redis(port=self.redis.port, decode_responses=True)

    def _kill_primary_lagging(self) -> dict[str, Any]:
        """Cut replication while the fleet goes on writing to the primary, then SIGKILL the
        primary: the sentinels promote a replica that lacks the primary's last writes
        (acknowledged to their clients, never replicated: what Redis's asynchronous
        replication loses in a crash). Each replica is SIGSTOPped, then the primary drops its
        link (CLIENT KILL TYPE replica: what it had sent, already in the replica's socket
        buffer, is applied on SIGCONT; what it writes after, is not). The old primary comes
        back empty and the sentinels make it a replica of the new one."""
        from common.state.keys import METRICS

        def ends(node: Any) -> int:
            counters = node.hgetall(METRICS)
            return sum(int(v) for k, v in counters.items() if k.startswith("renders_ended:"))

        ss = self.sentinels
        old = ss.master()
        replicas = [p for p, proc in ss.nodes.items() if p != old and proc.poll() is None]
        primary = ss.node(old)
        for port in replicas:
            ss.nodes[port].send_signal(signal.SIGSTOP)
        try:
            primary.client_kill_filter(_type="replica")
            offset = int(primary.info("replication")["master_repl_offset"])
            before = ends(primary)
            time.sleep(self.rng.uniform(2, 5))  # transitions, acknowledged by the primary only
            primary.set("chaos:lost-with-the-primary", "1")
            unreplicated = int(primary.info("replication")["master_repl_offset"]) - offset
            at_kill = ends(primary)
            ss.nodes[old].kill()
            ss.nodes[old].wait(10)
        finally:
            for port in replicas:
                ss.nodes[port].send_signal(signal.SIGCONT)
        time.sleep(0.5)  # the replicas apply what they had received; none is promoted yet
        kept = min(ends(ss.node(port)) for port in replicas)
        new = ss.wait_master(not_at=old, timeout=90)
        lagged = not ss.node(new).exists("chaos:lost-with-the-primary")
        ss.start_node(old)  # empty (no persistence), until the sentinels make it a replica
        ss.wait_following(old, 90)
        return {
            "primary": old,
            "promoted": new,
            "unreplicated_bytes": unreplicated,
            "render_ends_on_primary_only": at_kill - before,
            "render_ends_lost": at_kill - kept,
            "last_write_lost": lagged,  # else the fault did not do what it says
        }

    def _memory_pressure(self) -> dict[str, Any]:
        """Redis's maxmemory set just above the memory it uses (its policy stays noeviction),
        so writes that would grow it are refused with OOM for a few seconds; then lifted."""
        node = self._primary()

        def refused() -> int:
            return int(node.info("errorstats").get("errorstat_OOM", {}).get("count", 0))

        before = refused()
        limit = int(node.info("memory")["used_memory"]) + self.rng.randint(1, 8) * 1024
        node.config_set("maxmemory", limit)
        try:
            time.sleep(self.rng.uniform(3, 8))
        finally:
            node.config_set("maxmemory", 0)
        return {"maxmemory": limit, "oom_refused": refused() - before}

    def _s3_latency(self) -> dict[str, Any]:
        """Every chunk between the fleet and S3 held several seconds each way for a while: a
        render's few S3 calls add up toward its soft time limit."""
        delay = round(self.rng.uniform(3, 8), 1)
        self.s3_proxy.delay = delay
        try:
            time.sleep(self.rng.uniform(8, 12) if self.args.short else self.rng.uniform(10, 20))
        finally:
            self.s3_proxy.delay = 0.0
        return {"delay_each_way": delay}

    def _restart(self, name: str, env: dict[str, str]) -> None:
        """Stop a worker (warm: its render finishes, or it is killed after 20 s) and start it
        again with ``env``; wait until it is ready again."""
        with self.handling(name) as worker:
            worker.stop()
            mark = worker.log.stat().st_size
            worker.env = env
            worker.start()
        wait_for(lambda: b"ready." in worker.log.read_bytes()[mark:], 120, f"{name} restarted")

    def _skewed_clock(self, render_workers: list[str]) -> dict[str, Any]:
        """One worker (a render worker or bookkeeping) restarted with its wall clock (and
        monotonic clock) two minutes off (libfaketime), left to work a while, then restarted
        on the true clock. The fleet's state keeps Redis's clock; what the worker's own clock
        still decides (Celery's countdowns and ETAs, kombu's unacked timestamps, the S3
        request signatures) meets the others' clocks."""
        if not Path(FAKETIME).exists():
            raise RuntimeError(f"{FAKETIME} missing: apt-get install libfaketime")
        name = self.rng.choice([*render_workers, "bookkeeping"])
        skew = self.rng.choice(["+120s", "-120s"])
        env = self.workers[name].env
        skewed = {**env, "LD_PRELOAD": FAKETIME, "FAKETIME": skew}
        mark = self.workers[name].log.stat().st_size
        self._restart(name, skewed)
        began = time.monotonic()
        time.sleep(self.rng.uniform(5, 8) if self.args.short else self.rng.uniform(10, 30))
        ran = time.monotonic() - began
        self._restart(name, env)
        log = self.workers[name].log.read_bytes()[mark:].decode(errors="replace")
        return {"worker": name, "skew": skew, "seconds_skewed": round(ran, 1),
                "tasks_while_skewed": log.count(" succeeded in ")}  # fmt: skip

    # operators
    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "scheduler.cli", *args], env=self.cli_env,
                              cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip

    def _live_job(self) -> str | None:
        """A random job still running (one submitted by hand first: --force needs its
        manifest), or None."""
        infos = [(j, self.store.get(j)) for j in sorted(self.jobs - set(self.gone))]
        running = [j for j, i in infos if i is not None and i.status == "running"]
        for pool in ([j for j in running if j in self.manifest_of], running):
            if pool:
                return self.rng.choice(pool)
        return None

    def _operator_action(self) -> list[dict[str, Any]]:
        """An operator's command through the real CLI against a random live job: cancel it,
        retry it, submit its manifest again with --force (refused while it runs: cancel it
        first), or gc every ended job. --short runs all four on a small urgent job of its own:
        cancel, --force (refused), retry once the cancel has ended it (re-opened), gc."""
        job = None if self.args.short else self._live_job()
        if job is None:  # nothing running: one to act on
            job = self.submit(f"ops-{len(self.manifests)}", 2, 2, priority=9)
        if not self.args.short:
            return [self._operate(self.rng.choice(OPERATOR_COMMANDS), job)]
        done = [self._operate("cancel", job), self._operate("force", job)]
        with contextlib.suppress(TimeoutError):
            wait_for(lambda: self.store.get(job).terminal, 30, f"{job} ended")
        return [*done, self._operate("retry", job), self._operate("gc", job)]

    def _delivery(self, job: str) -> str | None:
        info = self.store.get(job)
        return info.meta.get("webhook_delivery") if info is not None else None

    def _operate(self, command: str, job: str | None) -> dict[str, Any]:
        done: subprocess.CompletedProcess | None = None
        record: dict[str, Any] = {"command": command, "job": job}
        if command == "cancel" and job:
            done = self.cli("cancel", job)
        elif command == "retry" and job:
            before = self._delivery(job)
            done = self.cli("retry", job)
            found = re.search(r"re-enqueued (\d+)", done.stdout)
            if found and int(found[1]):  # a job re-opened: its last end (if any) is an earlier one
                record["reopened"] = int(found[1])
                self.reopened[job] += int(found[1])
                self.ends[job] |= {d for d in (before, self._delivery(job)) if d}
        elif command == "force" and job in self.manifest_of:
            info = self.store.get(job)
            before = self._delivery(job) if info is not None and info.terminal else None
            done = self.cli("submit", str(self.manifest_of[job]), "--force")
            if done.returncode == 0 and "submitted " in done.stdout and info is not None:
                # the ended job deleted and made again: every render of the old one had ended
                record["reopened"] = info.total
                self.reopened[job] += info.total
                self.ends[job].add(before or UNKNOWN_END)
        elif command == "gc":
            done, record["deleted"] = self._gc()
        if done is None:
            record["skipped"] = "no job to act on"
            return record
        record["rc"] = done.returncode
        record["said"] = (done.stdout.strip() or done.stderr.strip()).splitlines()[-1:]
        return record

    def _gc(self) -> tuple[subprocess.CompletedProcess, list[str]]:
        """`stylebatch gc --older-than-days 0`: every ended job deleted now. What each deleted
        job was is kept (read just before) for the invariants; a job that ended between that
        read and the gc is known by its summary in S3 alone."""
        every = self.jobs | {j.job_id for j in self.store.jobs(limit=1000)}
        snapshots = {}
        for job in sorted(every - set(self.gone)):
            info = self.store.get(job)
            if info is not None and info.terminal:
                snapshots[job] = {"info": info, "states": self.store.states(job),
                                  "specs": self.store.specs(job)}  # fmt: skip
        done = self.cli("gc", "--older-than-days", "0")
        deleted = [j for j in sorted(every - set(self.gone)) if self.store.get(j) is None]
        for job in deleted:
            self.gone[job] = snapshots.get(job)  # None: it ended meanwhile
        return done, deleted

    # progress
    def rendering(self) -> bool:
        """Whether some job has renders still to end (a fault can then hold them up)."""
        try:
            return any(
                (i := self.store.get(j)) is not None and i.status == "running"
                for j in self.store.active()
            )
        except Exception:
            return True

    def ended_total(self) -> int:
        try:
            return sum(int(v) for k, v in self.store.fleet_counters().items()
                       if k.startswith("renders_ended:"))  # fmt: skip
        except Exception:
            return -1

    def settle(self, timeout: float) -> bool:
        def ended() -> bool:
            return all(
                (i := self.store.get(j)) is not None and i.terminal
                for j in self.jobs - set(self.gone)
            )

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
        self.stopping.set()
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


@dataclass
class View:
    """A job as the invariants see it: from Redis, or, for a job `gc` deleted, from what the
    harness read just before (or, where it ended in between, from its summary in S3)."""

    job: str
    status: str
    total: int
    counts: dict[str, int]  # the job's own counters: n_done, n_skipped, ...
    ended: int  # its count of ended renders
    states: dict[str, str]  # render id -> status
    keys: dict[str, str]  # render id -> its output's key in the outputs bucket
    summary: dict[str, Any] | None
    webhook: bool
    delivery: str  # its last end's delivery id (UNKNOWN_END: not known)
    delivered: bool  # Redis says that delivery was made
    source: str = "redis"

    @property
    def terminal(self) -> bool:
        return self.status in ("done", "cancelled", "failed", "gone")


def _view(s3: Any, job: str, info: Any, states: Any, specs: Any, source: str) -> View:
    loc = info.location
    keys = {r.id: (f"{loc.prefix}/{r.key}" if loc.prefix else r.key) for r in specs}
    return View(
        job=job,
        status=info.status,
        total=info.total,
        counts={s: info.count(s) for s in ("done", "skipped", "failed", "cancelled")},
        ended=int(info.meta.get("ended", 0)),
        states={rid: st["status"] for rid, st in states.items()},
        keys=keys,
        summary=_summary(s3, loc, job),
        webhook=bool(info.meta.get("webhook")),
        delivery=info.meta.get("webhook_delivery", UNKNOWN_END),
        delivered=info.meta.get("webhook_status") == "delivered",
        source=source,
    )


def _view_of_summary(job: str, summary: dict[str, Any], bucket: str) -> View:
    """A deleted job known only by the summary its last finalize wrote."""
    records = summary["renders"]
    states = {r["id"]: r["status"] for r in records}
    counts = Counter(states.values())
    return View(
        job=job,
        status="gone",
        total=len(records),
        counts={s: counts.get(s, 0) for s in ("done", "skipped", "failed", "cancelled")},
        ended=len(records),
        states=states,
        keys={r["id"]: r["uri"].removeprefix(f"s3://{bucket}/") for r in records},
        summary=summary,
        webhook=True,
        delivery=UNKNOWN_END,
        delivered=True,
        source="summary",
    )


def check(h: Harness) -> dict[str, Any]:
    """The invariants, against Redis and S3; returns what was found. Operators' moves are
    accounted for: a job `retry` re-opened ends again (its re-opened renders are counted
    again by the fleet), a job `submit --force` replaced ends again (the old one's renders
    were counted), and a job `gc` deleted is checked as it was when it went."""
    store, s3 = h.store, h.s3.client()
    jobs = sorted(h.jobs | set(store.active()) | {j.job_id for j in store.jobs(limit=1000)})
    jobs = sorted(set(jobs) | set(h.gone))
    problems: list[str] = []
    lost = double = 0
    counted = 0
    objects: dict[str, dict[str, str]] = {}
    summaries: dict[str, str] = {}  # job -> its summary's key
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="outputs"):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if "/_jobs/" in key and key.endswith("/summary.json"):
                summaries[key.rsplit("/", 2)[-2]] = key
            if "/_jobs/" in key or key.endswith(("summary.json", "contact_sheet.png")):
                continue
            objects[key] = s3.head_object(Bucket="outputs", Key=key)["Metadata"]
    views: dict[str, View] = {}
    for job in jobs:
        if job in h.gone:
            snap = h.gone[job]
            if snap is not None:
                views[job] = _view(s3, job, snap["info"], snap["states"], snap["specs"], "gc")
                views[job].delivered = True  # Redis no longer says: the receiver does
            elif job in summaries:
                body = s3.get_object(Bucket="outputs", Key=summaries[job])["Body"].read()
                views[job] = _view_of_summary(job, json.loads(body), "outputs")
            else:
                problems.append(f"{job}: deleted by gc, and no summary in S3")
            continue
        info = store.get(job)
        if info is None:
            problems.append(f"{job}: gone from Redis")
            continue
        views[job] = _view(s3, job, info, store.states(job), store.specs(job), "redis")
    expected_outputs: dict[str, str] = {}
    for job, v in views.items():
        if not v.terminal:
            problems.append(f"{job}: still {v.status}")
        by_status = Counter(v.states.values())
        ended = sum(v.counts.values())
        counted += ended
        lost += sum(n for s, n in by_status.items() if s in ("pending", "running"))
        if ended != v.total or v.ended != v.total:
            double += max(0, ended - v.total)
            problems.append(f"{job}: ended {ended} of {v.total} ({dict(by_status)})")
        for s, n in v.counts.items():
            if n != by_status.get(s, 0):
                problems.append(f"{job}: n_{s} {n} but {by_status.get(s, 0)} states")
        for rid, status in v.states.items():
            if status in ("done", "skipped"):
                expected_outputs[v.keys[rid]] = rid
        if v.terminal and v.status != "failed":
            if v.summary is None:
                problems.append(f"{job}: no summary in S3")
                continue
            for record in v.summary["renders"]:
                rid = record["id"]
                if record["status"] != v.states.get(rid):
                    problems.append(f"{job}: summary says {rid} {record['status']}")
                meta = objects.get(v.keys.get(rid, ""), {})
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
    # the fleet's counters count every render end, those operators undid too
    reopened = sum(h.reopened.values())
    fleet = sum(int(v) for k, v in store.fleet_counters().items() if k.startswith("renders_ended:"))
    if fleet != counted + reopened:
        problems.append(f"fleet counted {fleet} render ends, the jobs {counted} (and "
                        f"{reopened} undone by operators)")  # fmt: skip
        double += max(0, fleet - counted - reopened)
    # one delivery id per job end: the last end's delivered; an id of no known end is a
    # second end (an earlier end re-opened by an operator may never have been delivered:
    # its delivery is stale once the job ends again, by design)
    deliveries: dict[str, set[str]] = defaultdict(set)
    made: dict[str, set[str]] = defaultdict(set)
    for post in h.receiver.posts:
        deliveries[post["job"]].add(post["delivery"])
        if not post["failed"]:
            made[post["job"]].add(post["delivery"])
    undelivered_earlier = 0
    for job, v in views.items():
        if not v.terminal or not v.webhook:
            continue
        ids = deliveries.get(job, set())
        earlier = h.ends.get(job, set())
        unknown = (UNKNOWN_END in earlier) + (v.delivery == UNKNOWN_END)
        strangers = ids - earlier - {v.delivery}
        undelivered_earlier += len((earlier - {UNKNOWN_END}) - ids)
        if len(strangers) > unknown:
            problems.append(f"{job}: deliveries {sorted(ids)} for ends "
                            f"{sorted(earlier | {v.delivery})}")  # fmt: skip
        if v.delivery != UNKNOWN_END and (v.delivery not in made[job] or not v.delivered):
            why = f"{v.source}: {sorted(ids)}, last end {v.delivery}"
            problems.append(f"{job}: its last end not delivered ({why})")
        if v.delivery == UNKNOWN_END and not made[job]:
            problems.append(f"{job}: no delivery made ({v.source})")
    return {
        "jobs": len(views),
        "renders": sum(v.total for v in views.values()),
        "lost": lost,
        "double_counted": double,
        "superseded": int(store.fleet_counters().get("superseded", 0)),
        "webhook_posts": len(h.receiver.posts),
        "webhook_posts_hung": sum(p["hung"] for p in h.receiver.posts),
        "reopened_by_operators": reopened,
        "deleted_by_gc": len(h.gone),
        "earlier_ends_not_delivered": undelivered_earlier,
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
    parser.add_argument(
        "--kinds", help="only these fault kinds (comma-separated; default: every kind there is)"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    kinds = list(KINDS) + (list(SENTINEL_KINDS) if args.sentinel else [])
    if args.kinds:
        wanted = [k.strip() for k in args.kinds.split(",") if k.strip()]
        for kind in wanted:
            if kind not in kinds:
                extra = " (with --sentinel)" if kind in SENTINEL_KINDS else ""
                parser.error(f"--kinds: {kind} is no fault kind here{extra}: {', '.join(kinds)}")
        kinds = wanted
    if args.short:
        args.jobs, args.faults = 3, len(kinds)
    h = Harness(args)
    started = time.monotonic()
    try:
        h.start()
        schedule = [kinds[i % len(kinds)] for i in range(args.faults)]
        h.rng.shuffle(schedule)
        if args.short and "operator_action" in schedule:  # last: its gc meets ended jobs
            schedule.remove("operator_action")
            schedule.append("operator_action")
        submitted = 0
        recovery: dict[str, list[float]] = defaultdict(list)
        for i, kind in enumerate(schedule):
            due = i % max(1, args.faults // args.jobs) == 0
            if submitted < args.jobs and (due or not h.rendering()):  # faults meet renders
                sizes = [(2, 3), (2, 4), (3, 4)] if args.short else [(2, 4), (3, 5), (4, 6)]
                size = h.rng.choice(sizes)
                h.submit(f"job-{submitted}", *size)
                submitted += 1
            before = h.ended_total()
            fault = h.inject(kind)
            said = {k: v for k, v in fault.items() if k not in ("kind", "at", "seconds")}
            print(f"{time.monotonic() - started:7.1f} s  fault {i + 1:3d} {fault['kind']} "
                  f"({fault['seconds']:.1f} s) {json.dumps(said) if said else ''}",
                  flush=True)  # fmt: skip
            t0 = time.monotonic()
            deadline = t0 + (25 if args.short else 6)
            while time.monotonic() < deadline and h.ended_total() <= before and h.rendering():
                time.sleep(0.2)
            if h.ended_total() > before:
                recovery[fault["kind"]].append(time.monotonic() - t0)
        while submitted < args.jobs:
            h.submit(f"job-{submitted}", 2, 3)
            submitted += 1

        faults_over = time.monotonic() - started

        def slots_fired() -> int:  # those gc deleted too
            fired = {j.job_id for j in h.store.jobs(limit=1000) if j.meta["name"] == "scheduled"}
            return len(fired | {j for j in h.gone if j.startswith("scheduled-")})

        with contextlib.suppress(TimeoutError):  # a slot is due each minute: let one come
            wait_for(lambda: slots_fired() > 0, 100, "a scheduled slot")
        beat_alive = h.beat is not None and h.beat.poll() is None
        slots = slots_fired()
        h.stop_beat()  # no new slots: what fired so far must end
        h.jobs |= {j.job_id for j in h.store.jobs(limit=1000)}
        settling = time.monotonic()
        # (kombu's unacked_mutex, left held by a consumer killed or cut off by a failover,
        # stops every worker restoring unacknowledged messages for its 300 s expiry: a task
        # delivered to a worker killed before it claimed its render waits that long)
        settled = h.settle(360 if args.short else 900)
        settling = time.monotonic() - settling
        report = check(h)
        logs = {p.name: p.read_text(errors="replace") for p in h.folder.glob("*.log")}
        report["abandoned_stale"] = sum(
            t.count("was taken from this process") for n, t in logs.items() if n.startswith("cpu")
        )
        report["reaped"] = logs.get("bookkeeping.log", "").count("is silent; re-driven")
        report["soft_time_limits"] = sum(t.count("Soft time limit (") for t in logs.values())
        report["hard_time_limits"] = sum(t.count("Hard time limit (") for t in logs.values())
        report["worker_exits"] = h.exits  # exits of their own: the orchestrator restarted them
        if not beat_alive:
            report["problems"].append("beat died")
        for fault in h.faults:
            if fault["kind"] == "kill_primary_lagging" and not fault["last_write_lost"]:
                report["problems"].append(f"harness: the promoted replica had it all: {fault}")
        if slots == 0:
            report["problems"].append("beat submitted no slot")
        report.update(
            beat_slots=slots,
            seed=args.seed,
            settled=settled,
            seconds=round(time.monotonic() - started, 1),
            seconds_to_last_fault=round(faults_over, 1),
            seconds_settling=round(settling, 1),
            faults=dict(Counter(f["kind"] for f in h.faults)),
            fault_log=h.faults,
            recovery_seconds={
                k: {"median": round(statistics.median(v), 2), "max": round(max(v), 2), "n": len(v)}
                for k, v in sorted(recovery.items())
            },
            machine=f"{os.cpu_count()} cores",
        )
    finally:
        h.stop()
    print(json.dumps({k: v for k, v in report.items() if k not in ("problems", "fault_log")},
                     indent=2))  # fmt: skip
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
