"""Recovery on a real fleet (Redis, SeaweedFS, Celery worker processes): whole workers killed,
slow renders, orphaned and force-resubmitted jobs, duplicate deliveries, a broken device, a
failing finalize, and preflight refusals. Recovery settings are seconds here
(tests/support/fleet.py); docs/reliability.md has the figures at default settings."""

from __future__ import annotations

import time

import pytest

from common.queue import RENDER_TASK, make_app, seconds_per_unit, task_work, time_limits
from common.settings import Settings
from scheduler.cli.services import worker_commands
from tests.support.fleet import LocalFleet, manifest
from tests.support.services import Worker, wait_for

pytest.importorskip("torch")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fleet(fleet_factory):
    # renders of several seconds even on a loaded machine; recovery must not wait for the
    # visibility timeout (75 s here), only for the heartbeat (5 s)
    limit = {"STYLEBATCH_MAX_TIME_LIMIT": "60"}
    return fleet_factory(["cpu0", "cpu1", "bookkeeping"], env=limit)


def outputs(fleet: LocalFleet, prefix: str) -> dict[str, dict]:
    return {k: m for k, m in fleet.objects(prefix).items() if k.endswith(("-36.png", "-40.png"))}


def assert_exactly_once(fleet: LocalFleet, job_id: str, prefix: str) -> None:
    info = fleet.store.get(job_id)
    assert info.status == "done" and info.count("failed") == 0
    assert info.count("done") + info.count("skipped") == info.total
    found = outputs(fleet, prefix)
    assert len(found) == info.total
    assert {m["render-id"] for m in found.values()} == {r.id for r in fleet.store.specs(job_id)}


def test_every_worker_killed_then_restarted_the_job_finishes(fleet, tmp_path):
    contents = ["tubingen", "shipwreck", "starry_night", "wave"]
    job_id = fleet.submit(manifest(tmp_path, "node-loss", contents, contents[:3], sizes=(40,)))
    wait_for(lambda: fleet.store.get(job_id).running >= 1, 120, "a running render")
    held = {rid for j, rid, _ in fleet.store.running_renders() if j == job_id}
    for worker in fleet.workers.values():
        worker.kill()  # every process of every worker: nothing acknowledges, nothing cleans up
    restarted = time.monotonic()
    fleet.start(["cpu0", "cpu1", "bookkeeping"])
    fleet.wait_done(job_id, timeout=180)
    recovery = time.monotonic() - restarted
    assert_exactly_once(fleet, job_id, "node-loss/")
    crashes = fleet.store.crashes(job_id)
    # one crash each, however re-delivered (the workers die one after another: a render may be
    # taken between the snapshot and the last kill)
    assert held <= set(crashes) and set(crashes.values()) == {1}
    print(f"node loss: job done {recovery:.1f} s after the restart")


def test_a_slow_render_outliving_the_worker_timeout_is_not_reaped(fleet, tmp_path):
    path = manifest(tmp_path, "slow-alive", ["tubingen"], ["wave"], sizes=(96,))
    path.write_text(path.read_text().replace("iterations: 4", "iterations: 30"))  # ~10 s
    job_id = fleet.submit(path)
    wait_for(lambda: fleet.store.get(job_id).running == 1, 60, "running")
    started = time.monotonic()
    fleet.wait_done(job_id, timeout=120)
    took = time.monotonic() - started
    state = next(iter(fleet.store.states(job_id).values()))
    assert state["status"] == "done", state
    assert took > 5  # longer than STYLEBATCH_WORKER_TIMEOUT in these tests
    assert fleet.store.crashes(job_id) == {}
    log = fleet.workers["bookkeeping"].log.read_text(errors="replace").splitlines()
    assert not [line for line in log if job_id in line and "is gone" in line]


def test_a_duplicate_delivery_of_a_running_render_is_ignored(fleet, tmp_path):
    path = manifest(tmp_path, "dup", ["shipwreck"], ["wave"], sizes=(96,))
    path.write_text(path.read_text().replace("iterations: 4", "iterations: 20"))
    job_id = fleet.submit(path)
    wait_for(lambda: fleet.store.get(job_id).running == 1, 60, "running")
    spec = fleet.store.specs(job_id)[0]
    app = make_app(fleet.settings())
    duplicate = app.send_task(  # what a broker reconnect re-delivers
        RENDER_TASK,
        kwargs={"job_id": job_id, "render_ids": [spec.id], "size": spec.size, "styles": ["wave"],
                "content": spec.content_name, "work": 1.0},
    )  # fmt: skip
    result = duplicate.get(timeout=60)
    assert result["ignored"] == [{"render": spec.id, "why": "busy", "detail": result["ignored"][0]
                                  ["detail"]}]  # fmt: skip
    fleet.wait_done(job_id, timeout=120)
    state = next(iter(fleet.store.states(job_id).values()))
    assert state["status"] == "done", state
    assert fleet.store.get(job_id).count("done") == 1 and fleet.store.crashes(job_id) == {}


