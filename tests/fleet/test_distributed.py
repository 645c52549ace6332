"""The fleet for real: Redis, SeaweedFS and Celery worker processes on loopback, driven through
the `stylebatch` command line."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from typing import Any

import pytest
from PIL import Image

from common.imageio import fitted_size
from tests.support.certificates import make_signing_certificate
from tests.support.fleet import INPUTS, manifest
from tests.support.paths import ROOT
from tests.support.services import SECRET_KEY, free_port, wait_for

pytest.importorskip("torch")
pytestmark = pytest.mark.slow
WEBHOOK_SECRET = "fleet-webhook-secret"


@pytest.fixture(scope="module")
def fleet(fleet_factory, tmp_path_factory):
    """Two CPU render workers and a bookkeeping worker, sharing one Redis db and one S3."""
    webhook_port = free_port()  # a receiver the tests start on this port
    chain, key = make_signing_certificate(tmp_path_factory.mktemp("c2pa"))
    env = {
        "STYLEBATCH_WEBHOOK_ALLOWED": f"http://127.0.0.1:{webhook_port}/hooks/",
        "STYLEBATCH_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STYLEBATCH_WEBHOOK_BACKOFF": "0.2",
        "STYLEBATCH_C2PA_CERT": str(chain),
        "STYLEBATCH_C2PA_KEY": str(key),
    }
    stack = fleet_factory(["cpu0", "cpu1", "bookkeeping"], env=env)
    stack.webhook_port = webhook_port
    return stack


def test_submit_render_status_and_outputs_in_s3(fleet, tmp_path):
    path = manifest(tmp_path, "basic", ["tubingen", "shipwreck"], ["starry_night", "wave"])
    job_id = fleet.submit(path)
    fleet.wait_done(job_id)
    objects = fleet.objects("basic/")
    images = {k: v for k, v in objects.items() if k.endswith(".png") and "contact" not in k}
    assert len(images) == 4
    ids = {r.id for r in fleet.store.specs(job_id)}
    assert {meta["render-id"] for meta in images.values()} == ids
    assert all(meta["weights-id"].startswith("sha256:") for meta in images.values())
    assert "basic/summary.json" in objects and "basic/contact_sheet.png" in objects
    body = fleet.s3_server.client().get_object(Bucket="outputs", Key="basic/summary.json")
    summary = json.loads(body["Body"].read())
    assert summary["counts"]["done"] == 4 and summary["finished"]
    status = fleet.cli("status", job_id)
    assert "done" in status.stdout and "done 4" in status.stdout and "failed 0" in status.stdout
    assert job_id in fleet.cli("jobs").stdout
    listed = json.loads(fleet.cli("jobs", "--json", "--limit", "200").stdout)
    mine = next(j for j in listed if j["job"] == job_id)
    assert (mine["status"], mine["total"], mine["done"], mine["pending"]) == ("done", 4, 4, 0)
    cost = json.loads(fleet.cli("status", job_id, "--json").stdout)["cost"]
    assert cost["outputs"] == 4 and cost["device_seconds"]["cpu"] > 0
    assert cost["pixel_iterations"] == pytest.approx(summary["cost"]["pixel_iterations"])
    assert "cost: device-seconds cpu" in status.stdout
    key = f"basic/_jobs/{job_id}/cost.csv"
    rows = fleet.s3_server.client().get_object(Bucket="outputs", Key=key)["Body"].read()
    assert len(rows.decode().strip().splitlines()) == 5  # a header and a row per render

    again = fleet.cli("submit", str(path))
    assert again.returncode == 0 and f"exists {job_id}" in again.stdout

    def written() -> dict[str, Any]:
        s3 = fleet.s3_server.client()
        return {k: s3.head_object(Bucket="outputs", Key=k)["LastModified"] for k in images}

    before = written()
    forced = fleet.submit(path, "--force")
    assert forced == job_id
    fleet.wait_done(job_id)
    info = fleet.store.get(job_id)
    # Its outputs say this very job wrote them: done (decided from facts), not rendered twice
    assert info.count("done") == 4 and info.count("skipped") == 0
    assert written() == before


def test_two_workers_share_one_job(fleet, tmp_path):
    path = manifest(
        tmp_path,
        "shared",
        ["tubingen", "shipwreck", "starry_night", "wave"],
        ["starry_night", "wave"],
        sizes=(36, 40),
    )
    job_id = fleet.submit(path)
    fleet.wait_done(job_id)
    states = fleet.store.states(job_id).values()
    assert len(states) == 16 and {s["status"] for s in states} == {"done"}
    assert {s["worker"].split("@")[0] for s in states} == {"cpu0", "cpu1"}


def test_failed_render_listed_and_retried(fleet, tmp_path):
    s3 = fleet.s3_server.client()
    s3.put_object(Bucket=INPUTS, Key="img/broken.png", Body=b"\x89PNG\r\n\x1a\n truncated")
    path = manifest(tmp_path, "retry", ["tubingen", "broken"], ["wave"])
    job_id = fleet.submit(path)
    fleet.wait_done(job_id)
    info = fleet.store.get(job_id)
    assert (info.count("done"), info.count("failed")) == (1, 1)
    status = fleet.cli("status", job_id)
    assert status.returncode == 1  # renders failed
    assert "failed broken x wave @ 40: s3://inputs/img/broken.png:" in status.stdout
    record = json.loads(fleet.cli("status", job_id, "--json").stdout)
    assert (record["status"], record["done"], record["failed"]) == ("done", 1, 1)
    [failure] = record["failures"]
    assert (failure["content"], failure["style"], failure["size"]) == ("broken", "wave", 40)
    assert failure["error"].startswith("s3://inputs/img/broken.png:")
    newest = json.loads(fleet.cli("jobs", "--json", "--limit", "1").stdout)
    older = json.loads(fleet.cli("jobs", "--json", "--limit", "1", "--offset", "1").stdout)
    assert newest[0]["job"] == job_id and len(older) == 1 and older[0]["job"] != job_id
    summary = json.loads(s3.get_object(Bucket="outputs", Key="retry/summary.json")["Body"].read())
    assert summary["counts"]["failed"] == 1

    # A retry re-drives the renders as they were planned: the replaced input is not theirs.
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 80, 20)).save(buf, "PNG")
    s3.put_object(Bucket=INPUTS, Key="img/broken.png", Body=buf.getvalue())
    result = fleet.cli("retry", job_id)
    assert "re-enqueued 1 failed render(s)" in result.stdout
    fleet.wait_done(job_id)
    [state] = [s for s in fleet.store.states(job_id).values() if s["status"] == "failed"]
    # the planned bytes, from the workers' input cache (a cold cache would say "changed after
    # the job was planned ... submit again"), never the replacement
    assert "corrupt or truncated image" in state["error"]
    # Submitting again renders the fixed input as a new job, and skips what was done.
    again = fleet.submit(path)
    assert again != job_id
    fleet.wait_done(again)
    info = fleet.store.get(again)
    assert (info.count("done"), info.count("skipped"), info.count("failed")) == (1, 1, 0)
    assert len([k for k in fleet.objects("retry/") if "-40." in k]) == 2


def test_cancel_skips_queued_renders_even_after_a_restart(tmp_path, fleet_factory, fleet):
    idle = fleet_factory()  # no workers yet
    path = manifest(tmp_path, "cancelled", ["tubingen", "shipwreck"], ["wave", "starry_night"])
    job_id = idle.submit(path)
    assert "cancel requested" in idle.cli("cancel", job_id).stdout
    idle.start(["cpu0", "bookkeeping"])
    try:
        idle.wait_done(job_id, timeout=120)
    finally:
        idle.stop()
    info = idle.store.get(job_id)
    assert info.status == "cancelled" and info.count("cancelled") == 4
    assert not [k for k in idle.objects("cancelled/") if k.endswith("-40.png")]


def test_killed_worker_every_render_exactly_once(fleet, tmp_path):
    """50 renders submitted twice; one worker SIGKILLed midway."""
    contents = ["tubingen", "shipwreck", "starry_night", "wave", "gradient"]
    path = manifest(tmp_path, "fifty", contents, contents, sizes=(36, 40))
    job_id = fleet.submit(path)
    assert fleet.submit(path) == job_id

    def busy_on_cpu0() -> list[str]:
        return [
            rid
            for rid, s in fleet.store.states(job_id).items()
            if s["status"] == "running" and s["owner"].startswith("cpu0@")
        ]

    wait_for(lambda: fleet.store.get(job_id).count("done") >= 2 and busy_on_cpu0(), 120, "cpu0")
    interrupted = busy_on_cpu0()
    fleet.workers["cpu0"].kill()
    fleet.wait_done(job_id, timeout=300)
    info = fleet.store.get(job_id)
    assert info.total == 50 and info.count("failed") == 0
    assert info.count("done") + info.count("skipped") == 50
    images = {
        k: m for k, m in fleet.objects("fifty/").items() if k.endswith(("-36.png", "-40.png"))
    }
    assert len(images) == 50
    assert {m["render-id"] for m in images.values()} == {r.id for r in fleet.store.specs(job_id)}
    crashes = fleet.store.crashes(job_id)
    assert all(crashes.get(rid) == 1 for rid in interrupted)  # re-delivered after the kill
    fleet.start(["cpu0"])  # leave the fleet whole


def test_two_beats_render_each_slot_once(fleet, tmp_path, monkeypatch):
    from datetime import UTC, datetime, timedelta

    import yaml

    from common.queue import make_app
    from common.settings import Settings
    from scheduler.beat import ManifestScheduler

    for name, value in fleet.settings_env().items():  # beat submits with the fleet's settings
        monkeypatch.setenv(name, value)
    folder = tmp_path / "schedules"
    folder.mkdir()
    path = manifest(tmp_path, "nightly", ["tubingen"], ["wave", "starry_night"])
    data = yaml.safe_load(path.read_text())
    data["schedule"] = {"cron": "0 2 * * *", "timezone": "UTC"}
    data["output"]["key"] = "{slot}/{content}/{style}.{ext}"
    (folder / "nightly.yaml").write_text(yaml.safe_dump(data))
    now = [datetime(2026, 11, 27, 1, 0, tzinfo=UTC)]
    beats = [ManifestScheduler(app=make_app(Settings.from_env()), source=str(folder),
                               clock=lambda: now[0]) for _ in range(2)]  # fmt: skip
    for _ in range(2):
        for beat in beats:
            beat.tick()  # the first tick of a new manifest only notes the schedule
        now[0] += timedelta(days=1)
        for beat in beats:
            beat.tick()
            beat.tick()
    slots = ["20261127T020000Z", "20261128T020000Z"]
    job_ids = []
    for slot in slots:
        wait_for(lambda s=slot: fleet.store.r.get(f"sb:slot:nightly:{s}"), 60, f"slot {slot}")
        job_ids.append(fleet.store.r.get(f"sb:slot:nightly:{slot}"))
        fleet.wait_done(job_ids[-1])
    assert len(set(job_ids)) == 2 and all(s in j for s, j in zip(slots, job_ids, strict=True))
    nightly = [i for i in fleet.store.jobs(200) if i.meta["name"] == "nightly"]
    assert len(nightly) == 2 and all(i.count("done") == 2 for i in nightly)
    objects = fleet.objects("nightly/")
    keys = [k for k in objects if k.endswith(".png") and "/_jobs/" not in k and "contact" not in k]
    assert sorted(keys) == sorted(f"nightly/{s}/tubingen/{st}.png" for s in slots
                                  for st in ("starry_night", "wave"))  # fmt: skip

    # Each slot keeps its own records; a rerun of the first keeps what it measured.
    def record(job_id: str) -> dict:
        key = f"nightly/_jobs/{job_id}/summary.json"
        body = fleet.s3_server.client().get_object(Bucket="outputs", Key=key)["Body"]
        return json.loads(body.read())

    assert all(f"nightly/_jobs/{j}/contact_sheet.png" in objects for j in job_ids)
    before = [record(j) for j in job_ids]
    assert [r["counts"]["done"] for r in before] == [2, 2]
    rerun = fleet.submit(folder / "nightly.yaml", "--slot", slots[0], "--force")
    assert rerun == job_ids[0]
    fleet.wait_done(rerun)
    after = record(rerun)
    # the slot's outputs name this very job as their maker: done again, not rendered again
    assert after["counts"]["done"] == 2 and after["finished"] > before[0]["finished"]
    assert [(r["seconds"], r["losses"]) for r in after["renders"]] == [
        (r["seconds"], r["losses"]) for r in before[0]["renders"]
    ]
    assert {r["rendered_by"] for r in after["renders"]} == {job_ids[0]}
    assert record(job_ids[1]) == before[1]  # the other slot's record is untouched


def test_a_replaced_input_renders_again_on_resubmit(fleet, tmp_path, images):
    s3 = fleet.s3_server.client()
    for name in ("shot_a", "shot_b"):
        s3.upload_file(str(images["tubingen"]), INPUTS, f"img/{name}.png")
    path = manifest(tmp_path, "reshoot", ["shot_a", "shot_b"], ["wave"])
    first = fleet.submit(path)
    fleet.wait_done(first)
    s3.upload_file(str(images["shipwreck"]), INPUTS, "img/shot_b.png")  # a new product shot
    second = fleet.submit(path)
    assert second != first  # not "exists": the manifest reads other content now
    fleet.wait_done(second)
    info = fleet.store.get(second)
    assert (info.count("done"), info.count("skipped")) == (1, 1)  # only the replaced shot
    etag = s3.head_object(Bucket=INPUTS, Key="img/shot_b.png")["ETag"].strip('"')
    assert fleet.objects("reshoot/shot_b/")["reshoot/shot_b/wave-40.png"]["content-id"] == (
        f"etag:{etag}"
    )
    output = s3.get_object(Bucket="outputs", Key="reshoot/shot_b/wave-40.png")["Body"].read()
    new, old = Image.open(images["shipwreck"]), Image.open(images["tubingen"])
    assert fitted_size(*new.size, 40) != fitted_size(*old.size, 40)  # their shapes tell them apart
    assert Image.open(io.BytesIO(output)).size == fitted_size(*new.size, 40)
    states = fleet.store.states(second).values()
    assert {s.get("rendered_by") for s in states if s["status"] == "skipped"} == {first}


def test_flower_shows_workers_tasks_and_metrics_behind_auth(fleet, tmp_path):
    import base64
    import urllib.error
    import urllib.request

    port = free_port()
    env = {**fleet.env, "STYLEBATCH_FLOWER_USER": "ops", "STYLEBATCH_FLOWER_PASSWORD": "s3cret-pw"}
    log = tmp_path / "flower.log"
    db = tmp_path / "flower.db"

    def start_flower() -> subprocess.Popen:
        with open(log, "ab") as handle:
            return subprocess.Popen([sys.executable, "-m", "scheduler.cli", "flower", "--port",
                                     str(port), "--db", str(db)], env=env, cwd=ROOT,
                                    stdout=handle, stderr=subprocess.STDOUT)  # fmt: skip

    proc = start_flower()
    auth = "Basic " + base64.b64encode(b"ops:s3cret-pw").decode()

    def get(path: str, authorised: bool = True):
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
        if authorised:
            request.add_header("Authorization", auth)
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()

    try:
        wait_for(lambda: get("/healthcheck")[0] == 200, 60, "flower")
        time.sleep(2)  # let Flower subscribe to the event stream
        # long enough (a few seconds a render on a CPU) to be seen mid-render
        pyramid = {"start": 32, "ratio": 2, "iterations": 60}
        slow = manifest(
            tmp_path / "slow", "progress", ["tubingen"], ["starry_night"], (64,), pyramid=pyramid
        )
        slow_id = fleet.submit(slow)

        def in_progress():
            tasks = json.loads(get("/api/tasks")[1]).values()
            return [
                t for t in tasks if slow_id in (t.get("kwargs") or "") and t["state"] == "PROGRESS"
            ]

        wait_for(in_progress, 120, "a render in progress in flower")
        line = in_progress()[0]["result"]
        assert line.startswith("scale ") and "iteration" in line, line
        fleet.wait_done(slow_id)
        job_id = fleet.submit(manifest(tmp_path, "watched", ["shipwreck"], ["wave"]))
        fleet.wait_done(job_id)

        def task_seen():
            tasks = json.loads(get("/api/tasks")[1])
            return [t for t in tasks.values() if job_id in (t.get("kwargs") or "")
                    and t["state"] == "SUCCESS"]  # fmt: skip

        wait_for(task_seen, 30, "task in flower")
        task = task_seen()[0]
        assert task["name"] == "stylebatch.render"
        assert "size=40" in task["kwargs"] and "styles=wave" in task["kwargs"]
        assert "s3://outputs/watched/shipwreck/wave-40.png" in task["result"]
        workers = json.loads(get("/api/workers")[1])
        assert any(name.startswith("cpu") for name in workers)
        status, metrics = get("/metrics")
        assert status == 200 and "flower_events_total" in metrics
        for path in ("/api/tasks", "/metrics", "/"):
            with pytest.raises(urllib.error.HTTPError) as denied:
                get(path, authorised=False)
            assert denied.value.code == 401, path
        assert "s3cret-pw" not in log.read_text() and SECRET_KEY not in json.dumps(task)
        proc.terminate()  # Flower saves its state at shutdown, and reads it back at start
        proc.wait(20)
        proc = start_flower()
        wait_for(lambda: get("/healthcheck")[0] == 200, 60, "flower again")
        remembered = json.loads(get("/api/tasks")[1])
        assert task["uuid"] in remembered and remembered[task["uuid"]]["state"] == "SUCCESS"
    finally:
        proc.terminate()
        proc.wait(20)


def test_a_webhook_is_signed_retried_and_delivered_once(fleet, tmp_path):
    import http.server
    import threading

    import yaml

    from common.notify import SIGNATURE_HEADER, verify

    received: list[tuple[int, bytes, str]] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            code = 500 if len(received) < 2 else 200  # fails twice first
            received.append((code, body, self.headers[SIGNATURE_HEADER]))
            self.send_response(code)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", fleet.webhook_port), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        truncated = b"\x89PNG\r\n\x1a\n truncated"
        fleet.s3_server.client().put_object(
            Bucket=INPUTS, Key="img/hook_broken.png", Body=truncated
        )
        path = manifest(tmp_path, "hooked", ["tubingen", "hook_broken"], ["wave"])
        data = yaml.safe_load(path.read_text())
        refused = dict(data, notify={"webhook": "http://169.254.169.254/latest/meta-data"})
        path.write_text(yaml.safe_dump(refused))
        for command in (["validate"], ["validate", "--offline"], ["submit"]):
            result = fleet.cli(*command, str(path))
            assert result.returncode == 2, result.stdout + result.stderr
            said = " ".join(result.stderr.split())
            assert "notify.webhook: not among the allowed webhooks" in said, said
        hook = f"http://127.0.0.1:{fleet.webhook_port}/hooks/campaign"
        path.write_text(yaml.safe_dump(dict(data, notify={"webhook": hook})))
        job_id = fleet.submit(path)
        fleet.wait_done(job_id)
        wait_for(
            lambda: fleet.store.get(job_id).meta.get("webhook_status") == "delivered", 60, "hook"
        )
        time.sleep(1)  # nothing more arrives
        ended = len(received)
        # every output decided: job.reviewed, once, signed as job.ended
        from common.queue import make_app
        from scheduler.review import decide

        done = fleet.store.with_status(job_id, "done")
        app = make_app(fleet.settings())
        assert decide(fleet.store, app, job_id, "approved", [(done[0], 0)], "ok", "ops").reviewed
        wait_for(
            lambda: fleet.store.get(job_id).meta.get("review_webhook_status") == "delivered",
            60,
            "job.reviewed",
        )
        time.sleep(1)
    finally:
        server.shutdown()
    assert len(received) == ended + 1
    reviewed = json.loads(received[-1][1])
    assert (reviewed["event"], reviewed["job"], reviewed["review"]["approved"]) == (
        "job.reviewed", job_id, 1,
    )  # fmt: skip
    assert verify(received[-1][1], received[-1][2], WEBHOOK_SECRET)
    received = received[:ended]
    assert [code for code, _, _ in received] == [500, 500, 200]
    assert all(verify(body, signature, WEBHOOK_SECRET) for _, body, signature in received)
    assert not verify(received[-1][1], received[-1][2], "another secret")
    body = json.loads(received[-1][1])
    assert (body["job"], body["status"], body["counts"]["done"], body["counts"]["failed"]) == (
        job_id,
        "done",
        1,
        1,
    )
    assert body["failures"][0]["content"] == "hook_broken" and body["failures"][0]["error"]
    assert body["outcome"] == "partial"  # it ended with a render failed: said, with counts
    assert body["headline"] == "done with failures: 1 of 2 renders failed"
    assert all(s.startswith("t=") and ",v1=" in s for _, _, s in received)  # time-stamped
    assert body["summary"] == f"s3://outputs/hooked/_jobs/{job_id}/summary.json"
    assert body["cost"]["outputs"] == 1
    assert fleet.store.get(job_id).meta["webhook_attempts"] == "3"


def test_a_campaign_through_the_fleet_sizes_mask_palette_credentials_cost(fleet, tmp_path):
    import csv

    import yaml

    from workers.credentials import read

    s3 = fleet.s3_server.client()
    mask = Image.new("L", (64, 48), 0)  # keeps the left 40 % of the photo
    mask.paste(255, (0, 0, 26, 48))
    buf = io.BytesIO()
    mask.save(buf, "PNG")
    s3.put_object(Bucket=INPUTS, Key="img/tubingen-mask.png", Body=buf.getvalue())
    path = manifest(tmp_path, "campaign", ["tubingen"], ["wave"], sizes=("48x32", "24x40", 40))
    data = yaml.safe_load(path.read_text())
    data["content"] = [
        {"uri": f"s3://{INPUTS}/img/tubingen.png", "mask": f"s3://{INPUTS}/img/tubingen-mask.png"}
    ]
    data["params"]["palette"] = {"colors": ["#d2001e", "#ffd200"], "strength": 0.5}
    data["output"] |= {"credentials": True, "key": "{content}/{channel}.{ext}"}
    path.write_text(yaml.safe_dump(data))
    job_id = fleet.submit(path)
    fleet.wait_done(job_id)
    info = fleet.store.get(job_id)
    assert info.count("done") == 3, fleet.store.states(job_id)
    photo = Image.open(
        io.BytesIO(s3.get_object(Bucket=INPUTS, Key="img/tubingen.png")["Body"].read())
    )
    sizes = {}
    for channel in ("48x32", "24x40", "long40"):
        body = s3.get_object(Bucket="outputs", Key=f"campaign/tubingen/{channel}.png")[
            "Body"
        ].read()
        image = Image.open(io.BytesIO(body)).convert("RGB")
        sizes[channel] = image.size
        credential = read(body, "png")
        assert credential["validation_state"] == "Valid"
        assert {i["title"] for i in credential["ingredients"]} == {
            f"s3://{INPUTS}/img/tubingen.png",
            f"s3://{INPUTS}/img/wave.png",
        }
        if channel == "long40":  # the whole photo: its protected left part is the photo's
            import numpy as np

            reference = photo.convert("RGB").resize(image.size, Image.Resampling.LANCZOS)
            moved = np.abs(np.asarray(image, float) - np.asarray(reference, float))
            assert moved[:, :12].max() == 0 and moved[:, 24:].mean() > 5
    assert sizes == {"48x32": (48, 32), "24x40": (24, 40), "long40": (40, 30)}
    rows = s3.get_object(Bucket="outputs", Key=f"campaign/_jobs/{job_id}/cost.csv")["Body"].read()
    table = list(csv.DictReader(io.StringIO(rows.decode())))
    cost = info.cost()
    assert sum(int(r["outputs"]) for r in table) == cost["outputs"] == 3
    assert sum(float(r["device_seconds"]) for r in table) == pytest.approx(
        cost["device_seconds"]["cpu"], abs=0.01
    )


def test_metrics_during_and_after_a_real_job(fleet, tmp_path):
    import threading
    import urllib.request
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client.parser import text_string_to_metric_families

    from scheduler.metrics import app

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    port = free_port()
    server = make_server(
        "127.0.0.1", port, app(fleet.store, fleet.settings(), ""), handler_class=Quiet
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def scrape() -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    try:
        before = scrape()
        done_before = before.get(("stylebatch_renders_ended_total", (("status", "done"),)), 0)
        pyramid = {"start": 32, "ratio": 2, "iterations": 40}
        path = manifest(
            tmp_path, "scraped", ["tubingen", "shipwreck"], ["wave", "starry_night"], (64,),
            pyramid=pyramid,
        )  # fmt: skip
        job_id = fleet.submit(path)

        def busy():
            got = scrape()
            key = ("stylebatch_job_renders", (("job", job_id), ("state", "running")))
            return got if got.get(key, 0) >= 1 else None

        during = None
        deadline = time.monotonic() + 120
        while during is None and time.monotonic() < deadline:
            during = busy()
            time.sleep(0.2)
        assert during is not None, "no render seen running"
        assert during[("stylebatch_workers_live", ())] >= 2
        assert during[("stylebatch_jobs_active", ())] >= 1
        fleet.wait_done(job_id)
        after = scrape()
    finally:
        server.shutdown()
    assert fleet.store.get(job_id).count("done") == 4, fleet.store.states(job_id)
    assert after[("stylebatch_renders_ended_total", (("status", "done"),))] == done_before + 4
    assert ("stylebatch_job_renders", (("job", job_id), ("state", "running"))) not in after
    assert after[("stylebatch_device_seconds_total", (("device", "cpu"),))] > 0
    assert after[("stylebatch_render_seconds_count", ())] >= 4
    assert after[("stylebatch_queue_depth", (("priority", "5"), ("queue", "render")))] == 0
