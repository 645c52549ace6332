"""The deploy smoke test: deploy/'s images built and its Compose fleet run for real, with the
smoke override (deploy/smoke/docker-compose.smoke.yml) as its only difference from production.
A job goes through the scheduler image to `done`; Flower, Prometheus and `metrics` answer;
`docker-compose stop` drains a worker mid-render and stops the rest at once; the stack comes
back and finishes the job with nothing counted twice. Skipped, with the reason, where Docker
cannot run. The tests run in file order and share one fleet."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import subprocess
import time
import urllib.error
import urllib.request

import pytest
import yaml

from tests.support.compose_fleet import DEPLOY, ComposeFleet, Engine, Unavailable, base_image
from tests.support.services import free_port, wait_for
from tests.support.tools import unavailable

PROFILES = ("cpu", "observability", "web")
SERVICES = (
    "redis",
    "minio",
    "beat",
    "bookkeeping",
    "worker-cpu",
    "flower",
    "metrics",
    "prometheus",
    "serve",
)
INPUTS, OUTPUTS = "stylebatch-inputs", "stylebatch-outputs"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, images):
    try:
        engine = Engine()
        base = base_image()
    except Unavailable as exc:
        unavailable(f"deploy smoke test: Docker cannot run here: {exc}")
    folder = tmp_path_factory.mktemp("compose")
    folder.chmod(0o755)  # manifests are read in containers as uid 10001
    password = secrets.token_hex(8)
    (folder / "metrics-password").write_text(password)
    env = {
        "REDIS_PASSWORD": secrets.token_hex(8),
        "MINIO_ROOT_USER": "smoke-root",
        "MINIO_ROOT_PASSWORD": secrets.token_hex(8),
        **{
            f"{c.upper()}_S3_KEY": f"smoke{c}"
            for c in ("worker", "bookkeeping", "scheduler", "web")
        },
        **{
            f"{c.upper()}_S3_SECRET": secrets.token_hex(8)
            for c in ("worker", "bookkeeping", "scheduler", "web")
        },
        "STYLEBATCH_FLOWER_USER": "operator",
        "STYLEBATCH_FLOWER_PASSWORD": secrets.token_hex(8),
        "METRICS_PASSWORD": password,
        "METRICS_PASSWORD_FILE": str(folder / "metrics-password"),
        "STYLEBATCH_WEIGHTS": "random:0",  # no pretrained weights on the test machine
        "SMOKE_BASE": base,
        "FLOWER_PORT": str(free_port()),
        "PROMETHEUS_PORT": str(free_port()),
        "MINIO_CONSOLE_PORT": str(free_port()),
        "SMOKE_S3_PORT": str(free_port()),
        "WEB_PORT": str(free_port()),
        "WEB_TEAMS_FILE": str(folder / "web-teams.json"),
        "SMOKE_WEB_TOKEN": secrets.token_hex(16),  # the test's own; compose never reads it
    }
    teams = {  # one team that owns the smoke test's jobs: the fleet's own prefixes
        "smoke": {
            "token_sha256": hashlib.sha256(env["SMOKE_WEB_TOKEN"].encode()).hexdigest(),
            "allowed_inputs": [f"s3://{INPUTS}"],
            "allowed_outputs": [f"s3://{OUTPUTS}"],
        }
    }
    (folder / "web-teams.json").write_text(json.dumps(teams))
    (folder / "web-teams.json").chmod(0o644)
    fleet = ComposeFleet(folder, env, PROFILES)
    fleet.compose("down", "-v", "--remove-orphans", check=False)
    try:
        started = time.monotonic()
        fleet.compose("build")
        fleet.built_s = time.monotonic() - started
        # The images these replaced: a changed lock would otherwise leave gigabytes behind
        subprocess.run(["docker", "image", "prune", "-f"], capture_output=True, check=False)
        fleet.compose("up", "-d", "minio-init", *SERVICES)  # not Grafana: no image here
        assert fleet.inspect("minio-init")["State"]["ExitCode"] == 0, fleet.logs("minio-init")
        s3 = fleet.s3 = root_s3(fleet)
        for name in ("tubingen", "shipwreck", "wave"):
            s3.upload_file(str(images[name]), INPUTS, f"smoke/{name}.png")
        yield fleet
    finally:
        for service in SERVICES:
            print(f"--- {service}\n{fleet.logs(service)[-2000:]}")
        fleet.compose("down", "-v", "--remove-orphans", check=False)
        engine.stop()


def root_s3(fleet: ComposeFleet):
    """The object store with its root key, from the host, as an operator's `mc` would."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{fleet.values['SMOKE_S3_PORT']}",
        aws_access_key_id=fleet.values["MINIO_ROOT_USER"],
        aws_secret_access_key=fleet.values["MINIO_ROOT_PASSWORD"],
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )


def job_manifest(
    fleet: ComposeFleet, name: str, contents: list[str], size: int, iterations: int
) -> str:
    """A manifest put where the scheduler image can read it: a bind mount of the test folder."""
    data = {
        "name": name,
        "output": {"location": f"s3://{OUTPUTS}/{name}"},
        "content": [f"s3://{INPUTS}/smoke/{c}.png" for c in contents],
        "styles": [{"name": "wave", "image": f"s3://{INPUTS}/smoke/wave.png"}],
        "params": {
            "preset": "draft",
            "sizes": [size],
            "pyramid": {"start": 32, "ratio": 1.5, "iterations": iterations},
        },
    }
    (fleet.folder / f"{name}.yaml").write_text(yaml.safe_dump(data))
    return f"/job/{name}.yaml"


def submit(fleet: ComposeFleet, manifest: str) -> str:
    """`stylebatch submit` in a one-off container of the scheduler image, as an operator."""
    result = fleet.compose(
        "run", "--rm", "--no-deps", "-v", f"{fleet.folder}:/job:ro", "beat", "submit", manifest
    )
    return result.stdout.strip().splitlines()[-1]


def record(fleet: ComposeFleet, job: str) -> dict:
    return json.loads(fleet.stylebatch("status", job, "--json", check=False).stdout)


def wait_done(fleet: ComposeFleet, job: str, timeout: float = 240) -> dict:
    wait_for(lambda: record(fleet, job)["status"] == "done", timeout, f"job {job}")
    return record(fleet, job)


