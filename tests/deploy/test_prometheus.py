"""Prometheus and Grafana as shipped: `promtool check config` passes on deploy/prometheus as it
lies (paths relative to the config, which is also how Compose mounts it); the alert rules and
the dashboard name only metrics the code exports; `promtool test rules` runs a unit test per
alert (deploy/prometheus/alerts.test.yml), each firing when it should and silent otherwise;
and the dashboard type-checks against Grafana's own schema (@grafana/schema at the Grafana
image's version, tsc --strict, offline)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import yaml

from scheduler.metrics import NAMES
from tests.support import deploy_tools
from tests.support.paths import ROOT

PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "stylebatch.json"


def compose() -> dict:
    return yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())


def test_promtool_checks_the_config_as_shipped(tmp_path):
    done = subprocess.run(
        [deploy_tools.promtool(), "check", "config", str(PROMETHEUS / "prometheus.yml")],
        cwd=tmp_path,  # paths resolve from the config's folder, not from where it is run
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout and "rules found" in done.stdout


def test_alert_rules_name_only_exported_metrics():
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    alerts = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}
    assert {
        "RenderQueueOld",
        "JobsStuck",
        "RenderFailureRate",
        "NoWorkersForQueuedWork",
        "RedisMemoryHigh",
    } <= set(alerts)
    for alert, expr in alerts.items():
        used = set(re.findall(r"\bstylebatch_[a-z_]+", expr))
        assert used and used <= set(NAMES), (alert, used - set(NAMES))
    promtool = shutil.which("promtool")
    if promtool:  # where Prometheus's own checker is installed, it must accept the rules too
        checked = subprocess.run(
            [promtool, "check", "rules", str(ROOT / "deploy/prometheus/alerts.yml")],
            capture_output=True,
            text=True,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
    dashboard = (ROOT / "deploy/grafana/stylebatch.json").read_text()
    assert set(re.findall(r"\bstylebatch_[a-z_]+", dashboard)) <= set(NAMES)


def test_compose_mounts_every_file_the_config_names_beside_it():
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    named = list(config["rule_files"])
    named += [c["basic_auth"]["password_file"] for c in config["scrape_configs"]]
    mounts = {}
    for volume in compose()["services"]["prometheus"]["volumes"]:
        # ${VAR:-default} sources: the default, which is what a plain `up` mounts
        volume = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", volume)
        source, target, *_ = volume.split(":")
        mounts[PurePosixPath(target)] = (ROOT / "deploy" / source).resolve()
    config_in_container = next(t for t, s in mounts.items() if s.name == "prometheus.yml")
    for name in named:
        assert not PurePosixPath(name).is_absolute(), name
        target = config_in_container.parent / name
        assert mounts.get(target) == (PROMETHEUS / name).resolve(), name


def test_every_alert_has_unit_tests_that_fire_and_stay_silent():
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    tests = yaml.safe_load((PROMETHEUS / "alerts.test.yml").read_text())
    assert tests["rule_files"] == ["alerts.yml"]
    fires, silent = set(), set()
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check["exp_alerts"] else silent).add(check["alertname"])
    assert fires == alerts, f"no firing case for {alerts - fires}"
    assert silent == alerts, f"no silent case for {alerts - silent}"


def test_promtool_runs_the_alert_unit_tests(tmp_path):
    promtool = deploy_tools.promtool()
    done = subprocess.run(
        [promtool, "test", "rules", str(PROMETHEUS / "alerts.test.yml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
    # the unit tests have teeth: with a threshold loosened, a silent case fires
    (tmp_path / "alerts.yml").write_text(
        (PROMETHEUS / "alerts.yml").read_text().replace("> 0.05", "> 0.02")
    )
    (tmp_path / "alerts.test.yml").write_text((PROMETHEUS / "alerts.test.yml").read_text())
    broken = subprocess.run(
        [promtool, "test", "rules", "alerts.test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert broken.returncode != 0 and "RenderFailureRate" in broken.stdout + broken.stderr


def dashboard_check(dashboard: dict, where: Path) -> subprocess.CompletedProcess:
    node_modules = deploy_tools.node_modules(where)
    source = where / "dashboard.ts"
    source.write_text(
        'import type { Dashboard } from "@grafana/schema";\n\n'
        f"export const dashboard: Dashboard = {json.dumps(dashboard, indent=1)};\n"
    )
    compiler = node_modules / "typescript" / "bin" / "tsc"
    flags = ["--strict", "--noEmit", "--target", "es2022", "--module", "esnext"]
    return subprocess.run(
        ["node", str(compiler), *flags, "--moduleResolution", "bundler", source.name],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_dashboard_type_checks_against_grafanas_schema(tmp_path):
    image = compose()["services"]["grafana"]["image"]
    pins = json.loads(deploy_tools.PACKAGE_JSON.read_text())["dependencies"]
    assert image == f"grafana/grafana:{pins['@grafana/schema']}"  # the schema of that Grafana
    dashboard = json.loads(DASHBOARD.read_text())
    done = dashboard_check(dashboard, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    # and the check is real: a wrong type or an unknown field fails it
    dashboard["refresh"] = 30
    dashboard["panels"][0]["colour"] = "red"
    bad = tmp_path / "bad"
    bad.mkdir()
    done = dashboard_check(dashboard, bad)
    assert done.returncode != 0
    assert "colour" in done.stdout and "not assignable to type 'string'" in done.stdout
