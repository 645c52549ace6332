"""The fault-injection harness's short, seeded run (bench/chaos.py --short): a real fleet
(Redis, SeaweedFS, two render workers behind partitionable proxies, bookkeeping, an
S3-sourced beat, a flaky webhook receiver) meets every fault kind once, and the invariants
hold against Redis and S3: every job ended, nothing lost or counted twice, outputs exactly
the done renders with their ids, summaries agreeing with both, one delivery id per job end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.paths import ROOT
from tests.support.services import weed_binary
from tests.support.tools import REDIS, WEED, require

pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def services_installed():
    """bench/chaos.py starts its own Redis (or Sentinel set) and SeaweedFS."""
    require("redis-server", REDIS)
    require("weed", WEED, weed_binary())


@pytest.mark.slow
def test_every_fault_kind_once_and_the_invariants_hold(tmp_path):
    out = tmp_path / "chaos.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "chaos.py"), "--seed", "1", "--short",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["problems"] == [], done.stdout[-4000:]
    assert report["settled"] and report["lost"] == 0 and report["double_counted"] == 0
    assert set(report["faults"]) >= {
        "kill_worker", "pause_worker", "partition_worker", "restart_redis", "s3_outage",
        "duplicate_tasks", "kill_submit", "kill_bookkeeping_finalizing",
    }  # fmt: skip
    assert report["beat_slots"] >= 1 and report["webhook_posts"] >= report["jobs"] - 1
    assert done.returncode == 0


@pytest.mark.slow
def test_a_sentinel_failover_among_the_faults_loses_nothing(tmp_path):
    """The same with Redis as a Sentinel set (a primary, a replica, three sentinels): planned
    failovers mid-job (writes paused, replicas caught up, clients moved) besides the rest."""
    out = tmp_path / "chaos.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "chaos.py"), "--seed", "3", "--short",
         "--sentinel", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["problems"] == [], done.stdout[-4000:]
    assert report["faults"].get("failover_redis", 0) >= 1
    assert report["settled"] and report["lost"] == 0 and report["double_counted"] == 0
