"""Render and job transitions against a real Redis, each interleaving forced in a fixed order
(or released together by a barrier): duplicate deliveries, dead, paused and slow workers,
reaping, fencing, retry, atomic creation, one job end and one webhook delivery. Every render
is counted once and the job completes exactly once."""

from __future__ import annotations

import dataclasses
import itertools
import json
import threading
import time

import pytest
from billiard.exceptions import TimeLimitExceeded

from common.expand import plan_job
from common.settings import Settings
from common.state import RENDER_TRANSITIONS, SCRIPTS, TERMINAL, Held, JobStore, script_source
from tests.support.manifests import local_settings, tiny_manifest, write_manifest

LIVE = 60.0  # seconds a heartbeat stays good
CAP = 3


@pytest.fixture
def store(redis_db):
    return JobStore.from_url(redis_db)


@pytest.fixture
def plan(tmp_path, images):
    data = tiny_manifest(images, tmp_path / "out")
    data["styles"] = data["styles"][:1]  # one render
    return plan_job(write_manifest(tmp_path, data), local_settings(), "random")


@pytest.fixture
def job(store, plan):
    assert store.create(plan)
    store.beat("A", {})
    store.beat("B", {})
    return store, plan.job_id, plan.renders[0].id


def take(store, job_id, rid, owner, **kw) -> Held:
    claim = store.claim(job_id, rid, owner, LIVE, CAP, **kw)
    assert claim.outcome == "claimed", claim
    return Held(job_id, rid, claim.attempt)


def test_every_script_names_its_transitions_and_loads(store):
    for name in SCRIPTS:
        body = script_source(name).split("\n-- ", 1)[-1]
        assert body.strip(), name
    assert {"claim", "finish", "release", "reap", "fail_task", "create", "end_job"} <= set(SCRIPTS)


def test_duplicate_delivery_while_running_is_ignored_not_a_crash(job):
    store, job_id, rid = job
    held = take(store, job_id, rid, "A")
    duplicate = store.claim(job_id, rid, "B", LIVE, CAP)  # e.g. submit --force, a reconnect
    assert (duplicate.outcome, duplicate.detail) == ("busy", "A")
    assert store.crashes(job_id) == {}
    assert store.get(job_id).running == 1
    assert store.finish(held, "done", seconds=1.0) == "complete"
    late = store.claim(job_id, rid, "B", LIVE, CAP)
    assert (late.outcome, late.detail) == ("ended", "done")
    assert store.finish(held, "done") == "ended"  # a second finish counts nothing
    info = store.get(job_id)
    assert (info.count("done"), info.running, info.pending, info.status) == (
        1,
        0,
        0,
        "finalizing",
    )
    assert store.running_renders() == []


def test_a_silent_owners_late_finish_is_superseded_not_counted(job):
    store, job_id, rid = job
    a = take(store, job_id, rid, "A")
    store.r.zadd(store.HEARTBEATS, {"A": store.now() - 2 * LIVE})  # A stopped beating
    b = take(store, job_id, rid, "B")
    assert (a.attempt, b.attempt) == (1, 2)
    assert store.running_renders() == [(job_id, rid, "B")]
    assert store.finish(a, "done", seconds=58.0) == "superseded"  # A resumed: refused
    assert store.release(a, "A") == "superseded"
    assert store.get(job_id).count("done") == 0 and store.get(job_id).status == "running"
    assert store.fleet_counters()["superseded"] == "2"
    assert store.finish(b, "done", seconds=41.0) == "complete"
    assert store.state(job_id, rid)["seconds"] == 41.0 and store.get(job_id).count("done") == 1


def test_a_paused_worker_that_resumes_is_told_and_its_crash_taken_back(job):
    store, job_id, rid = job
    a = take(store, job_id, rid, "A")
    assert store.beat("A", {}, [a]).stale == set()
    assert store.reap(job_id, rid, "A", CAP).outcome == "requeued"  # silent past the timeout
    assert store.crashes(job_id) == {rid: 1}
    b = take(store, job_id, rid, "B")
    answer = store.beat("A", {}, [a])  # A's heartbeat resumes, still listing its render
    assert answer.stale == {a.field}
    assert store.crashes(job_id) == {rid: 0}  # a pause, not a crash
    assert store.beat("A", {}, [a]).stale == {a.field} and store.crashes(job_id) == {rid: 0}
    assert store.beat("B", {}, [b]).stale == set()
    assert not store.holds(a, "A") and store.holds(b, "B")


