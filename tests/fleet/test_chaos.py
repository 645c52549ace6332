"""The fault-injection harness's short, seeded runs (bench/chaos.py --short): a real fleet
(Redis, SeaweedFS, two render workers behind partitionable proxies, bookkeeping, an
S3-sourced beat, a flaky webhook receiver, S3 behind a delaying proxy) meets every fault kind
once, and the invariants hold against Redis and S3: every job ended, nothing lost or counted
twice, outputs exactly the done renders with their ids, summaries agreeing with both, one
delivery id per job end (operators' cancels, retries, --force and gc accounted for). Then
with Redis as a Sentinel set, the kinds Sentinel changes: planned failovers, and a primary
killed while its replica lags."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.chaos import FAKETIME, KINDS
from tests.support.paths import ROOT
from tests.support.services import weed_binary
from tests.support.tools import FAKETIME as FAKETIME_INSTALL
from tests.support.tools import REDIS, WEED, require, unavailable

pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def services_installed():
    """bench/chaos.py starts its own Redis (or Sentinel set) and SeaweedFS; skewed_clock needs
    libfaketime."""
    require("redis-server", REDIS)
    require("weed", WEED, weed_binary())
    if not Path(FAKETIME).exists():
        unavailable(f"{FAKETIME} is not installed ({FAKETIME_INSTALL})")


def chaos(tmp_path: Path, *args: str) -> tuple[dict, subprocess.CompletedProcess]:
    out = tmp_path / "chaos.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "chaos.py"), *args, "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text()), done


@pytest.mark.slow
def test_every_fault_kind_once_and_the_invariants_hold(tmp_path):
    report, done = chaos(tmp_path, "--seed", "1", "--short")
    assert report["problems"] == [], done.stdout[-4000:]
    assert report["settled"] and report["lost"] == 0 and report["double_counted"] == 0
    assert set(report["faults"]) == set(KINDS)
    assert report["beat_slots"] >= 1 and report["webhook_posts"] >= report["jobs"] - 1
    operator = next(f for f in report["fault_log"] if f["kind"] == "operator_action")
    assert [a["command"] for a in operator["actions"]] == ["cancel", "force", "retry", "gc"]
    assert done.returncode == 0


@pytest.mark.slow
def test_a_primary_killed_while_its_replica_lags_loses_nothing(tmp_path):
    """Redis as a Sentinel set (a primary, a replica, three sentinels): the primary SIGKILLed
    once its replica has stopped taking the stream, so the promoted replica lacks its last
    writes (render ends among them); a planned failover mid-job; the primary out of memory."""
    kinds = "kill_primary_lagging,failover_redis,redis_memory_pressure"
    report, done = chaos(tmp_path, "--seed", "3", "--short", "--sentinel", "--kinds", kinds)
    assert report["problems"] == [], done.stdout[-4000:]
    assert set(report["faults"]) == set(kinds.split(","))
    (lagging,) = [f for f in report["fault_log"] if f["kind"] == "kill_primary_lagging"]
    assert lagging["last_write_lost"] and lagging["unreplicated_bytes"] > 0
    assert report["settled"] and report["lost"] == 0 and report["double_counted"] == 0
    assert done.returncode == 0
