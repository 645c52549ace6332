"""Render state transitions against a real Redis, each interleaving forced in a fixed order (or
released together by a barrier): duplicate deliveries, dead and slow workers, reaping, retry.
Every render is counted once and the job completes exactly once."""

from __future__ import annotations

import itertools
import threading

import pytest

from common.expand import plan_job
from common.jobs import RENDER_TRANSITIONS, TERMINAL, JobStore
from common.settings import Settings
from tests.conftest import tiny_manifest, write_manifest

LIVE = 60.0  # seconds a heartbeat stays good
CAP = 3


@pytest.fixture
def job(redis_server, tmp_path, images):
    store = JobStore.from_url(redis_server.url(db=5))
    store.r.flushdb()
    data = tiny_manifest(images, tmp_path / "out")
    data["styles"] = data["styles"][:1]  # one render
    plan = plan_job(write_manifest(tmp_path, data), Settings(), "random")
    assert store.create(plan)
    store.beat("A", {})
    store.beat("B", {})
    return store, plan.job_id, plan.renders[0].id


def test_duplicate_delivery_while_running_is_ignored_not_a_crash(job):
    store, job_id, rid = job
    assert store.claim(job_id, rid, "A", LIVE, CAP).outcome == "claimed"
    duplicate = store.claim(job_id, rid, "B", LIVE, CAP)  # e.g. submit --force, a reconnect
    assert (duplicate.outcome, duplicate.detail) == ("busy", "A")
    assert store.crashes(job_id) == {}
    assert store.get(job_id).running == 1
    assert store.finish(job_id, rid, "done", seconds=1.0) == 2  # recorded, job complete
    late = store.claim(job_id, rid, "B", LIVE, CAP)
    assert (late.outcome, late.detail) == ("ended", "done")
    assert store.finish(job_id, rid, "done") == 0  # a second finish counts nothing
    info = store.get(job_id)
    assert (info.count("done"), info.running, info.pending, info.status) == (
        1,
        0,
        0,
        "finalizing",
    )
    assert store.running_renders() == []


def test_a_dead_owner_counts_one_crash_and_its_late_finish_counts_once(job):
    store, job_id, rid = job
    store.claim(job_id, rid, "A", LIVE, CAP)
    store.r.zadd(store.HEARTBEATS, {"A": store.now() - 2 * LIVE})  # A stopped beating
    taken = store.claim(job_id, rid, "B", LIVE, CAP)
    assert (taken.outcome, taken.crashes) == ("claimed", 1)
    assert store.running_renders() == [(job_id, rid, "B")]
    assert store.finish(job_id, rid, "done") == 2  # A was only slow after all: its output counts
    assert store.finish(job_id, rid, "done") == 0  # ... and B's does not count again
    assert store.get(job_id).count("done") == 1 and store.crashes(job_id) == {rid: 1}


def test_an_owner_known_dead_on_this_host_is_taken_over_at_once(job):
    store, job_id, rid = job
    store.claim(job_id, rid, "A", LIVE, CAP)  # A's heartbeat is still fresh
    taken = store.claim(job_id, rid, "B", LIVE, CAP, dead_owner="A")
    assert (taken.outcome, taken.crashes) == ("claimed", 1)
    wrong_hint = store.claim(job_id, rid, "A", LIVE, CAP, dead_owner="someone-else")
    assert wrong_hint.outcome == "busy"  # the hint names a process that no longer holds it


def test_the_crash_cap_fails_the_render_and_completes_the_job(job):
    store, job_id, rid = job
    owners = ["A", "B", "C", "D"]
    store.claim(job_id, rid, owners[0], LIVE, CAP)
    for previous, owner in itertools.pairwise(owners[:-1]):
        taken = store.claim(job_id, rid, owner, LIVE, CAP, dead_owner=previous)
        assert taken.outcome == "claimed"
    last = store.claim(job_id, rid, "D", LIVE, CAP, dead_owner="C")
    assert (last.outcome, last.complete) == ("gave_up", True)
    state = store.state(job_id, rid)
    assert state["status"] == "failed" and "worker died 3 times" in state["error"]
    info = store.get(job_id)
    assert (info.count("failed"), info.running, info.status) == (1, 0, "finalizing")


