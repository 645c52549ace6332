"""Kubernetes probes for stylebatch pods (deploy/k8s/), run as exec probes:

    python -m common.health worker [--ready] [--node NAME ...]
    python -m common.health redis

``worker``: the worker processes of this pod are alive by the fleet's own test, their
heartbeat (workers/liveness.py). A render process beats from its first render on; a node whose
newest live process has a heartbeat older than STYLEBATCH_WORKER_TIMEOUT, or reported itself
unhealthy, fails: the watchdog already counts it dead. A node with no heartbeat yet (idle
since it started; the bookkeeping worker never beats) must answer a Celery ping. The nodes are
those `stylebatch worker` starts here (one per visible GPU, else ``cpu0``), or ``--node``.
When Redis cannot be reached the probe cannot tell: a liveness probe then passes (restarting
the pod would not bring Redis back, and would cut its render short), ``--ready`` fails.

``redis``: Redis answers (readiness of beat and `stylebatch metrics`).

Exit 0: healthy; 1: not; a line on stdout says why either way.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

from common.settings import Settings


def render_nodes() -> list[str]:
    """The render workers `stylebatch worker` starts on this host (workers/launch.py)."""
    from common.gpus import visible_gpus

    return [f"gpu{g}" for g in visible_gpus()] or ["cpu0"]


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def check_workers(
    settings: Settings, nodes: list[str], ready: bool, ping_timeout: float = 5.0
) -> tuple[bool, str]:
    from common.queue import make_app
    from common.state import JobStore

    host = socket.gethostname()
    names = [f"{n}@{host}" for n in nodes]
    try:
        roll = JobStore.from_settings(settings, retries=1).workers()
    except Exception as exc:  # Redis away: not this pod's fault
        return not ready, f"cannot read heartbeats ({type(exc).__name__}: {exc})"
    verdicts, silent = [], []
    for name in names:
        mine = []
        for owner, info in roll.items():
            parts = owner.split("|")  # node|host|pid|token (workers/liveness.py)
            if len(parts) == 4 and parts[:2] == [name, host] and _alive(parts[2]):
                mine.append(info)
        if not mine:
            silent.append(name)
            continue
        newest = min(mine, key=lambda i: i["age"])
        if not newest.get("healthy", True):
            return False, f"{name} reported itself unhealthy: {newest.get('reason', '?')}"
        if newest["age"] >= settings.worker_timeout:
            return False, f"{name}: heartbeat {newest['age']:.0f} s old (dead to the watchdog)"
        verdicts.append(f"{name} beat {newest['age']:.0f} s ago")
    if silent:  # no render yet: the worker itself must answer
        try:
            replies = make_app(settings).control.ping(destination=silent, timeout=ping_timeout)
        except Exception as exc:
            return not ready, f"cannot ping {', '.join(silent)} ({type(exc).__name__}: {exc})"
        answered = {name for reply in replies or [] for name in reply}
        missing = [n for n in silent if n not in answered]
        if missing:
            return False, f"no heartbeat and no answer to a ping from {', '.join(missing)}"
        verdicts += [f"{n} answered a ping" for n in silent]
    return True, "; ".join(verdicts)


def check_redis(settings: Settings) -> tuple[bool, str]:
    from common.state import JobStore

    try:
        JobStore.from_settings(settings, retries=1).now()
    except Exception as exc:
        return False, f"Redis unreachable ({type(exc).__name__}: {exc})"
    return True, "Redis answers"


def parser() -> argparse.ArgumentParser:
    out = argparse.ArgumentParser(
        prog="python -m common.health",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = out.add_subparsers(dest="what", required=True)
    worker = sub.add_parser("worker", help="this pod's workers are alive (heartbeat or ping)")
    worker.add_argument("--ready", action="store_true", help="fail when Redis is unreachable")
    worker.add_argument("--node", action="append", help="node name before @host (repeatable)")
    sub.add_parser("redis", help="Redis answers")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = Settings.from_env()
    if args.what == "worker":
        ok, why = check_workers(settings, args.node or render_nodes(), args.ready)
    else:
        ok, why = check_redis(settings)
    print(("ok: " if ok else "unhealthy: ") + why, flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