def test_an_owner_known_dead_on_this_host_is_taken_over_at_once(job):
    store, job_id, rid = job
    take(store, job_id, rid, "A")  # A's heartbeat is still fresh
    taken = store.claim(job_id, rid, "B", LIVE, CAP, dead_owner="A")
    assert (taken.outcome, taken.crashes) == ("claimed", 1)
    wrong_hint = store.claim(job_id, rid, "A", LIVE, CAP, dead_owner="someone-else")
    assert wrong_hint.outcome == "busy"  # the hint names a process that no longer holds it


def test_the_crash_cap_fails_the_render_and_completes_the_job(job):
    store, job_id, rid = job
    owners = ["A", "B", "C", "D"]
    take(store, job_id, rid, owners[0])
    for previous, owner in itertools.pairwise(owners[:-1]):
        take(store, job_id, rid, owner, dead_owner=previous)
    last = store.claim(job_id, rid, "D", LIVE, CAP, dead_owner="C")
    assert (last.outcome, last.complete) == ("gave_up", True)
    state = store.state(job_id, rid)
    assert state["status"] == "failed" and "worker died 3 times" in state["error"]
    info = store.get(job_id)
    assert (info.count("failed"), info.running, info.status) == (1, 0, "finalizing")


def test_reaping_requeues_once_and_only_the_silent_owners_render(job):
    store, job_id, rid = job
    take(store, job_id, rid, "A")
    assert store.reap(job_id, rid, "B", CAP).outcome == "gone"  # B does not hold it
    reaped = store.reap(job_id, rid, "A", CAP)
    assert (reaped.outcome, reaped.crashes) == ("requeued", 1)
    assert store.reap(job_id, rid, "A", CAP).outcome == "gone"  # a second pass: nothing
    assert store.state(job_id, rid) == {"status": "pending", "attempt": 1}
    info = store.get(job_id)
    assert (info.running, info.pending, store.crashes(job_id)) == (0, 1, {rid: 1})
    assert store.running_renders() == []
    assert store.claim(job_id, rid, "B", LIVE, CAP).crashes == 0  # pending: no second crash


def test_release_only_by_the_holding_attempt_and_terminal_states_change_only_by_retry(job):
    store, job_id, rid = job
    a = take(store, job_id, rid, "A")
    assert store.release(a, "B") == "superseded"
    assert store.release(a, "A") == "released" and store.state(job_id, rid)["status"] == "pending"
    a2 = take(store, job_id, rid, "A")
    assert store.finish(a2, "failed", error="bad input") == "complete"
    assert store.end_job(job_id, "done") and store.get(job_id).status == "done"
    for status in TERMINAL:
        assert store.finish(a2, status) == "ended"
    assert store.claim(job_id, rid, "B", LIVE, CAP).outcome == "ended"
    assert store.release(a2, "A") == "ended"
    assert store.reset_failed(job_id) == [rid]  # retry: failed -> pending, job running again
    info = store.get(job_id)
    assert (info.status, info.count("failed"), info.pending) == ("running", 0, 1)
    assert job_id in store.active()
    assert take(store, job_id, rid, "B").attempt == 3
    assert set(RENDER_TRANSITIONS["failed"]) == {"pending"}


def test_device_errors_fail_at_the_cap_and_retry_resets_them(job):
    store, job_id, rid = job
    for _ in range(2):
        assert store.release(take(store, job_id, rid, "A"), "A", True, 3, "CUDA") == "released"
    assert store.device_errors(job_id) == {rid: 2}
    held = take(store, job_id, rid, "A")
    assert store.release(held, "A", True, 3, "CUDA error") == "complete"
    assert "device errors on 3 tries" in store.state(job_id, rid)["error"]
    store.end_job(job_id, "done")
    store.reset_failed(job_id)
    assert store.device_errors(job_id) == {}