def test_force_while_tasks_are_queued_is_refused_and_after_a_cancel_renders_each_once(
    fleet, fleet_factory, tmp_path
):
    idle = fleet_factory()
    contents = ["tubingen", "shipwreck", "wave"]
    path = manifest(tmp_path, "forced", contents, ["wave", "starry_night"], sizes=(36,))
    job_id = idle.submit(path)
    # A running job is not replaced under its queued tasks: the operator cancels it first.
    refused = idle.cli("submit", str(path), "--force")
    assert refused.returncode != 0 and "cancel it first" in refused.stdout + refused.stderr
    assert idle.cli("cancel", job_id).returncode == 0
    idle.start(["cpu0", "bookkeeping"])
    try:
        idle.wait_done(job_id, timeout=180)  # its queued tasks end its renders cancelled
        assert idle.store.get(job_id).status == "cancelled"
        assert idle.submit(path, "--force") == job_id  # ended: replaced, and run again
        idle.wait_done(job_id, timeout=180)
        info = idle.store.get(job_id)
        assert info.total == 6 and info.count("failed") == 0
        assert info.count("done") + info.count("skipped") == 6
        assert idle.store.crashes(job_id) == {}
        assert len(outputs(idle, "forced/")) == 6
    finally:
        idle.stop()


def test_an_orphaned_job_is_recovered_by_resubmit_and_by_the_reconciler(fleet, tmp_path):
    # A submit that died after recording the job and before sending its tasks:
    first = fleet.plan(manifest(tmp_path / "a", "orphan-a", ["tubingen"], ["wave"]))
    second = fleet.plan(manifest(tmp_path / "b", "orphan-b", ["shipwreck"], ["wave"]))
    for plan in (first, second):
        assert fleet.store.create(plan)
    again = fleet.cli("submit", first.source)
    assert again.returncode == 0 and "re-enqueued" in again.stdout
    fleet.wait_done(first.job_id, timeout=60)
    started = time.monotonic()
    fleet.wait_done(second.job_id, timeout=60)  # nobody resubmits: the reconciler does
    print(f"orphan recovered by the reconciler in {time.monotonic() - started:.1f} s")
    for plan in (first, second):
        assert fleet.store.get(plan.job_id).count("done") == 1


def test_a_job_whose_queued_tasks_were_lost_is_re_driven(fleet, fleet_factory, tmp_path):
    idle = fleet_factory()
    job_id = idle.submit(manifest(tmp_path, "lost", ["wave"], ["tubingen"], sizes=(36,)))
    lists = idle.store.r.keys("render*")
    assert lists and idle.store.r.delete(*lists)  # the broker lost them (a failover, say)
    idle.start(["cpu0", "bookkeeping"])
    try:
        idle.wait_done(job_id, timeout=60)  # STYLEBATCH_STALL_AFTER=8 here
        assert idle.store.get(job_id).count("done") == 1
    finally:
        idle.stop()


def test_a_failing_finalize_ends_the_job_failed_and_watch_returns(fleet, tmp_path):
    settings = fleet.settings()
    path = manifest(tmp_path, "typo", ["wave"], ["tubingen"])
    path.write_text(path.read_text().replace("s3://outputs/typo", "s3://outputz/typo"))
    refused = fleet.cli("submit", str(path))
    assert refused.returncode == 2 and "bucket 'outputz' does not exist" in refused.stderr
    from scheduler.submit import submit  # hand-made: no preflight

    job_id = submit(fleet.plan(path), settings, make_app(settings), fleet.store).job_id
    watched = fleet.cli("status", job_id, "--watch", "--timeout", "90")
    assert watched.returncode == 1, watched.stdout + watched.stderr
    info = fleet.store.get(job_id)
    assert info.status == "failed" and "does not exist" in info.meta["reason"]
    assert "reason: summary not written" in watched.stdout


def test_status_watch_gives_up_at_its_timeout(fleet, fleet_factory, tmp_path):
    idle = fleet_factory()
    job_id = idle.submit(manifest(tmp_path, "nobody", ["wave"], ["tubingen"]))
    started = time.monotonic()
    watched = idle.cli("status", job_id, "--watch", "--timeout", "2")
    assert watched.returncode == 124 and "timed out after 2 s" in watched.stderr
    assert time.monotonic() - started < 30
    swept = idle.cli("gc", "--older-than-days", "0")
    assert swept.returncode == 0 and "deleted 0 ended job(s)" in swept.stdout
    assert idle.store.get(job_id).status == "running"  # gc never touches a running job


