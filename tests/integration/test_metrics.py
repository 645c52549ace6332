"""The fleet's Prometheus endpoint against a real Redis: queue depth and age, renders by state,
the render-time histogram, device-seconds, live workers, stuck jobs, failures; behind basic
auth; a scrape costs the same for any job size; and `stylebatch metrics` stops at once on
SIGTERM. (That the alert rules name only exported metrics: tests/deploy/test_prometheus.py.)"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.expand import plan_job
from common.queue import make_app
from common.state import Held, JobStore
from scheduler.metrics import NAMES, app
from scheduler.submit import submit
from tests.support.big_jobs import big_job, calls
from tests.support.commands import run_cli_on
from tests.support.manifests import local_settings, tiny_manifest, write_manifest
from tests.support.paths import ROOT
from tests.support.services import free_port


class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def fleet_state(redis_db, tmp_path, images):
    url = redis_db
    settings = dataclasses.replace(local_settings(), redis_url=url, stall_after=0.5)
    store = JobStore.from_url(url)
    plan = plan_job(write_manifest(tmp_path, tiny_manifest(images, tmp_path / "o")), settings)
    yield settings, store, plan
    store.r.flushdb()


def scrape(port: int, auth: str | None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def values(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_endpoint_reads_the_fleet_behind_auth(fleet_state):
    settings, store, plan = fleet_state
    submit(plan, settings, make_app(settings), store)  # 2 renders, 1 task queued, nothing runs
    store.beat("cpu0@host|host|1|t", {"device": "cpu", "healthy": True})
    first, _ = plan.renders
    claim = store.claim(plan.job_id, first.id, "cpu0@host|host|1|t", 60, 3)
    held = Held(plan.job_id, first.id, claim.attempt)
    store.finish(held, "done", seconds=42.0, device="cpu", pixel_iterations=1e6)
    store.count_failure("webhook")
    time.sleep(1)  # the queued task ages, the job goes quiet (stall_after 0.5 s)

    port = free_port()
    server = make_server("127.0.0.1", port, app(store, settings, "ops:s3cret"), handler_class=Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert scrape(port, None)[0] == 401
        assert scrape(port, "ops:wrong")[0] == 401
        status, text = scrape(port, "ops:s3cret")
    finally:
        server.shutdown()
    assert status == 200
    got = values(text)
    render5 = (("priority", "5"), ("queue", "render"))
    assert got[("stylebatch_queue_depth", render5)] == 1
    assert got[("stylebatch_queue_oldest_age_seconds", render5)] >= 1
    assert got[("stylebatch_renders", (("state", "done"),))] == 1
    assert got[("stylebatch_renders", (("state", "pending"),))] == 1
    assert got[("stylebatch_job_renders", (("job", plan.job_id), ("state", "pending")))] == 1
    assert got[("stylebatch_render_seconds_bucket", (("le", "30.0"),))] == 0
    assert got[("stylebatch_render_seconds_bucket", (("le", "60.0"),))] == 1
    assert got[("stylebatch_render_seconds_sum", ())] == 42
    assert got[("stylebatch_device_seconds_total", (("device", "cpu"),))] == 42
    assert got[("stylebatch_renders_ended_total", (("status", "done"),))] == 1
    assert got[("stylebatch_workers_live", ())] == 1
    assert got[("stylebatch_jobs_stuck", ())] == 1
    assert got[("stylebatch_webhook_failures_total", ())] == 1
    assert got[("stylebatch_finalize_failures_total", ())] == 0
    assert set(NAMES) <= {name for name, _ in got}  # every name the alert rules may use


def test_a_scrape_costs_the_same_for_any_job_size(fleet_state):
    from scheduler.metrics import FleetCollector

    settings, store, plan = fleet_state
    collector = FleetCollector(store, settings)
    cost = {}
    for n in (100, 100_000):
        job = big_job(plan, n)
        store.create(job)
        before = calls(store.r)
        list(collector.collect())
        cost[n] = calls(store.r) - before
        store.delete(job.job_id)
    assert cost[100] == cost[100_000]


def test_status_shows_cancel_eta_and_failures_as_written(fleet_state):
    settings, store, plan = fleet_state
    submit(plan, settings, make_app(settings), store)
    first, second = plan.renders
    claim = store.claim(plan.job_id, first.id, "cpu0@host|host|1|t", 60, 3)
    held = Held(plan.job_id, first.id, claim.attempt)
    store.finish(held, "failed", error="bad [bold red]input[/] at [x]")
    store.cancel(plan.job_id)
    shown = run_cli_on("status", plan.job_id, url=settings.redis_url)
    assert shown.returncode == 1  # a render failed
    said = f"job {plan.job_id} (tiny): running: 1 of 2 renders ended, 1 failed [cancel requested]"
    assert said in shown.stdout
    assert "bad [bold red]input[/] at [x]" in shown.stdout  # never read as markup
    assert "eta ~" in shown.stdout and "renders/min so far" in shown.stdout
    record = json.loads(run_cli_on("status", plan.job_id, "--json", url=settings.redis_url).stdout)
    assert record["cancel_requested"] and record["eta_seconds"] > 0
    assert second.id  # still pending: the ETA is for it


def can_be_pid1() -> bool:
    """Whether this machine lets a test start a process as PID 1 of a new PID namespace."""
    unshare = shutil.which("unshare")
    return bool(unshare) and subprocess.run([unshare, "-pf", "true"]).returncode == 0


@pytest.mark.parametrize("pid1", [False, True], ids=["subprocess", "pid1"])
def test_metrics_server_stops_at_once_on_sigterm(redis_db, pid1):
    """As a container's PID 1 a process gets no default action for SIGTERM: `stylebatch
    metrics` installs its own handler, so `docker compose stop` or a pod's deletion stops it at
    once with status 0 instead of waiting out the grace period to kill it. Run both as a plain
    subprocess and, where the machine allows, as PID 1 of a PID namespace of its own, as in a
    container (where, without a handler, SIGTERM does nothing at all)."""
    import contextlib
    import os
    import signal
    import sys

    if pid1 and not can_be_pid1():
        pytest.skip("unshare cannot make a PID namespace here (needs root or user namespaces)")
    port = free_port()
    argv = [sys.executable, "-m", "scheduler.cli", "metrics", "--port", str(port)]
    proc = subprocess.Popen(
        ["unshare", "--pid", "--fork", *argv] if pid1 else argv,
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "STYLEBATCH_REDIS_URL": redis_db,
            "STYLEBATCH_METRICS_AUTH": "ops:s3cret",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    pid = proc.pid
    try:
        assert "serving stylebatch metrics" in proc.stdout.readline()
        assert scrape(port, "ops:s3cret")[0] == 200
        if pid1:  # the server is unshare's child, PID 1 in its namespace
            pid = int(open(f"/proc/{pid}/task/{pid}/children").read().split()[0])  # noqa: SIM115
            info = open(f"/proc/{pid}/status").read()  # noqa: SIM115
            assert re.search(r"^NSpid:\s+\d+\s+1$", info, re.M), info
        caught = next(
            line.split()[1]
            for line in open(f"/proc/{pid}/status")  # noqa: SIM115
            if line.startswith("SigCgt:")
        )
        assert int(caught, 16) & (1 << (signal.SIGTERM - 1)), "no SIGTERM handler installed"
        assert int(caught, 16) & (1 << (signal.SIGINT - 1)), "no SIGINT handler installed"
        os.kill(pid, signal.SIGTERM)
        started = time.monotonic()
        status = proc.wait(timeout=5)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # forcibly delivered, even to a namespace's PID 1
            proc.kill()
            proc.wait()
    rest = proc.stdout.read()
    assert status == 0, rest
    assert took < 2, f"took {took:.1f} s to stop"
    assert "stopped" in rest and "Traceback" not in rest