def test_the_errback_fails_only_what_its_own_task_claimed(job):
    store, job_id, rid = job
    take(store, job_id, rid, "A", task="task-2")  # a live worker renders it for task 2
    assert not store.fail_task(job_id, "task-1", [rid], "TimeLimitExceeded")  # a duplicate's
    assert store.state(job_id, rid)["status"] == "running"
    assert store.fail_task(job_id, "task-2", [rid], "TimeLimitExceeded: 20")
    state = store.state(job_id, rid)
    assert state["status"] == "failed" and store.get(job_id).count("failed") == 1
    assert not store.fail_task(job_id, "task-2", [rid], "again")  # counted once


def test_a_job_ends_once_by_the_finalize_that_holds_its_end(job):
    store, job_id, rid = job
    assert store.begin_finalize(job_id, "f1", 60) == "running"
    assert not store.end_job(job_id, "done")  # still running
    store.finish(take(store, job_id, rid, "A"), "done")
    assert store.begin_finalize(job_id, "f1", 60) == "ok"
    assert store.begin_finalize(job_id, "f2", 60) == "busy"  # a resend, a duplicate
    assert store.end_job(job_id, "done", token="f2") == ""
    finished = store.end_job(job_id, "failed", "summary not written: bucket gone", token="f1")
    assert finished
    assert store.end_job(job_id, "done", token="f1") == ""  # the first end wins
    info = store.get(job_id)
    assert (info.status, info.meta["reason"]) == ("failed", "summary not written: bucket gone")
    assert job_id not in store.active()


def test_an_expired_finalize_lease_is_taken_over(job):
    store, job_id, rid = job
    store.finish(take(store, job_id, rid, "A"), "done")
    assert store.begin_finalize(job_id, "f1", 0.001) == "ok"  # f1 dies mid-finalize
    time.sleep(0.05)
    assert store.begin_finalize(job_id, "f2", 60) == "ok"
    assert store.end_job(job_id, "done", token="f1") == ""  # f1 comes back: too late
    assert store.end_job(job_id, "done", token="f2")


def test_one_webhook_delivery_per_job_end_claimed_once(store, plan, tmp_path):
    from common.manifest import Notify

    manifest = plan.manifest.model_copy(update={"notify": Notify(webhook="http://127.0.0.1:9/h")})
    plan = dataclasses.replace(plan, manifest=manifest)
    assert store.create(plan)
    job_id, rid = plan.job_id, plan.renders[0].id
    store.beat("A", {})
    store.finish(take(store, job_id, rid, "A"), "done")
    store.begin_finalize(job_id, "f", 60)
    finished = store.end_job(job_id, "done", token="f")
    delivery = store.get(job_id).meta["webhook_delivery"]
    assert delivery == f"{job_id}:{finished}"
    assert store.claim_delivery(job_id, delivery, "n1", 60) == ("claimed", 1)
    assert store.claim_delivery(job_id, delivery, "n2", 60)[0] == "busy"
    assert store.delivery_outcome(job_id, delivery, "n1", "retrying", "retrying", 60)
    assert store.claim_delivery(job_id, delivery, "n1", 60) == ("claimed", 2)  # its retry
    assert not store.delivery_outcome(job_id, delivery, "n2", "delivered", "delivered")
    assert store.delivery_outcome(job_id, delivery, "n1", "delivered", "delivered")
    assert store.claim_delivery(job_id, delivery, "n2", 60)[0] == "delivered"
    assert store.claim_delivery(job_id, "old:1", "n3", 60)[0] == "stale"
    assert store.get(job_id).meta["webhook_status"] == "delivered"


