"""A generative proof of the fleet's state machine (issue 27): Hypothesis drives the real Lua
scripts on a real Redis through random interleavings of claim, heartbeat, finish, release,
reap, the errback, cancel, retry, `--force`, the begin and end of finalize, webhook delivery
claims, and failovers that lose the last writes (back to any point the replicas held), and
checks every invariant after every step:

- counts equal states: the job's counters, the ended index, the failed set and the fleet's
  running roll say what the render states say;
- each render ends once (until a retry or a new run makes it pending again);
- a job ends once, and an ended job never changes (until a retry or `--force`);
- a refused (superseded) transition changes nothing;
- one delivery id per end: the receiver (the world outside) sees one id per job end, and what
  left the system (a summary, a delivery) is never lost by a failover.

CI runs a fixed seed and a budget; ``STYLEBATCH_STATE_EXAMPLES`` and ``--hypothesis-seed``
run it longer locally."""

from __future__ import annotations

import json
import os

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from common.expand import plan_job
from common.state import TERMINAL, Held, JobStore, Running
from tests.support.manifests import local_settings, tiny_manifest, write_manifest

OWNERS = ("w1|h|1|a", "w2|h|2|b")  # few workers and renders: their paths cross often
CAP = 3  # crashes (and device errors) before a render fails
LIVE = 3600.0  # liveness: an owner is silent only when the test says so (reap, dead owner)
EXAMPLES = int(os.environ.get("STYLEBATCH_STATE_EXAMPLES", "150"))


