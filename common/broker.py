"""The broker's message layout, known here and nowhere else: how kombu's Redis transport keeps
queues (one list per priority step, ``sep`` between queue name and step), where it keeps
delivered but unacknowledged messages, and how a task message carries its arguments. The
reconciler, the metrics endpoint and KEDA's triggers (deploy/k8s/keda.yaml, checked by a
test) read queues through this module; tests/integration/test_redis_layout.py checks it against
the installed kombu. It only reads."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Iterator
from typing import Any

PRIORITY_STEPS = tuple(range(10))  # kombu's priority steps: one Redis list each
SEP = ":"  # broker_transport_options["sep"] (common/queue.py)
UNACKED = "unacked"  # kombu's hash of delivered, unacknowledged messages
UNACKED_INDEX = "unacked_index"


def queue_key(queue: str, priority: int) -> str:
    """The Redis list holding ``queue``'s messages of one priority step (0 is served first)."""
    return queue if priority == 0 else f"{queue}{SEP}{priority}"


def queue_keys(queue: str) -> list[str]:
    return [queue_key(queue, p) for p in PRIORITY_STEPS]


def task_kwargs(raw: str | bytes) -> dict[str, Any] | None:
    """A task message's keyword arguments (JSON bodies, base64 or not), or None."""
    try:
        message = json.loads(raw)
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        _, kwargs, _ = json.loads(body)
        return kwargs if isinstance(kwargs, dict) else None
    except (ValueError, KeyError, TypeError):
        return None


def sent_at(raw: str | None) -> float | None:
    """When a message was sent (the ``sent_at`` header submit adds), or None."""
    if not raw:
        return None
    try:
        return float(json.loads(raw)["headers"]["sent_at"])
    except (ValueError, KeyError, TypeError):
        return None


def _messages(read: Any, queue: str) -> Iterator[str]:
    for key in queue_keys(queue):
        length = read.llen(key)
        for start in range(0, length, 500):
            yield from read.lrange(key, start, start + 499)
    for _, raw in read.hscan_iter(UNACKED, count=500):
        with contextlib.suppress(ValueError, IndexError, TypeError):
            yield json.dumps(json.loads(raw)[0])  # (message, exchange, routing key)


def queued_jobs(read: Any, queue: str) -> set[str]:
    """Jobs with a task of ``queue`` waiting in the broker or delivered and not yet
    acknowledged."""
    return {
        kwargs["job_id"]
        for raw in _messages(read, queue)
        if (kwargs := task_kwargs(raw)) and "job_id" in kwargs
    }


def depths(read: Any, queues: list[str]) -> list[tuple[str, int, int, float | None]]:
    """(queue, priority step, length, oldest message's send time) for each list, in one round
    trip. Messages are LPUSHed, so the oldest is last."""
    keys = [(q, p) for q in queues for p in PRIORITY_STEPS]
    pipe = read.pipeline()
    for queue, priority in keys:
        pipe.llen(queue_key(queue, priority))
        pipe.lindex(queue_key(queue, priority), -1)
    replies = pipe.execute()
    return [
        (queue, priority, replies[2 * i], sent_at(replies[2 * i + 1]))
        for i, (queue, priority) in enumerate(keys)
    ]