def test_a_create_cut_short_leaves_no_job_and_the_next_completes_it(store, tmp_path, images):
    data = tiny_manifest(images, tmp_path / "out")
    plan = plan_job(write_manifest(tmp_path, data), local_settings(), "random")
    job_id = plan.job_id
    # a submit killed after staging half its renders: nothing is visible
    staged = store.keys(job_id).specs + ":staging"
    store.r.hset(staged, mapping={r.id: "{}" for r in plan.renders[:1]})
    store.r.expire(staged, 60)  # as a killed submit's staging: it expires
    keys = [store.keys(job_id).record, staged, store.keys(job_id).states + ":staging"]
    keys += [store.keys(job_id).specs, store.keys(job_id).states, store.JOBS, store.ACTIVE]
    args = [job_id, "{}", len(plan.renders), 0, "", 3600]
    assert store.scripts.run("create", keys, args) == "incomplete"
    assert store.get(job_id) is None and store.jobs() == [] and store.active() == []
    assert store.create(plan)  # the rerun stages again and makes it visible whole
    info = store.get(job_id)
    assert info.total == len(plan.renders) and info.meta["location"]
    assert len(store.specs(job_id)) == len(plan.renders) == len(store.states(job_id))
    assert [j.job_id for j in store.jobs()] == [job_id] and store.active() == [job_id]
    assert 0 < store.r.ttl(staged) <= 60  # left to expire: each submit stages apart
    assert [k for k in store.r.scan_iter(f"sb:job:{{{job_id}}}:*staging*") if k != staged] == []
    assert not store.create(plan)  # exists


def test_a_lease_is_held_by_one_token_renewed_and_let_go(store):
    assert store.lease("watchdog", "t1", 5)
    assert not store.lease("watchdog", "t2", 5)
    assert store.lease("watchdog", "t1", 5)  # renewed
    store.let_go("watchdog", "t2")  # not the holder: nothing
    assert not store.lease("watchdog", "t2", 5)
    store.let_go("watchdog", "t1")
    assert store.lease("watchdog", "t2", 5)