class StateMachine(RuleBasedStateMachine):
    store: JobStore
    plan = None

    @initialize()
    def create(self):
        self.r: redis.Redis = self.store.r
        self.r.flushdb()
        assert self.store.create(self.plan)
        self.job = self.plan.job_id
        self.renders = [r.id for r in self.plan.renders]
        self.held: list[Held] = []  # what workers believe they hold (a failover may disagree)
        self.tasks: dict[str, list[str]] = {}  # task id -> the renders it claimed
        self.ended_times: dict[str, int] = {}  # render -> terminal transitions this epoch
        self.epoch = 0  # a new run (retry, --force) starts a new epoch
        self.ends: dict[int, list[str]] = {}  # epoch -> end times handed out
        self.posted: list[tuple[int, str]] = []  # (epoch, delivery id) the receiver saw
        self.summaries: list[int] = []  # epochs whose summary was written
        self.snapshots: list[dict] = []
        self.durable = 0  # the oldest snapshot a failover may go back to (the replicas hold it)
        self.steps = 0
        self._snapshot()
        self.durable = len(self.snapshots) - 1

    # -- the world's memory of Redis -------------------------------------------------------
    def _snapshot(self) -> None:
        keys = list(self.r.scan_iter(count=1000))
        raw = redis.Redis(connection_pool=self.r.connection_pool, decode_responses=False)
        dump = {k: (raw.dump(k), max(0, raw.pttl(k))) for k in keys}
        self.snapshots.append({"keys": dump, "epoch": self.epoch, "ended": dict(self.ended_times)})

    def _durable_now(self) -> None:
        """A transition whose effect leaves the system was held by the replicas (WAIT):
        nothing up to here can be lost."""
        self._snapshot()
        self.durable = len(self.snapshots) - 1

    def _state(self, rid: str) -> dict:
        raw = self.r.hget(self.store.keys(self.job).states, rid)
        return json.loads(raw) if raw else {}

    def _ended(self, rid: str, outcome) -> None:
        self.ended_times[rid] = self.ended_times.get(rid, 0) + 1

    def _new_epoch(self) -> None:
        self.epoch += 1
        self.ended_times = {}

    # -- renders ---------------------------------------------------------------------------
    @rule(render=st.integers(0, 1), owner=st.sampled_from(OWNERS), dead=st.booleans())
    def claim(self, render, owner, dead):
        rid = self.renders[render % len(self.renders)]
        before = self._state(rid)
        task = f"task-{self.steps}"
        dead_owner = before.get("owner", "") if dead and before.get("status") == "running" else ""
        claim = self.store.claim(self.job, rid, owner, LIVE, CAP, dead_owner, task)
        if claim.outcome == "claimed":
            self.held.append(Held(self.job, rid, claim.attempt, owner))
            self.tasks[task] = [rid]
            assert claim.attempt == int(before.get("attempt", 0)) + 1  # attempts only grow
        elif claim.outcome == "gave_up":
            self._ended(rid, claim)
        else:
            assert self._state(rid) == before, (claim, before)  # busy, ended: nothing changes

    @rule(owner=st.sampled_from(OWNERS))
    def heartbeat(self, owner):
        mine = [h for h in self.held if h.owner == owner]
        beat = self.store.beat(owner, {}, mine)
        for field in beat.stale:  # the worker stops working on what is no longer its own
            self.held = [h for h in self.held if not (h.owner == owner and h.field == field)]

    @precondition(lambda self: self.held)
    @rule(
        index=st.integers(0, 20),
        status=st.sampled_from(["done", "skipped", "failed", "cancelled"]),
    )
    def finish(self, index, status):
        held = self.held.pop(index % len(self.held))
        before = self._state(held.render_id)
        outcome = self.store.finish(held, status, seconds=1.0, device="cpu")
        if outcome in ("recorded", "complete"):
            self._ended(held.render_id, outcome)
            assert before.get("status") == "running" and before["attempt"] == held.attempt
        else:
            assert self._state(held.render_id) == before, (outcome, before)

    @precondition(lambda self: self.held)
    @rule(index=st.integers(0, 20), device=st.booleans())
    def release(self, index, device):
        held = self.held.pop(index % len(self.held))
        before = self._state(held.render_id)
        outcome = self.store.release(held, held.owner, device, CAP, "a device error")
        if outcome in ("failed", "complete"):
            self._ended(held.render_id, outcome)
        elif outcome != "released":
            assert self._state(held.render_id) == before, (outcome, before)

    @rule(render=st.integers(0, 1))
    def reap(self, render):
        rid = self.renders[render % len(self.renders)]
        state = self._state(rid)
        owner = state.get("owner") or OWNERS[0]
        claim = self.store.reap(self.job, rid, owner, CAP)
        if claim.outcome == "gave_up":
            self._ended(rid, claim)

    @precondition(lambda self: self.tasks)
    @rule(index=st.integers(0, 50))
    def errback(self, index):
        task = sorted(self.tasks)[index % len(self.tasks)]
        rids = self.tasks[task]
        before = {rid: self._state(rid) for rid in rids}
        self.store.fail_task(self.job, task, rids, "TimeLimitExceeded")
        for rid in rids:
            after = self._state(rid)
            if after != before[rid]:
                assert before[rid].get("task") == task and after["status"] == "failed"
                self._ended(rid, "failed")

    # -- operators -------------------------------------------------------------------------
    @rule()
    def cancel(self):
        status = self.r.hget(self.store.keys(self.job).record, "status")
        outcome = self.store.cancel(self.job)
        assert outcome == ("requested" if status == "running" else "finalizing" if
                           status == "finalizing" else "ended")  # fmt: skip

    @rule()
    def retry(self):
        reset = self.store.reset_failed(self.job)
        if reset:
            self._new_epoch()
            for rid in self.renders:  # what stayed ended counts as ended once, still
                if self._state(rid).get("status") in TERMINAL:
                    self.ended_times[rid] = 1

    @rule()
    def force(self):
        status = self.r.hget(self.store.keys(self.job).record, "status")
        try:
            made = self.store.create(self.plan, force=True)
        except Running:
            assert status in ("running", "finalizing")
            return
        assert made and status not in ("running", "finalizing")
        self._new_epoch()
        self.held, self.tasks = [], {}  # the old run's workers are gone
        self._durable_now()  # create waits for its replicas

    # -- the job's end ---------------------------------------------------------------------
    @rule(token=st.sampled_from(["f1", "f2"]))
    def finalize(self, token):
        began = self.store.begin_finalize(self.job, token, 60)
        if began != "ok":
            return
        self._durable_now()  # begin_finalize waits for its replicas before anything leaves
        self.summaries.append(self.epoch)  # the summary is written: it has left the system
        finished = self.store.end_job(self.job, "done", "", token)
        if finished:
            self.ends.setdefault(self.epoch, []).append(finished)

    @rule(token=st.sampled_from(["n1", "n2"]))
    def notify(self, token):
        record = self.r.hgetall(self.store.keys(self.job).record)
        delivery = record.get("webhook_delivery")
        if not delivery:
            return
        claimed, _ = self.store.claim_delivery(self.job, delivery, token, 60)
        if claimed != "claimed":
            return
        self._durable_now()  # claim_delivery waits for its replicas before the POST
        self.posted.append((self.epoch, delivery))
        self.store.delivery_outcome(self.job, delivery, token, "delivered", "delivered")

    @rule()
    def replicas_catch_up(self):
        self._durable_now()

    @rule(back=st.integers(0, 6))
    def failover(self, back):
        """The primary dies; a replica that missed the last writes takes over. It holds at
        least everything up to the last durable transition."""
        index = max(self.durable, len(self.snapshots) - 1 - back)
        snap = self.snapshots[index]
        raw = redis.Redis(connection_pool=self.r.connection_pool, decode_responses=False)
        raw.flushdb()
        for key, (value, ttl) in snap["keys"].items():
            raw.restore(key, ttl, value, replace=True)
        self.snapshots = self.snapshots[: index + 1]
        self.epoch, self.ended_times = snap["epoch"], dict(snap["ended"])
        # workers keep believing what they held: stale attempts must be refused, not recorded

    # -- after every step ------------------------------------------------------------------
    def teardown(self):
        pass

    @invariant()
    def counts_equal_states(self):
        if not hasattr(self, "job"):
            return
        self.steps += 1
        job = self.store.keys(self.job)
        record = self.r.hgetall(job.record)
        states = {rid: json.loads(raw) for rid, raw in self.r.hgetall(job.states).items()}
        by_status: dict[str, int] = {}
        for state in states.values():
            by_status[state["status"]] = by_status.get(state["status"], 0) + 1
        for status in TERMINAL:
            assert int(record.get(f"n_{status}", 0)) == by_status.get(status, 0), (status, record)
        assert int(record.get("n_running", 0)) == by_status.get("running", 0), record
        ended = sum(by_status.get(s, 0) for s in TERMINAL)
        assert int(record.get("ended", 0)) == ended, record
        members = self.r.zrange(job.ended, 0, -1)
        assert sorted(members) == sorted(
            f"{s['status']}\0{rid}" for rid, s in states.items() if s["status"] in TERMINAL
        )
        failed = {rid for rid, s in states.items() if s["status"] == "failed"}
        assert self.r.smembers(job.failed) == failed
        roll = {
            f.split(" ", 1)[1]: v
            for f, v in self.r.hgetall(self.store.RUNNING).items()
            if f.startswith(self.job + " ")
        }
        running = {
            rid: f"{s['owner']} {s['attempt']}" for rid, s in states.items()
            if s["status"] == "running"
        }  # fmt: skip
        assert roll == running, (roll, running)
        status = record.get("status")
        if status == "running":
            assert ended < len(states), record
        elif status in ("finalizing", "done", "failed", "cancelled"):
            assert ended == len(states), (status, by_status)
        self._snapshot()

    @invariant()
    def each_render_ends_once_and_each_job_once(self):
        if not hasattr(self, "job"):
            return
        assert all(n <= 1 for n in self.ended_times.values()), self.ended_times
        for epoch, ends in self.ends.items():
            assert len(set(ends)) <= 1 or epoch != self.epoch, (epoch, ends)

    @invariant()
    def one_delivery_id_per_end_and_nothing_that_left_is_lost(self):
        if not hasattr(self, "job"):
            return
        ids_by_epoch: dict[int, set[str]] = {}
        for epoch, delivery in self.posted:
            ids_by_epoch.setdefault(epoch, set()).add(delivery)
        assert all(len(ids) == 1 for ids in ids_by_epoch.values()), ids_by_epoch
        record = self.r.hgetall(self.store.keys(self.job).record)
        if self.posted and self.posted[-1][0] == self.epoch:  # delivered in this run: kept
            assert record.get("status") in ("done", "cancelled", "failed"), record
            assert record.get("webhook_delivery") == self.posted[-1][1], record
        if self.summaries and self.summaries[-1] == self.epoch:  # its summary was written:
            assert record.get("status") != "running", record  # its renders' ends are kept


@pytest.fixture
def machine(redis_db, images, tmp_path):
    data = tiny_manifest(images, tmp_path / "out")
    data["notify"] = {"webhook": "https://hooks.example/stylebatch"}
    plan = plan_job(write_manifest(tmp_path, data), local_settings(), "random")
    assert len(plan.renders) == 2
    StateMachine.store = JobStore.from_url(redis_db)
    StateMachine.plan = plan
    return StateMachine


def test_the_state_machine_holds_its_invariants_under_any_interleaving(machine):
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=40,
            deadline=None,
            derandomize=os.environ.get("STYLEBATCH_HYPOTHESIS_RANDOM") is None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        ),
    )
