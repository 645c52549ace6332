"""deploy/ agrees with the code: files parse, every command a container runs exists with its
options, every setting it passes is read by the code, and the key properties hold."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import click
import pytest
import typer.main
import yaml

from scheduler.cli import app
from tests.support.paths import ROOT

DEPLOY = ROOT / "deploy"
CODE = "\n".join(p.read_text() for d in ("common", "scheduler", "workers")
                 for p in (ROOT / d).rglob("*.py"))  # fmt: skip


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def compose() -> dict:
    return documents(DEPLOY / "docker-compose.yml")[0]


def k8s() -> list[dict]:
    """The objects of deploy/k8s (the kustomize base) as written; tests/deploy/test_k8s.py checks
    them, and the overlays as rendered, against the real schemas and a policy scanner."""
    docs = [d for p in sorted((DEPLOY / "k8s").glob("*.yaml")) for d in documents(p)]
    return [d for d in docs if d.get("kind") != "Kustomization"]


def overlay_patch(overlay: str, name: str) -> dict:
    """The strategic-merge patch an overlay (deploy/overlays/) applies to object ``name``."""
    kustomization = documents(DEPLOY / "overlays" / overlay / "kustomization.yaml")[0]
    patch = next(p for p in kustomization["patches"] if p["target"]["name"] == name)
    return yaml.safe_load(patch["patch"])


def containers() -> list[tuple[str, list[str], str]]:
    """(where, argv after the `stylebatch` entrypoint, image) for every stylebatch container."""
    found = []
    for name, service in compose()["services"].items():
        image = service.get("image", "")
        if image.startswith("stylebatch-"):
            found.append((f"compose:{name}", service["command"], image))
    for doc in k8s():
        spec = doc.get("spec", {})
        pod = spec.get("template", spec.get("jobTemplate", {}).get("spec", {}).get("template", {}))
        for c in pod.get("spec", {}).get("containers", []) if pod else []:
            if "stylebatch" in c["image"]:
                found.append((f"k8s:{doc['metadata']['name']}", c["args"], c["image"]))
    return found


def test_every_file_parses():
    assert compose()["services"]
    kinds = {d["kind"] for d in k8s()}
    assert {"Deployment", "CronJob", "ScaledObject", "ConfigMap", "Service", "Namespace"} <= kinds
    assert "Secret" not in kinds  # created by the operator: deploy/k8s/README.md


@pytest.mark.parametrize(("where", "argv", "image"), containers())
def test_container_commands_exist_with_their_options(where, argv, image):
    group = typer.main.get_command(app)
    name, *args = argv
    command = group.get_command(click.Context(group), name)
    assert command is not None, f"{where}: no command {name!r}"
    command.make_context(name, list(args))  # raises on an unknown option or missing argument
    if name == "worker" and "--no-renders" not in args:
        assert "worker" in image, f"{where}: render workers need the torch image"


def test_settings_passed_are_read_by_the_code():
    paths = [*(DEPLOY / "k8s").glob("*.yaml"), *(DEPLOY / "overlays").rglob("*.yaml")]
    paths += [DEPLOY / "k8s" / "README.md"]  # the Secrets' commands
    text = (DEPLOY / "docker-compose.yml").read_text() + "".join(p.read_text() for p in paths)
    names = set(re.findall(r"\b(STYLEBATCH_[A-Z_]+)\b", text))
    assert names
    documented = (ROOT / "docs" / "configuration.md").read_text()
    for name in names:
        assert f'"{name}"' in CODE, f"{name} is set in deploy/ but never read"
        assert name in documented, f"{name} is not documented in docs/configuration.md"


def test_compose_properties():
    services = compose()["services"]
    redis_cmd = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_cmd and "--requirepass" in redis_cmd
    assert "--maxmemory-policy noeviction" in redis_cmd
    gpus = [s for s in services.values() if "devices" in str(s.get("deploy", {}))]
    ids = [s["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] for s in gpus]
    assert len(gpus) >= 1 and len({tuple(i) for i in ids}) == len(ids)  # one GPU each
    assert "mc mb" in " ".join(services["minio-init"]["command"])
    assert services["flower"]["environment"]["STYLEBATCH_FLOWER_PASSWORD"]


def test_busy_workers_are_given_longer_than_any_task_to_finish():
    """Scale-in, drains and `compose stop` send SIGTERM; a warm shutdown finishes the render."""
    config = {(d["kind"], d["metadata"]["name"]): d for d in k8s()}
    limit = int(config[("ConfigMap", "stylebatch-config")]["data"]["STYLEBATCH_MAX_TIME_LIMIT"])
    pod = config[("Deployment", "stylebatch-worker")]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > limit
    services = compose()["services"]
    env_limit = int(services["worker-gpu0"]["environment"]["STYLEBATCH_MAX_TIME_LIMIT"])
    grace = services["worker-gpu0"]["stop_grace_period"]
    assert grace.endswith("m") and int(grace[:-1]) * 60 > env_limit


def test_k8s_properties():
    docs = {(d["kind"], d["metadata"]["name"]): d for d in k8s()}
    worker = overlay_patch("gpu", "stylebatch-worker")  # the base is device-neutral
    limits = worker["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1
    base = docs[("Deployment", "stylebatch-worker")]["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in str(base)
    assert docs[("Deployment", "stylebatch-beat")]["spec"]["replicas"] == 1
    scaled = docs[("ScaledObject", "stylebatch-worker")]
    lists = {t["metadata"]["listName"] for t in scaled["spec"]["triggers"]}
    assert lists == {"render"} | {f"render:{i}" for i in range(1, 10)}


def test_images_build_on_plain_python_and_run_as_the_manifests_uid():
    """Torch stays out of the scheduler image by its lock (tests/unit/test_lock.py); both images
    start from the same Python, install the project without its dependencies (the lock has
    them) and run as uid 10001, the one the Kubernetes manifests ask for."""
    for name in ("Dockerfile.scheduler", "Dockerfile.worker"):
        text = (DEPLOY / name).read_text()
        assert "ARG BASE=python:3.11-slim" in text, name
        assert "--no-deps --no-build-isolation ." in text and "USER 10001" in text, name
        assert "useradd --create-home --uid 10001 stylebatch" in text, name


def test_least_privilege_each_component_its_own_object_store_user():
    services = compose()["services"]
    ours = {n: s for n, s in services.items() if s.get("image", "").startswith("stylebatch-")}
    keys = {}
    for name, service in ours.items():
        env = service["environment"]
        assert not any("MINIO_ROOT" in str(v) for v in env.values()), name  # never the root
        keys[name] = env.get("AWS_ACCESS_KEY_ID")
    assert keys["flower"] is None  # Flower needs no object store
    required = "${{{0}:?set {0} in deploy/.env}}".format  # a missing one stops `up` by name
    assert {keys[w] for w in ("worker-gpu0", "worker-gpu1", "worker-cpu")} == {
        required("WORKER_S3_KEY")
    }
    assert keys["bookkeeping"] == required("BOOKKEEPING_S3_KEY")
    assert keys["beat"] == required("SCHEDULER_S3_KEY")
    assert keys["serve"] == required("WEB_S3_KEY")
    init = " ".join(services["minio-init"]["command"])
    policies = {p.stem: json.loads(p.read_text()) for p in (DEPLOY / "minio").glob("*.json")}
    assert set(policies) == {"worker", "bookkeeping", "scheduler", "web"}
    assert all(f"{name}:" in init for name in policies) and "mc admin policy attach" in init

    def granted(policy: dict, action: str) -> set[str]:
        return {r for s in policy["Statement"] if action in s["Action"] for r in s["Resource"]}

    for name, policy in policies.items():
        actions = {a for s in policy["Statement"] for a in s["Action"]}
        assert all(a.startswith("s3:") and "*" not in a for a in actions), name
        assert all(s["Effect"] == "Allow" for s in policy["Statement"])
        writes = granted(policy, "s3:PutObject") | granted(policy, "s3:DeleteObject")
        assert all(r.startswith("arn:aws:s3:::stylebatch-outputs/") for r in writes), name
    assert granted(policies["scheduler"], "s3:PutObject") == {
        "arn:aws:s3:::stylebatch-outputs/*.stylebatch-write-check"  # the preflight probe only
    }
    assert granted(policies["web"], "s3:PutObject") == granted(
        policies["scheduler"], "s3:PutObject"
    )
    assert "arn:aws:s3:::stylebatch-outputs/*" in granted(policies["web"], "s3:GetObject")
    assert "arn:aws:s3:::stylebatch-models/*" in granted(policies["worker"], "s3:GetObject")
    assert granted(policies["bookkeeping"], "s3:GetObject") == {
        "arn:aws:s3:::stylebatch-outputs/*",
        "arn:aws:s3:::stylebatch-inputs/*",  # the contact sheet's content and style thumbnails
    }


# One Secret per component, with its own object-store user: tests/deploy/test_k8s.py, against the
# commands in deploy/k8s/README.md that create them (no Secret is in the manifests).


def test_the_built_package_carries_every_file_the_code_reads(tmp_path):
    """The images install the wheel, not the tree: the Lua scripts, the web front's templates
    and its static files must be in it (the Compose smoke test found them missing once)."""
    import sys
    import zipfile

    # from a copy of the files git sees, as an image's build context has them: no egg-info or
    # build folder left by an editable install (setuptools would take its file list from it)
    source = tmp_path / "source"
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    for name in listed:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    build = ["wheel", "-q", "--no-deps", "--no-build-isolation", str(source), "-w", str(tmp_path)]
    subprocess.run(
        [sys.executable, "-m", "pip", *build],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("stylebatch-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = [
        p.relative_to(ROOT).as_posix()
        for folder in ("common/lua", "scheduler/web/templates", "scheduler/web/static")
        for p in (ROOT / folder).iterdir()
        if p.is_file()
    ]
    assert len(wanted) > 20
    assert not [name for name in wanted if name not in names]
