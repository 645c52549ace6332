"""The shape of the code against a real Redis (docs/architecture.md; the rest of it, from the
source alone: tests/unit/test_architecture.py): the state's read-only view refuses writes,
and the broker's layout that common/broker.py reads is the one the installed kombu writes."""

from __future__ import annotations

import pytest

from common import broker


def test_the_read_only_view_refuses_writes(redis_db):
    from common.state import JobStore

    read = JobStore.from_url(redis_db).read
    assert read.get("nothing") is None and read.pipeline().llen("x").execute() == [0]
    for write in ("set", "hset", "delete", "lpush", "eval", "execute_command", "flushdb"):
        with pytest.raises(AttributeError, match=r"only common/state writes"):
            getattr(read, write)


def test_the_broker_layout_is_kombus(redis_db):
    """The names this project reads are the ones the installed kombu writes: a real task
    published through kombu is found where common/broker.py looks."""
    from kombu.transport import redis as kombu_redis

    from common.dispatch import queued_jobs
    from common.queue import RENDER_QUEUE, RENDER_TASK, make_app
    from common.settings import Settings
    from common.state import JobStore

    url = redis_db
    store = JobStore.from_url(url)
    app = make_app(Settings(redis_url=url))
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        assert isinstance(channel, kombu_redis.Channel)
        assert (channel.sep, list(channel.priority_steps)) == (
            broker.SEP,
            list(broker.PRIORITY_STEPS),
        )
        assert (channel.unacked_key, channel.unacked_index_key) == (
            broker.UNACKED,
            broker.UNACKED_INDEX,
        )
        for p in broker.PRIORITY_STEPS:
            assert channel._q_for_pri(RENDER_QUEUE, p) == broker.queue_key(RENDER_QUEUE, p)
    for priority in (0, 4, 9):
        app.send_task(
            RENDER_TASK,
            kwargs={"job_id": f"job-{priority}", "render_ids": []},
            queue=RENDER_QUEUE,
            priority=priority,
        )
    assert queued_jobs(store) == {"job-0", "job-4", "job-9"}
    depths = {(q, p): n for q, p, n, _ in broker.depths(store.read, [RENDER_QUEUE])}
    assert sum(depths.values()) == 3 and depths[(RENDER_QUEUE, 9)] == 1
