"""Faults thrown at a real fleet (Redis with an append-only file and a password, SeaweedFS,
Celery worker processes): every render is accounted for and every error is clear."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from kombu import Producer

from common.queue import make_app
from common.settings import Settings
from tests.support.fleet import LocalFleet, manifest
from tests.support.services import SECRET_KEY, RedisServer, S3Server, wait_for, weed_binary
from tests.support.tools import REDIS, WEED, require

pytest.importorskip("torch")
pytestmark = pytest.mark.slow
REDIS_PASSWORD = "redis-pw-7f3a"


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """A Redis (append-only, with a password) and an S3 of this module's own: the tests stop
    and restart them."""
    require("redis-server", REDIS)
    require("weed", WEED, weed_binary())
    folder = tmp_path_factory.mktemp("faults")
    redis = RedisServer(folder, appendonly=True, password=REDIS_PASSWORD)
    try:
        s3 = S3Server(folder)
    except BaseException:
        redis.stop()
        raise
    yield redis, s3
    s3.stop()
    redis.stop()


@pytest.fixture(scope="module")
def stack(servers, fleet_factory):
    redis, s3 = servers
    fleet = fleet_factory(["cpu0", "cpu1", "bookkeeping"], redis=redis, s3=s3)
    fleet.redis, fleet.s3 = redis, s3
    yield fleet
    fleet.stop()  # before the servers go


def counts(fleet: LocalFleet, job_id: str) -> dict[str, int]:
    info = fleet.store.get(job_id)
    return {s: info.count(s) for s in ("done", "skipped", "failed", "cancelled")}


def outputs(fleet: LocalFleet, prefix: str) -> dict[str, dict]:
    return {
        k: m
        for k, m in fleet.objects(prefix).items()
        if k.endswith(".png") and "contact_sheet" not in k
    }


def test_redis_restart_mid_job(stack, tmp_path):
    contents = ["tubingen", "shipwreck", "wave", "gradient"]
    job_id = stack.submit(
        manifest(tmp_path, "redis-restart", contents, ["wave", "starry_night"], sizes=(36, 40))
    )
    wait_for(lambda: counts(stack, job_id)["done"] >= 2, 120, "first renders")
    stack.redis.stop()  # SIGTERM: Redis writes its append-only file and exits
    time.sleep(3)
    stack.redis.start()
    stack.wait_done(job_id, timeout=240)
    c = counts(stack, job_id)
    assert c["failed"] == 0 and c["done"] + c["skipped"] == 16
    assert len(outputs(stack, "redis-restart/")) == 16


def test_s3_unreachable_for_twenty_seconds(stack, tmp_path):
    contents = ["tubingen", "shipwreck", "wave", "gradient"]
    job_id = stack.submit(
        manifest(tmp_path, "s3-outage", contents, ["wave", "starry_night"], sizes=(36, 40))
    )
    wait_for(lambda: counts(stack, job_id)["done"] >= 2, 120, "first renders")
    stack.s3.stop()
    time.sleep(20)
    stack.s3.start()
    stack.wait_done(job_id, timeout=300)
    c = counts(stack, job_id)
    assert c["failed"] == 0 and c["done"] + c["skipped"] == 16
    assert len(outputs(stack, "s3-outage/")) == 16
    logs = "".join(w.log.read_text(errors="replace") for w in stack.workers.values())
    assert "transient failure, retry" in logs and "S3 unreachable" in logs


def test_a_render_that_kills_its_worker_is_capped(stack, tmp_path):
    job_id = stack.submit(manifest(tmp_path, "killer", ["gradient", "tubingen"], ["wave"]))
    target = next(r.id for r in stack.store.specs(job_id) if r.content_name == "gradient")
    kills = 0
    deadline = time.monotonic() + 180
    while stack.store.state(job_id, target)["status"] not in ("failed", "done"):
        assert time.monotonic() < deadline, "render neither capped nor finished"
        state = stack.store.state(job_id, target)
        if state["status"] == "running" and state.get("kill") is None:
            worker = stack.workers[state["owner"].split("@")[0]]
            children = subprocess.run(
                ["pgrep", "-P", str(worker.proc.pid)], capture_output=True, text=True
            ).stdout.split()
            for pid in children:  # the pool process rendering it: as if the render crashed it
                os.kill(int(pid), signal.SIGKILL)
            if children:
                kills += 1
                stack.store.r.hset(
                    stack.store.keys(job_id).states, target, json.dumps({**state, "kill": kills})
                )
        time.sleep(0.1)
    stack.wait_done(job_id, timeout=120)
    state = stack.store.state(job_id, target)
    assert state["status"] == "failed" and "worker died 3 times" in state["error"]
    assert kills == 3
    assert counts(stack, job_id) == {"done": 1, "skipped": 0, "failed": 1, "cancelled": 0}
    status = stack.cli("status", job_id).stdout
    assert "failed gradient x wave @ 40: the worker died 3 times" in status


def test_soft_time_limit_is_a_clean_failure(stack, tmp_path):
    path = manifest(tmp_path, "slow", ["tubingen"], ["wave"], sizes=(160,))
    text = path.read_text().replace("iterations: 4", "iterations: 5000")
    path.write_text(text)
    job_id = stack.submit(path)
    stack.wait_done(job_id, timeout=120)
    state = next(iter(stack.store.states(job_id).values()))
    assert state["status"] == "failed" and "soft time limit" in state["error"]
    assert "no output written" in state["error"]
    assert outputs(stack, "slow/") == {}


def test_pickled_message_is_refused(stack, tmp_path):
    before = [w.log.stat().st_size for w in stack.workers.values()]
    app = make_app(Settings(redis_url=stack.redis_url))
    with app.connection_for_write() as conn:
        producer = Producer(conn.channel())
        producer.publish(
            {"payload": "os.system('touch /tmp/pwned')"},
            exchange="render",
            routing_key="render",
            serializer="pickle",
            declare=[app.amqp.queues["render"]],
            headers={
                "task": "stylebatch.render",
                "id": "evil-1",
                "lang": "py",
                "argsrepr": "()",
                "kwargsrepr": "{}",
            },
        )

    def refused():
        logs = "".join(
            w.log.read_bytes()[n:].decode(errors="replace")
            for w, n in zip(stack.workers.values(), before, strict=True)
        )
        return "ContentDisallowed" in logs or "Refusing to deserialize" in logs

    wait_for(refused, 30, "refusal")
    job_id = stack.submit(manifest(tmp_path, "after-pickle", ["wave"], ["starry_night"]))
    stack.wait_done(job_id)  # the fleet keeps working
    assert counts(stack, job_id)["done"] == 1


def test_local_files_refused_at_submit_and_by_workers(stack, tmp_path, images):
    path = manifest(tmp_path, "local-read", ["tubingen"], ["wave"])
    path.write_text(
        path.read_text().replace("s3://inputs/img/tubingen.png", str(images["tubingen"]))
    )
    refused = stack.cli("submit", str(path))
    assert refused.returncode == 2 and "not among the inputs this worker may read" in (
        refused.stderr
    )
    # A hand-made job (no preflight): the worker refuses it again.
    from scheduler.submit import submit

    settings = Settings(redis_url=stack.redis_url)
    plan = stack.plan(path, stack.env["STYLEBATCH_WEIGHTS"])  # every input allowed at intake
    job_id = submit(plan, settings, make_app(settings), stack.store).job_id
    stack.wait_done(job_id)
    state = next(iter(stack.store.states(job_id).values()))
    assert state["status"] == "failed"
    assert "not among the inputs this worker may read" in state["error"]


def test_no_credentials_in_logs_summaries_or_results(stack):
    texts = [w.log.read_text(errors="replace") for w in stack.workers.values()]
    s3 = stack.s3.client()
    for key in stack.objects(""):
        if key.endswith("summary.json"):
            texts.append(s3.get_object(Bucket="outputs", Key=key)["Body"].read().decode())
    client = stack.store.r
    texts += [str(client.get(k)) for k in client.keys("celery-task-meta-*")]
    for text in texts:
        assert SECRET_KEY not in text and REDIS_PASSWORD not in text


def test_redis_over_tls_with_a_password(tmp_path, fleet_factory, stack):
    folder = tmp_path / "tls"
    folder.mkdir()
    server = RedisServer(folder, password=REDIS_PASSWORD, tls=True)
    try:
        assert server.url().startswith("rediss://")
        tls = fleet_factory(["cpu0", "bookkeeping"], redis=server, s3=stack.s3)
        try:
            job_id = tls.submit(manifest(tmp_path, "over-tls", ["wave"], ["tubingen"]))
            tls.wait_done(job_id)
            assert tls.store.get(job_id).count("done") == 1
            plain = tls.cli("status", job_id)
            assert plain.returncode == 0
            other_ca = tmp_path / "not-the-ca.crt"  # a certificate, but not the signing CA
            other_ca.write_text((folder / "server.crt").read_text())
            wrong = tls.cli("status", job_id, env_extra={"STYLEBATCH_REDIS_TLS_CA": str(other_ca)})
            assert wrong.returncode == 1 and "error: Redis at 127.0.0.1" in wrong.stderr
            assert REDIS_PASSWORD not in wrong.stderr + wrong.stdout
        finally:
            tls.stop()
    finally:
        server.stop()


def test_a_scheduled_slot_rides_out_an_s3_outage(stack, tmp_path, monkeypatch):
    from datetime import UTC, datetime, timedelta

    import yaml

    from scheduler.beat import ManifestScheduler

    for name, value in stack.settings_env().items():  # beat submits with the fleet's settings
        monkeypatch.setenv(name, value)
    folder = tmp_path / "schedules"
    folder.mkdir()
    data = yaml.safe_load(manifest(tmp_path, "outage-slot", ["tubingen"], ["wave"]).read_text())
    data["content"] = [{"glob": "s3://inputs/img/tub*.png"}]  # listed when the slot fires
    data["schedule"] = {"cron": "0 2 * * *", "timezone": "UTC"}
    data["output"]["key"] = "{slot}/{content}/{style}.{ext}"
    (folder / "outage.yaml").write_text(yaml.safe_dump(data))
    now = [datetime(2026, 11, 27, 1, 0, tzinfo=UTC)]
    beat = ManifestScheduler(
        app=make_app(Settings.from_env()), source=str(folder), clock=lambda: now[0]
    )
    beat.tick()  # first sight: notes the schedule
    marker = stack.store.r.get("sb:beat:last:outage-slot")
    now[0] += timedelta(days=1)  # the 02:00 slot is due ...
    stack.s3.stop()  # ... and S3 is down
    try:
        outage = time.monotonic()
        for _ in range(2):
            assert beat.tick() <= beat.retry_every  # not fired: again soon
        assert stack.store.r.get("sb:beat:last:outage-slot") == marker  # the slot is not lost
    finally:
        stack.s3.start()
    slot_key = "sb:slot:outage-slot:20261127T020000Z"
    wait_for(lambda: beat.tick() and stack.store.r.get(slot_key), 60, "the slot fired")
    fired = time.monotonic() - outage
    job_id = stack.store.r.get(slot_key)
    assert stack.store.r.get("sb:beat:last:outage-slot") != marker
    stack.wait_done(job_id)
    assert counts(stack, job_id)["done"] == 1
    beat.tick()  # fired once: the marker has moved on
    assert [i.job_id for i in stack.store.jobs(500) if i.meta["name"] == "outage-slot"] == [job_id]
    print(f"slot submitted {fired:.1f} s after S3 went down (two ticks during the outage)")


def test_a_hand_made_job_writing_where_it_may_not_ends_failed_and_writes_nothing(stack, tmp_path):
    """No validate, no submit checks: the worker refuses the write itself."""
    from scheduler.submit import submit

    target = tmp_path / "site-packages"
    path = manifest(tmp_path, "local-write", ["wave"], ["tubingen"])
    path.write_text(path.read_text().replace("s3://outputs/local-write", str(target)))
    settings = stack.settings()
    job_id = submit(stack.plan(path), settings, make_app(settings), stack.store).job_id
    stack.wait_done(job_id)
    info = stack.store.get(job_id)
    state = next(iter(stack.store.states(job_id).values()))
    assert state["status"] == "failed"
    assert (
        "not among the outputs this fleet may write (STYLEBATCH_ALLOWED_OUTPUTS" in state["error"]
    )
    assert info.status == "failed" and "STYLEBATCH_ALLOWED_OUTPUTS" in info.meta["reason"]
    assert not target.exists()