@pytest.mark.parametrize("racers", [2, 8])
def test_racing_claims_and_finishes_released_together(job, racers):
    store, job_id, rid = job
    clients = [JobStore(store.r.__class__(connection_pool=store.r.connection_pool))] * racers
    barrier = threading.Barrier(racers)
    claims, finishes = [None] * racers, [None] * racers

    def race(i: int) -> None:
        barrier.wait()
        claim = clients[i].claim(job_id, rid, f"W{i}", LIVE, CAP)
        claims[i] = claim.outcome
        barrier.wait()
        attempt = claim.attempt or 1  # the losers try the winner's token: still one count
        finishes[i] = clients[i].finish(Held(job_id, rid, attempt), "done")

    threads = [threading.Thread(target=race, args=(i,)) for i in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(claims) == ["busy"] * (racers - 1) + ["claimed"]
    assert sorted(finishes) == ["complete"] + ["ended"] * (racers - 1)
    assert store.get(job_id).count("done") == 1 and store.crashes(job_id) == {}


def test_an_ended_job_expires_a_retried_one_lasts_and_gc_frees_ended_jobs(job):
    store, job_id, rid = job
    keys = store.keys(job_id).all()
    assert store.finish(take(store, job_id, rid, "A"), "failed", error="bad") == "complete"
    assert all(store.r.ttl(k) == -1 for k in keys if store.r.exists(k))  # running: kept
    assert store.end_job(job_id, "done")
    ttls = [store.r.ttl(k) for k in keys if store.r.exists(k)]
    assert ttls and all(0 < t <= store.job_ttl for t in ttls)  # ended: expires
    store.reset_failed(job_id)  # retried: it lasts again until it ends
    assert all(store.r.ttl(k) == -1 for k in keys if store.r.exists(k))
    store.finish(take(store, job_id, rid, "A"), "done")
    store.end_job(job_id, "done")
    store.r.zadd("sb:jobs", {"long-gone-job": 1.0})  # its keys expired already
    assert store.gc(older_than=3600) == {"jobs": 0, "bytes": 0, "expired_ids": 1, "owed": 0}
    freed = store.gc(older_than=0)
    assert freed["jobs"] == 1 and freed["bytes"] > 0
    assert not any(store.r.exists(k) for k in keys) and store.jobs() == []


def test_force_of_a_running_job_is_refused_and_changes_nothing(job, plan):
    """`submit --force` of a running (or finalizing) job is refused: its attempts and counts
    stay as they are, and its worker still finishes it; once it has ended, --force starts
    it again from scratch."""
    from common.state import Running

    store, job_id, rid = job
    old = take(store, job_id, rid, "A")
    with pytest.raises(Running, match="cancel it first"):
        store.create(plan, force=True)
    assert store.state(job_id, rid)["attempt"] == old.attempt
    assert store.finish(old, "done") == "complete"
    with pytest.raises(Running, match="finalizing"):
        store.create(plan, force=True)
    assert store.end_job(job_id, "done")
    assert store.create(plan, force=True)  # ended: made again, every render pending
    info = store.get(job_id)
    assert info.status == "running" and info.count("done") == 0 and info.pending == 1
    assert store.finish(old, "failed", error="the old run's") == "superseded"


def test_a_render_that_stalls_every_worker_still_reaches_the_crash_cap(job):
    store, job_id, rid = job
    outcomes = []
    for owner in "ABCDEFGH":
        store.beat(owner, {})
        claim = store.claim(job_id, rid, owner, LIVE, CAP)
        if claim.outcome != "claimed":
            break
        reaped = store.reap(job_id, rid, owner, CAP)
        outcomes.append(reaped.outcome)
        store.beat(owner, {}, [Held(job_id, rid, claim.attempt, owner)])  # it resumes
    # two pauses are taken back; after that each stall is a crash, up to the cap
    assert outcomes == ["requeued"] * 4 + ["gave_up"]
    assert store.state(job_id, rid)["status"] == "failed"


def test_a_retried_jobs_earlier_end_is_not_delivered_once_it_runs_again(store, plan):
    """`stylebatch retry` of an ended job whose job.ended delivery is still being retried
    (its receiver failed once): the job runs again, so that delivery's next claim is stale,
    as it is once the job has ended again; only the new end is delivered. (Claimed, it was
    POSTed with the running job's facts and a delivery id of no end: "<job id>:".)"""
    from common.manifest import Notify

    manifest = plan.manifest.model_copy(update={"notify": Notify(webhook="http://127.0.0.1:9/h")})
    plan = dataclasses.replace(plan, manifest=manifest)
    store.create(plan)
    job_id, rid = plan.job_id, plan.renders[0].id
    store.beat("A", {})
    store.finish(take(store, job_id, rid, "A"), "failed", error="bad")
    store.begin_finalize(job_id, "f", 60)
    store.end_job(job_id, "done", token="f")
    first = store.get(job_id).meta["webhook_delivery"]
    assert store.claim_delivery(job_id, first, "n1", 60) == ("claimed", 1)
    assert store.delivery_outcome(job_id, first, "n1", "503", "retrying", 0)
    assert store.reset_failed(job_id) == [rid]  # re-opened: running again
    assert store.claim_delivery(job_id, first, "n1", 60)[0] == "stale"
    store.finish(take(store, job_id, rid, "B"), "done")
    store.begin_finalize(job_id, "f2", 60)
    finished = store.end_job(job_id, "done", token="f2")
    again = store.get(job_id).meta["webhook_delivery"]
    assert again == f"{job_id}:{finished}" != first
    assert store.claim_delivery(job_id, first, "n1", 60)[0] == "stale"
    assert store.claim_delivery(job_id, again, "n2", 60) == ("claimed", 2)


def test_an_owed_webhook_is_found_again_until_delivered(store, plan):
    from common.manifest import Notify

    manifest = plan.manifest.model_copy(update={"notify": Notify(webhook="http://127.0.0.1:9/h")})
    plan = dataclasses.replace(plan, manifest=manifest)
    store.create(plan)
    job_id, rid = plan.job_id, plan.renders[0].id
    store.beat("A", {})
    store.finish(take(store, job_id, rid, "A"), "done")
    store.begin_finalize(job_id, "f", 60)
    store.end_job(job_id, "done", token="f")  # ... and the finalize dies before sending notify
    delivery = store.get(job_id).meta["webhook_delivery"]
    assert store.owed_webhooks(older_than=3600) == []  # just ended: its notify may be queued
    assert store.owed_webhooks(older_than=0) == [(job_id, delivery, "ended")]
    store.claim_delivery(job_id, delivery, "n1", 60)
    assert store.owed_webhooks(older_than=0) == []  # a notify task holds it
    store.delivery_outcome(job_id, delivery, "n1", "delivered", "delivered")
    assert store.owed_webhooks(older_than=0) == [] and not store.r.smembers(store.WEBHOOKS)


def test_a_dead_render_tasks_errback_reaches_bookkeeping_and_fails_what_it_held(
    job, monkeypatch, redis_db
):
    """Celery's own errback dispatch, as a hard time limit runs it in a render worker (which
    has no bookkeeping task): the errback is sent to the bookkeeping queue with the failed
    task's id; bookkeeping's render_failed then fails the renders that task holds, once,
    with the reason its result records."""
    import base64

    from celery.app.task import Context
    from celery.canvas import Signature

    from common.queue import BOOKKEEPING_QUEUE, FAILED_TASK, make_app
    from common.settings import Settings
    from scheduler.bookkeeping import tasks as books

    store, job_id, rid = job
    url = redis_db  # the store's
    take(store, job_id, rid, "A", task="task-9")
    render_side = make_app(Settings(redis_url=url))  # a render worker's app: no such task
    assert FAILED_TASK not in render_side.tasks
    errback = Signature(FAILED_TASK, args=(job_id, [rid]), app=render_side)
    request = Context(id="task-9", errbacks=[dict(errback)], delivery_info={}, root_id=None)
    render_side.backend.mark_as_failure("task-9", TimeLimitExceeded(20), request=request)
    queued = [k for k in store.r.scan_iter(f"{BOOKKEEPING_QUEUE}*") if store.r.type(k) == "list"]
    [raw] = [m for k in queued for m in store.r.lrange(k, 0, -1)]
    message = json.loads(raw)
    assert message["headers"]["task"] == FAILED_TASK
    args, _, _ = json.loads(base64.b64decode(message["body"]))
    assert args == ["task-9", job_id, [rid]]
    settled = []
    monkeypatch.setattr(books, "_store", store)
    monkeypatch.setattr(books, "app", make_app(Settings(redis_url=url)))
    monkeypatch.setattr(books, "settle", lambda app, job, outcome: settled.append((job, outcome)))
    books.render_failed(*args)
    state = store.state(job_id, rid)
    assert state["status"] == "failed" and "TimeLimitExceeded" in state["error"], state
    assert settled == [(job_id, True)]  # the job's last render ended: finalize is due
    books.render_failed(*args)  # a duplicate delivery of the errback: nothing more
    assert store.get(job_id).count("failed") == 1


def test_a_create_stages_under_keys_of_its_own(store, plan):
    """Another submit's staging (here under the name every submit once shared) is left
    alone: a racing create no longer deletes what a concurrent one staged."""
    shared = store.keys(plan.job_id).specs + ":staging"
    store.r.hset(shared, "r", "another submit's")
    assert store.create(plan)
    assert store.r.hget(shared, "r") == "another submit's"
    left = [k for k in store.r.scan_iter(f"sb:job:{{{plan.job_id}}}:*staging*") if k != shared]
    assert left == []  # its own staging became the job's


def test_a_key_that_is_no_job_record_is_no_job(job):
    store, job_id, _ = job
    for suffix in (":index", ":specs", ":states", ":ended"):
        assert store.get(job_id + suffix) is None, suffix
    assert store.get(job_id) is not None


def test_a_submit_in_progress_is_not_re_driven_and_a_killed_one_is_after_its_lease(
    store, plan, monkeypatch
):
    """A second submit while the first holds the job's submit lease (recording, enqueueing)
    sends nothing; once that lease expires (its submit was killed before marking the job
    sent), the next submit re-drives the job's pending renders, as before."""
    import common.dispatch
    from scheduler import submit as submitting

    sent = []
    monkeypatch.setattr(
        submitting, "enqueue", lambda app, job, renders, *a: sent.append(len(renders)) or 1
    )
    monkeypatch.setattr(common.dispatch, "redrive", lambda job, ids, *a: sent.append(len(ids)) or 1)
    assert store.hold_submit(plan.job_id, "the-first-submit", 0.5)
    assert store.create(plan)  # the first recorded it, and has not sent its tasks yet
    busy = submitting.submit(plan, Settings(), None, store)
    assert busy.in_progress and not busy.created and busy.tasks == 0 and sent == []
    time.sleep(0.6)  # the first was killed: its lease expires
    again = submitting.submit(plan, Settings(), None, store)
    assert not again.in_progress and again.tasks == 1 and sent == [len(plan.renders)]
    assert store.get(plan.job_id).meta["sent"] == "1"
    assert not store.r.exists(f"sb:lock:submit:{plan.job_id}")  # let go
