"""The Compose fleet of deploy/, for real: a Docker engine (started here where none runs), a
local Debian base image (no image can be pulled on the test machines), and the production
compose file with the smoke override, under a project name of its own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.paths import ROOT

DEPLOY = ROOT / "deploy"
CACHE = Path(os.environ.get("STYLEBATCH_CI_CACHE", Path.home() / ".cache" / "stylebatch-ci"))
BASE = "stylebatch-smoke-base:bookworm"
MIRROR = "http://deb.debian.org/debian"
PROJECT = "stylebatch-smoke"


class Unavailable(Exception):
    """Docker cannot run here; the reason says why."""


def _docker_ok() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class Engine:
    """The Docker engine: the one that runs, or one started here with its images kept in the
    CI cache (so that a second run rebuilds only what changed) and no iptables rules."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        if not shutil.which("docker-compose"):
            raise Unavailable("docker-compose (Compose 1.29, Debian's) is not installed")
        if _docker_ok():
            return
        missing = [t for t in ("docker", "dockerd") if not shutil.which(t)]
        if missing:
            raise Unavailable(
                f"not installed: {', '.join(missing)} (apt-get install docker.io "
                "docker-compose debootstrap)"
            )
        if os.geteuid() != 0:
            raise Unavailable("no Docker engine runs, and starting dockerd needs root")
        root = CACHE / "docker"
        root.mkdir(parents=True, exist_ok=True)
        log = open(CACHE / "dockerd.log", "ab")  # noqa: SIM115 - the engine's lifetime
        self.proc = subprocess.Popen(
            [
                "dockerd",
                "--data-root",
                str(root),
                "--iptables=false",
                "--ip-forward=false",
                "--ip-masq=false",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while not _docker_ok():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = (CACHE / "dockerd.log").read_text(errors="replace")[-600:]
                raise Unavailable(f"dockerd did not start: {tail}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def base_image() -> str:
    """A minimal Debian bookworm with Python 3.11 and this machine's CA files (pip and apt in a
    build go through its TLS proxy), made with debootstrap where the engine lacks it."""
    if subprocess.run(["docker", "image", "inspect", BASE], capture_output=True).returncode == 0:
        return BASE
    if not shutil.which("debootstrap"):
        raise Unavailable("no base image and no debootstrap to make one")
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3,python3-venv,ca-certificates",
                "bookworm",
                str(rootfs),
                MIRROR,
            ],
            check=True,
            capture_output=True,
        )
        for ca in Path("/usr/local/share/ca-certificates").glob("*.crt"):
            shutil.copy(ca, rootfs / "usr/local/share/ca-certificates" / ca.name)
        subprocess.run(
            ["chroot", str(rootfs), "update-ca-certificates"], check=True, capture_output=True
        )
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for f in (rootfs / junk).glob("*"):
                if f.is_file():
                    f.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(
            ["docker", "import", "-", BASE], stdin=tar.stdout, check=True, capture_output=True
        )
        tar.wait()
    return BASE


class ComposeFleet:
    """`docker-compose -p stylebatch-smoke -f docker-compose.yml -f smoke/...` with an env file
    and published ports of its own."""

    def __init__(self, folder: Path, env: dict[str, str], profiles: tuple[str, ...]):
        self.folder = folder
        self.env_file = folder / "smoke.env"
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        self.values = env
        self.base = [
            "docker-compose",
            "-p",
            PROJECT,
            "--env-file",
            str(self.env_file),
            "-f",
            str(DEPLOY / "docker-compose.yml"),
            "-f",
            str(DEPLOY / "smoke" / "docker-compose.smoke.yml"),
        ]
        for profile in profiles:
            self.base += ["--profile", profile]

    def compose(
        self, *args: str, check: bool = True, timeout: float = 600, **kw
    ) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [*self.base, *args], capture_output=True, text=True, timeout=timeout, cwd=DEPLOY, **kw
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"docker-compose {' '.join(args)}: exit {result.returncode}\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).stdout.strip()

    def inspect(self, service: str) -> dict:
        out = subprocess.run(
            ["docker", "inspect", self.container(service)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return json.loads(out)[0]

    def logs(self, service: str) -> str:
        """The service's whole log (across restarts), also kept in the test folder."""
        text = self.compose("logs", "--no-color", "--timestamps", service, check=False).stdout
        (self.folder / f"{service}.log").write_text(text)
        return text

    def stylebatch(
        self, *args: str, service: str = "bookkeeping", check: bool = True
    ) -> subprocess.CompletedProcess:
        """A stylebatch command inside a running scheduler-image container."""
        return self.compose("exec", "-T", service, "stylebatch", *args, check=check)

    def python(self, code: str, *args: str, service: str = "flower") -> str:
        return self.compose("exec", "-T", service, "python3", "-c", code, *args).stdout
