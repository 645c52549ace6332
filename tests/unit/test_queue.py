"""Celery configuration that the fleet's guarantees rest on."""

from __future__ import annotations

from common.params import RenderParams
from common.queue import (
    RENDER_QUEUE,
    RENDER_TASK,
    celery_priority,
    device_kind,
    make_app,
    seconds_per_unit,
    task_work,
    time_limits,
)
from common.settings import Settings


def test_time_limits_follow_the_work_and_the_device_and_stay_below_the_visibility_timeout():
    settings = Settings(max_time_limit=3600)
    app = make_app(settings)
    visibility = app.conf.broker_transport_options["visibility_timeout"]
    assert app.conf.visibility_timeout == visibility
    assert app.conf.result_backend_transport_options["visibility_timeout"] == visibility
    standard = RenderParams(preset="standard").resolved()
    high = RenderParams(preset="high").resolved()
    gpu = seconds_per_unit(Settings(device="cuda"))
    small = time_limits(task_work(512, standard, 1), gpu, settings.max_time_limit)
    large = time_limits(task_work(2048, standard, 1), gpu, settings.max_time_limit)
    slow = time_limits(task_work(2048, high, 32), gpu, settings.max_time_limit)
    for soft, hard in (small, large, slow):
        assert soft < hard <= settings.max_time_limit < visibility
    assert small[0] < large[0] < slow[0]
    assert slow[1] == settings.max_time_limit  # capped


def test_a_cpu_worker_gives_a_small_draft_render_time_a_gpu_would_not():
    draft = RenderParams(preset="draft").resolved()
    work = task_work(128, draft, 1)
    cpu = seconds_per_unit(Settings(device="cpu"))
    gpu = seconds_per_unit(Settings(device="cuda"))
    assert cpu > 100 * gpu
    cpu_soft, _ = time_limits(work, cpu, 3 * 3600)
    gpu_soft, _ = time_limits(work, gpu, 3 * 3600)
    assert gpu_soft <= 61  # a hung GPU render is caught within about a minute
    assert cpu_soft >= 3 * 2 * work * 12  # 3x two processes sharing this 2-core machine
    assert seconds_per_unit(Settings(device="cpu", seconds_per_mpix_iteration=2.0)) == 2.0
    assert device_kind("cuda:1") == "cuda" and device_kind("cpu") == "cpu"


def test_json_only_late_acks_one_at_a_time_and_separate_queues():
    conf = make_app(Settings()).conf
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.result_accept_content == ["json"]
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_routes[RENDER_TASK]["queue"] == RENDER_QUEUE != conf.task_default_queue
    assert conf.worker_send_task_events and conf.task_send_sent_event
    assert celery_priority(9) == 0 and celery_priority(0) == 9