def get(
    url: str, auth: tuple[str, str] | None = None, bearer: str = "", timeout: float = 10
) -> tuple[int, bytes]:
    """(status, body) of a GET, with basic auth or a bearer token if given."""
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    if bearer:
        request.add_header("Authorization", f"Bearer {bearer}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def flower_tasks(fleet: ComposeFleet) -> dict:
    port, v = fleet.values["FLOWER_PORT"], fleet.values
    status, body = get(
        f"http://127.0.0.1:{port}/api/tasks",
        (v["STYLEBATCH_FLOWER_USER"], v["STYLEBATCH_FLOWER_PASSWORD"]),
    )
    assert status == 200, body[:200]
    return json.loads(body)


def test_job_through_the_scheduler_image_reaches_done(fleet):
    job = submit(fleet, job_manifest(fleet, "smoke-one", ["tubingen", "shipwreck"], 40, 4))
    info = wait_done(fleet, job)
    assert (info["done"], info["failed"], info["total"]) == (2, 0, 2), info
    keys = {
        o["Key"]
        for o in fleet.s3.list_objects_v2(Bucket=OUTPUTS, Prefix="smoke-one/").get("Contents", [])
    }
    assert {
        "smoke-one/tubingen/wave-40.png",
        "smoke-one/shipwreck/wave-40.png",
        "smoke-one/summary.json",
    } <= keys, keys
    summary = json.loads(
        fleet.s3.get_object(Bucket=OUTPUTS, Key="smoke-one/summary.json")["Body"].read()
    )
    assert summary["job_id"] == job and len(summary["renders"]) == 2
    assert summary["weights"].startswith("random")  # visibly not pretrained
    fleet.first_job = job


def test_serve_is_ready_and_shows_the_team_its_job_and_thumbnails(fleet):
    """The web front's container: healthy by its own /ready check, 401 without a token, and
    with the team's token the job, its renders and a thumbnail read through the server."""
    manifest = job_manifest(fleet, "smoke-web", ["tubingen"], 48, 2)
    job = submit(fleet, manifest)
    wait_done(fleet, job)
    wait_for(
        lambda: fleet.inspect("serve")["State"].get("Health", {}).get("Status") == "healthy",
        120,
        "serve healthy",
    )
    base = f"http://127.0.0.1:{fleet.values['WEB_PORT']}"
    assert get(f"{base}/ready")[0] == 200
    assert get(f"{base}/jobs/{job}")[0] == 401

    def authed(path: str) -> tuple[int, bytes]:
        return get(f"{base}{path}", bearer=fleet.values["SMOKE_WEB_TOKEN"], timeout=30)

    status, body = authed(f"/jobs/{job}")
    assert status == 200 and json.loads(body)["status"] == "done", body[:300]
    status, body = authed(f"/jobs/{job}/renders")
    renders = json.loads(body)["renders"]
    assert status == 200 and len(renders) == 1, body[:300]
    status, thumb = authed(f"/jobs/{job}/renders/{renders[0]['render']}/thumbnail")
    assert status == 200 and thumb[:3] == b"\xff\xd8\xff", thumb[:40]  # a JPEG
    status, page = authed(f"/ui/jobs/{job}/gallery")
    assert status == 200 and b"<img" in page


def test_flower_shows_the_tasks_with_auth_and_keeps_them_across_a_restart(fleet):
    port = fleet.values["FLOWER_PORT"]
    assert get(f"http://127.0.0.1:{port}/api/tasks")[0] == 401  # no auth, no tasks
    wait_for(
        lambda: any(t.get("name") == "stylebatch.render" for t in flower_tasks(fleet).values()),
        60,
        "render tasks in Flower",
    )
    before = set(flower_tasks(fleet))
    fleet.compose("restart", "flower")
    wait_for(lambda: get(f"http://127.0.0.1:{port}/healthcheck")[0] == 200, 60, "Flower")
    after = set(flower_tasks(fleet))
    assert before and before <= after, (before, after)


def test_prometheus_scrapes_metrics_with_auth_and_loads_the_rules(fleet):
    port = fleet.values["PROMETHEUS_PORT"]

    def target_up() -> bool:
        body = json.loads(get(f"http://127.0.0.1:{port}/api/v1/targets")[1])
        targets = body["data"]["activeTargets"]
        return any(t["labels"]["job"] == "stylebatch" and t["health"] == "up" for t in targets)

    wait_for(target_up, 90, "the stylebatch target up in Prometheus")
    rules = json.loads(get(f"http://127.0.0.1:{port}/api/v1/rules")[1])["data"]["groups"]
    alerts = {r["name"] for g in rules for r in g["rules"] if r["type"] == "alerting"}
    shipped = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    expected = {r["alert"] for g in shipped["groups"] for r in g["rules"] if "alert" in r}
    assert alerts == expected and len(expected) >= 6, (alerts, expected)
    assert scrape(fleet)[0] == scrape(fleet, "metrics:wrong")[0] == 401
    status, body = scrape(fleet, f"metrics:{fleet.values['METRICS_PASSWORD']}")
    assert status == 200 and "stylebatch_renders_ended_total" in body


SCRAPE = """import base64, sys, urllib.error, urllib.request
r = urllib.request.Request("http://metrics:9808/metrics")
if sys.argv[1]:
    r.add_header("Authorization", "Basic " + base64.b64encode(sys.argv[1].encode()).decode())
try:
    with urllib.request.urlopen(r, timeout=10) as f:
        print(f.status)
        print(f.read().decode())
except urllib.error.HTTPError as e:
    print(e.code)
"""


def scrape(fleet: ComposeFleet, auth: str = "") -> tuple[int, str]:
    """`metrics` as Prometheus reaches it: from inside the Compose network (it is published
    nowhere), with basic auth ``user:password`` or none."""
    status, _, body = fleet.python(SCRAPE, auth).partition("\n")
    return int(status), body


def ended_done(fleet: ComposeFleet) -> float:
    """The fleet's count of renders ended done, from `metrics` (with its auth)."""
    body = scrape(fleet, f"metrics:{fleet.values['METRICS_PASSWORD']}")[1]
    found = re.search(r'^stylebatch_renders_ended_total{status="done"} (\S+)$', body, re.M)
    return float(found.group(1)) if found else 0.0


def stop_times(fleet: ComposeFleet, since: float) -> dict[str, tuple[float, float]]:
    """(when its SIGTERM came, when it exited) per service, from the engine's own events."""
    names = {fleet.inspect(s)["Name"].lstrip("/"): s for s in SERVICES}
    events = subprocess.run(
        [
            "docker",
            "events",
            "--since",
            f"{since:.3f}",
            "--until",
            f"{time.time():.3f}",
            "--filter",
            "type=container",
            "--format",
            "{{json .}}",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.splitlines()
    signalled, died = {}, {}
    for line in events:
        event = json.loads(line)
        service = names.get(event.get("Actor", {}).get("Attributes", {}).get("name", ""))
        when = event["timeNano"] / 1e9
        if service and event["Action"] == "kill" and service not in signalled:
            signalled[service] = when
        elif service and event["Action"] == "die":
            died[service] = when
    return {s: (signalled[s], died[s]) for s in SERVICES if s in signalled and s in died}


def test_stop_drains_the_rendering_worker_and_stops_the_rest_at_once(fleet):
    assert ended_done(fleet) == 3  # the first job's 2 renders and the web check's 1, once each
    job = submit(
        fleet, job_manifest(fleet, "smoke-drain", ["tubingen", "shipwreck", "wave"], 96, 40)
    )
    wait_for(lambda: record(fleet, job)["running"] >= 1, 120, "a render running")
    time.sleep(2)  # well into the render
    stopped = time.time()
    fleet.compose("stop", timeout=300)
    states = {s: fleet.inspect(s)["State"] for s in SERVICES}
    for service, state in states.items():
        assert state["Status"] == "exited", (service, state)
        assert state["ExitCode"] in (0, 143), (service, state["ExitCode"])  # 137: killed
    assert states["worker-cpu"]["ExitCode"] == 0
    times = stop_times(fleet, stopped - 1)
    assert set(times) == set(SERVICES), times  # each got its SIGTERM and exited on its own
    worker_signalled, worker_done = times["worker-cpu"]
    for service in ("flower", "metrics", "prometheus", "bookkeeping", "beat"):
        signalled, died = times[service]
        assert died - signalled < 5, (service, died - signalled)  # at once, well in its grace
    for service in ("redis", "minio"):  # stopped after the worker that needs them
        signalled, died = times[service]
        assert worker_done <= signalled and died - signalled < 5, (service, times)
    fleet.drain = (job, worker_signalled, worker_done)


def test_the_stack_restarts_and_finishes_the_job_counting_each_render_once(fleet):
    job, stopped, worker_done = fleet.drain
    fleet.compose("start")
    info = wait_done(fleet, job, timeout=300)
    assert (info["done"], info["failed"], info["total"]) == (3, 0, 3), info
    outputs = {
        o["Key"]: o["LastModified"].timestamp()
        for o in fleet.s3.list_objects_v2(Bucket=OUTPUTS, Prefix="smoke-drain/")["Contents"]
        if o["Key"].endswith("/wave-96.png") and not o["Key"].startswith("smoke-drain/_")
    }
    assert len(outputs) == 3, outputs
    # The render in flight at `stop` was finished by the draining worker, before it exited
    assert any(stopped - 1 <= t <= worker_done + 1 for t in outputs.values()), (
        outputs,
        stopped,
        worker_done,
    )
    wait_for(lambda: ended_done(fleet) == 6, 60, "metrics to count 6 renders done")
    assert ended_done(fleet) == 6  # 2 + 1 + 3: nothing counted twice
