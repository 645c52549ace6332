"""The command line, `stylebatch`: one module per concern (authoring, jobs, services), all
commands on one Typer app (scheduler/cli/common.py)."""

from __future__ import annotations

import sys

from scheduler.cli import authoring, jobs, services  # noqa: F401 (each registers its commands)
from scheduler.cli.common import EXIT_BLOCKED, EXIT_FAILED, app, err


def main() -> None:
    """The console entry: an unreachable Redis or broker is a message, not a traceback."""
    import redis
    from kombu.exceptions import OperationalError

    from common.settings import Settings

    try:
        app()
    except (redis.RedisError, OperationalError) as exc:
        url = Settings.from_env().redis_url
        safe = url.split("@")[-1] if "@" in url else url.split("//")[-1]
        err.print(f"[red]error:[/] Redis at {safe}: {type(exc).__name__}: {exc}", highlight=False)
        if "maxmemory" in str(exc):  # noeviction at its cap: nothing was written; it can pass
            err.print(
                "Redis is out of memory: the way out is in docs/operations.md, "
                '"Redis out of memory"',
                highlight=False,
            )
            sys.exit(EXIT_BLOCKED)
        sys.exit(EXIT_FAILED)


__all__ = ["app", "main"]
