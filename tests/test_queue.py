"""Celery configuration that the fleet's guarantees rest on."""

from __future__ import annotations

from common.params import RenderParams
from common.queue import RENDER_QUEUE, RENDER_TASK, celery_priority, make_app, time_limits
from common.settings import Settings


def test_time_limits_follow_the_work_and_stay_below_the_visibility_timeout():
    settings = Settings(max_time_limit=3600)
    app = make_app(settings)
    visibility = app.conf.broker_transport_options["visibility_timeout"]
    assert app.conf.visibility_timeout == visibility
    assert app.conf.result_backend_transport_options["visibility_timeout"] == visibility
    standard = RenderParams(preset="standard").resolved()
    high = RenderParams(preset="high").resolved()
    small = time_limits(512, standard, 1, settings)
    large = time_limits(2048, standard, 1, settings)
    slow = time_limits(2048, high, 8, settings)
    for soft, hard in (small, large, slow):
        assert soft < hard <= settings.max_time_limit < visibility
    assert small[0] < large[0] < slow[0]
    assert slow[1] == settings.max_time_limit  # capped


def test_json_only_late_acks_one_at_a_time_and_separate_queues():
    conf = make_app(Settings()).conf
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.result_accept_content == ["json"]
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_routes[RENDER_TASK]["queue"] == RENDER_QUEUE != conf.task_default_queue
    assert conf.worker_send_task_events and conf.task_send_sent_event
    assert celery_priority(9) == 0 and celery_priority(0) == 9
