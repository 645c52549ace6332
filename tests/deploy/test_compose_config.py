"""deploy/docker-compose.yml as Compose reads it (`docker-compose config`, no engine needed):
every secret is required by name, and env.example lists them all."""

from __future__ import annotations

import os
import re
import subprocess

from tests.support.paths import ROOT
from tests.support.tools import require

DEPLOY = ROOT / "deploy"


def test_compose_refuses_to_start_without_a_secret_and_names_it(tmp_path):
    """Each secret is `${NAME:?...}`: `up` (which interpolates as `config` does) stops before
    anything starts, naming what is missing."""
    require("docker-compose", "Compose 1.29; Debian: apt-get install docker-compose")
    example = (DEPLOY / "env.example").read_text()
    names = re.findall(r"^([A-Z_0-9]+)=", example, re.M)
    text = (DEPLOY / "docker-compose.yml").read_text()
    required = set(re.findall(r"(?<!\$)\$\{(\w+):\?", text))
    assert required and required <= set(names)  # env.example lists every one
    for missing in sorted(required):
        env_file = tmp_path / f"without-{missing}.env"
        env_file.write_text("".join(f"{n}=x\n" for n in names if n != missing))
        result = subprocess.run(
            [
                "docker-compose",
                "--env-file",
                str(env_file),
                "-f",
                "docker-compose.yml",
                "--profile",
                "cpu",
                "config",
                "-q",
            ],
            cwd=DEPLOY,
            capture_output=True,
            text=True,
            timeout=60,
            env={k: v for k, v in os.environ.items() if k not in names},
        )
        assert result.returncode != 0 and f"set {missing} in deploy/.env" in result.stderr
    env_file = tmp_path / "complete.env"
    env_file.write_text(example)
    result = subprocess.run(
        ["docker-compose", "--env-file", str(env_file), "-f", "docker-compose.yml", "config", "-q"],
        cwd=DEPLOY,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