def test_preflight_names_every_problem_before_anything_is_enqueued(fleet, tmp_path):
    path = manifest(tmp_path, "preflight", ["wave"], ["tubingen"])
    text = path.read_text()
    text = text.replace("s3://outputs/preflight", "s3://sb-rendres/bad")
    text = text.replace("img/tubingen.png", "img/starry_nite.png")
    path.write_text(text + "weights: /models/vgg19.pth\n")
    before = fleet.store.r.zcard("sb:jobs")
    for command in ("submit", "validate"):
        result = fleet.cli(command, str(path))
        assert result.returncode == 2, result.stdout + result.stderr
        err = " ".join(result.stderr.split())
        assert "output.location: s3://sb-rendres/bad: bucket 'sb-rendres' does not exist" in err
        assert "styles[0].image: s3://inputs/img/starry_nite.png: no such object" in err
        assert "weights: not among the inputs this worker may read" in err
    assert fleet.store.r.zcard("sb:jobs") == before  # nothing recorded, nothing enqueued
    offline = fleet.cli("validate", "--offline", str(path))
    assert offline.returncode == 0


def test_time_limits_are_the_devices(fleet, tmp_path):
    """A CPU worker sets a task's limits from its own device, not a GPU's."""
    path = manifest(tmp_path, "limits", ["gradient"], ["wave"], sizes=(96,))
    path.write_text(path.read_text().replace("iterations: 4", "iterations: 30"))
    job_id = fleet.submit(path)
    wait_for(lambda: fleet.store.get(job_id).running == 1, 60, "running")
    app = make_app(fleet.settings())
    active = [t for ts in (app.control.inspect(timeout=5).active() or {}).values() for t in ts]
    task = next(t for t in active if t["kwargs"]["job_id"] == job_id)
    spec = fleet.store.specs(job_id)[0]
    cpu = seconds_per_unit(Settings(device="cpu"))
    expected = time_limits(task_work(spec.size, spec.params, 1), cpu, 60)  # capped at 60 s
    assert (task["soft_time_limit"], task["time_limit"]) == expected
    fleet.wait_done(job_id, timeout=60)


def test_a_worker_with_a_broken_device_steps_aside(fleet, fleet_factory, tmp_path):
    idle = fleet_factory()
    argv, env = worker_commands(["0"], "test")[0]  # a "GPU" worker on a machine without one
    broken = Worker(argv, {**idle.env, **env}, tmp_path / "broken.log")
    broken.wait_ready()
    contents = ["tubingen", "shipwreck", "wave", "gradient"]
    job_id = idle.submit(manifest(tmp_path, "sick", contents, ["starry_night"], sizes=(36,)))
    try:
        assert broken.proc.wait(120) == 3  # EXIT_SICK: an orchestrator restarts it
        listed = idle.cli("workers").stdout
        assert "UNHEALTHY" in listed and "gpu0@test" in listed
        assert idle.store.get(job_id).count("failed") == 0  # handed back, not failed
        idle.start(["cpu0", "bookkeeping"])  # a healthy worker takes them
        idle.wait_done(job_id, timeout=120)
    finally:
        broken.stop()
        idle.stop()
    info = idle.store.get(job_id)
    assert info.count("failed") == 0 and info.count("done") + info.count("skipped") == 4
    assert idle.store.crashes(job_id) == {}  # device errors are not the renders' crashes
    assert sum(idle.store.device_errors(job_id).values()) == 3
    log = broken.log.read_text(errors="replace")
    assert "device error (3 in a row)" in log and "stepping aside" in log


def test_a_worker_whose_weights_cannot_load_steps_aside_and_fails_nothing(
    fleet, fleet_factory, tmp_path
):
    """A misconfigured worker (its weights setting is not the fleet's, so the job's weights
    are none it may read) must not fail the queue: it hands its renders back, says why in
    its heartbeat and exits 4; a healthy worker renders them."""
    idle = fleet_factory()
    argv, env = worker_commands([], "broken", cpu_workers=1, bookkeeping=False)[0]
    env = {**idle.env, **env, "STYLEBATCH_WEIGHTS": str(tmp_path / "missing-vgg19.pth")}
    broken = Worker(argv, env, tmp_path / "broken.log")
    broken.wait_ready()
    contents = ["tubingen", "shipwreck"]
    job_id = idle.submit(manifest(tmp_path, "misconfigured", contents, ["wave"], sizes=(36,)))
    try:
        assert broken.proc.wait(120) == 4  # EXIT_MISCONFIGURED
        listed = idle.cli("workers").stdout
        assert "UNHEALTHY" in listed and "configuration" in listed
        info = idle.store.get(job_id)
        assert info.count("failed") == 0 and info.running == 0  # handed back, not failed
        idle.start(["cpu0", "bookkeeping"])
        idle.wait_done(job_id, timeout=120)
    finally:
        broken.stop()
        idle.stop()
    info = idle.store.get(job_id)
    assert info.count("failed") == 0 and info.count("done") == 2
    assert idle.store.crashes(job_id) == {}
    log = broken.log.read_text(errors="replace")
    assert "stepping aside (exit 4): configuration: weights" in log
