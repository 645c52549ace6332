"""Render processes sized to the CPUs they get: affinity, cgroup quota (v2 and v1), the share
among `--cpu-workers`, the STYLEBATCH_TORCH_THREADS override, and time limits that follow."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from common.queue import (
    available_cpus,
    cgroup_cpu_limit,
    seconds_per_unit,
    task_work,
    time_limits,
    torch_threads,
)
from common.settings import Settings
from scheduler.cli.services import worker_commands
from tests.support.paths import ROOT


def cgroup(tmp_path, files: dict[str, str]):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("files", "cpus"),
    [
        ({"cpu.max": "200000 100000\n"}, 2.0),
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "50000 100000\n"}, 0.5),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3.0),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu.max": "garbage"}, None),
        ({}, None),
    ],
)
def test_cgroup_quota_parsing(tmp_path, files, cpus):
    assert cgroup_cpu_limit(cgroup(tmp_path, files)) == cpus


def test_the_quota_caps_the_affinity_and_is_shared_among_processes(tmp_path):
    mine = len(os.sched_getaffinity(0))
    assert available_cpus(cgroup(tmp_path, {})) == mine
    assert available_cpus(cgroup(tmp_path, {"cpu.max": "150000 100000"})) == 1  # not throttled
    assert available_cpus(cgroup(tmp_path, {"cpu.max": "10000 100000"})) == 1  # at least one
    roomy = cgroup(tmp_path / "roomy", {"cpu.max": "6400000 100000"})
    assert available_cpus(roomy) == mine  # a quota above the affinity changes nothing
    assert torch_threads(Settings(), processes=mine, root=roomy) == 1
    assert torch_threads(Settings(), processes=4 * mine, root=roomy) == 1
    assert torch_threads(Settings(torch_threads=5), processes=8, root=roomy) == 5  # override


def test_stylebatch_worker_shares_the_cpus_out_and_keeps_an_explicit_setting():
    mine = len(os.sched_getaffinity(0))
    commands = worker_commands([], "h", cpu_workers=2, bookkeeping=True, settings=Settings())
    renders = [env for argv, env in commands if "render" in argv]
    assert len(renders) == 2
    assert {env["STYLEBATCH_TORCH_THREADS"] for env in renders} == {str(max(1, mine // 2))}
    (_, bookkeeping) = commands[-1]
    assert "STYLEBATCH_TORCH_THREADS" not in bookkeeping
    explicit = worker_commands([], "h", cpu_workers=2, settings=Settings(torch_threads=3))
    assert explicit[0][1]["STYLEBATCH_TORCH_THREADS"] == "3"


def test_time_limits_follow_the_threads_a_process_has():
    work = task_work(512, {"pyramid": {"start": 128, "ratio": 2.0, "iterations": 50}}, 1)
    one = seconds_per_unit(Settings(device="cpu", torch_threads=1))
    two = seconds_per_unit(Settings(device="cpu", torch_threads=2))
    many = seconds_per_unit(Settings(device="cpu", torch_threads=16))
    assert one == 2 * two and many == two  # never shorter than measured with two threads
    assert time_limits(work, one, 10**6)[0] > time_limits(work, two, 10**6)[0]
    assert seconds_per_unit(Settings(device="cuda", torch_threads=1)) < 1  # a GPU's own figure


def _threads_in_a_render_process(env: dict[str, str], pin: str | None) -> str:
    """What a render process chooses: workers.render.size_threads, as Renderer.engine calls it
    before its first render, in a fresh interpreter, optionally under taskset."""
    code = (
        "import torch; from common.settings import Settings; "
        "from workers.render import size_threads; "
        "n = size_threads(Settings.from_env()); "
        "print(n, torch.get_num_threads(), torch.get_num_interop_threads())"
    )
    argv = [sys.executable, "-c", code]
    if pin is not None:
        argv = ["taskset", "-c", pin, *argv]
    clean = {k: v for k, v in os.environ.items() if k != "STYLEBATCH_TORCH_THREADS"}
    done = subprocess.run(
        argv, env={**clean, **env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.skipif(not shutil.which("taskset"), reason="taskset (util-linux) is not installed")
def test_a_render_process_pinned_to_one_cpu_takes_one_thread():
    assert _threads_in_a_render_process({}, "0") == "1 1 1"
    assert _threads_in_a_render_process({"STYLEBATCH_TORCH_THREADS": "3"}, "0") == "3 3 1"
    mine = len(os.sched_getaffinity(0))
    assert _threads_in_a_render_process({}, None) == f"{mine} {mine} 1"
