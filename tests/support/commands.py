"""The `stylebatch` command line in a process of its own, as a user or an operator runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.paths import ROOT


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT, timeout: float = 600
) -> subprocess.CompletedProcess:
    """The `stylebatch` command in a process of its own, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "scheduler.cli", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_cli_on(*args: str, url: str) -> subprocess.CompletedProcess:
    """The command against the Redis at ``url`` (STYLEBATCH_REDIS_URL)."""
    return run_cli(*args, env={"STYLEBATCH_REDIS_URL": url}, timeout=120)