def test_reaping_requeues_once_and_only_the_dead_owners_render(job):
    store, job_id, rid = job
    store.claim(job_id, rid, "A", LIVE, CAP)
    assert store.reap(job_id, rid, "B", CAP).outcome == "gone"  # B does not hold it
    reaped = store.reap(job_id, rid, "A", CAP)
    assert (reaped.outcome, reaped.crashes) == ("requeued", 1)
    assert store.reap(job_id, rid, "A", CAP).outcome == "gone"  # a second pass: nothing
    assert store.state(job_id, rid) == {"status": "pending"}
    info = store.get(job_id)
    assert (info.running, info.pending, store.crashes(job_id)) == (0, 1, {rid: 1})
    assert store.running_renders() == []
    assert store.claim(job_id, rid, "B", LIVE, CAP).crashes == 0  # pending: no second crash


def test_release_only_by_the_owner_and_terminal_states_change_only_by_retry(job):
    store, job_id, rid = job
    store.claim(job_id, rid, "A", LIVE, CAP)
    assert not store.release(job_id, rid, "B")
    assert store.release(job_id, rid, "A") and store.state(job_id, rid)["status"] == "pending"
    store.claim(job_id, rid, "A", LIVE, CAP)
    assert store.finish(job_id, rid, "failed", error="bad input") == 2
    assert store.end_job(job_id, "done") and store.get(job_id).status == "done"
    for status in TERMINAL:
        assert store.finish(job_id, rid, status) == 0
    assert store.claim(job_id, rid, "B", LIVE, CAP).outcome == "ended"
    assert not store.release(job_id, rid, "A")
    assert store.reset_failed(job_id) == [rid]  # retry: failed -> pending, job running again
    info = store.get(job_id)
    assert (info.status, info.count("failed"), info.pending) == ("running", 0, 1)
    assert job_id in store.active()
    assert store.claim(job_id, rid, "B", LIVE, CAP).outcome == "claimed"
    assert set(RENDER_TRANSITIONS["failed"]) == {"pending"}


def test_a_job_ends_only_from_finalizing(job):
    store, job_id, rid = job
    assert not store.end_job(job_id, "done")  # still running
    store.finish(job_id, rid, "done")
    assert store.end_job(job_id, "failed", "summary not written: bucket gone")
    assert not store.end_job(job_id, "done")  # the first end wins
    info = store.get(job_id)
    assert (info.status, info.meta["reason"]) == ("failed", "summary not written: bucket gone")
    assert job_id not in store.active()


@pytest.mark.parametrize("racers", [2, 8])
def test_racing_claims_and_finishes_released_together(job, racers):
    store, job_id, rid = job
    clients = [JobStore(store.r.__class__(connection_pool=store.r.connection_pool))] * racers
    barrier = threading.Barrier(racers)
    claims, finishes = [None] * racers, [None] * racers

    def race(i: int) -> None:
        barrier.wait()
        claims[i] = clients[i].claim(job_id, rid, f"W{i}", LIVE, CAP).outcome
        barrier.wait()
        finishes[i] = clients[i].finish(job_id, rid, "done")

    threads = [threading.Thread(target=race, args=(i,)) for i in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(claims) == ["busy"] * (racers - 1) + ["claimed"]
    assert sorted(finishes) == [0] * (racers - 1) + [2]  # one count, one completion
    assert store.get(job_id).count("done") == 1 and store.crashes(job_id) == {}


def test_an_ended_job_expires_a_retried_one_lasts_and_gc_frees_ended_jobs(job):
    store, job_id, rid = job
    keys = store._job_keys(job_id)
    store.claim(job_id, rid, "A", LIVE, CAP)
    assert store.finish(job_id, rid, "failed", error="bad input") == 2
    assert all(store.r.ttl(k) == -1 for k in keys if store.r.exists(k))  # running: kept
    assert store.end_job(job_id, "done")
    ttls = [store.r.ttl(k) for k in keys if store.r.exists(k)]
    assert ttls and all(0 < t <= store.job_ttl for t in ttls)  # ended: expires
    store.reset_failed(job_id)  # retried: it lasts again until it ends
    assert all(store.r.ttl(k) == -1 for k in keys if store.r.exists(k))
    store.claim(job_id, rid, "A", LIVE, CAP)
    store.finish(job_id, rid, "done")
    store.end_job(job_id, "done")
    store.r.zadd("sb:jobs", {"long-gone-job": 1.0})  # its keys expired already
    assert store.gc(older_than=3600) == {"jobs": 0, "bytes": 0, "expired_ids": 1}
    freed = store.gc(older_than=0)
    assert freed["jobs"] == 1 and freed["bytes"] > 0
    assert not any(store.r.exists(k) for k in keys) and store.jobs() == []
