"""The fleet's Celery app, and nothing else: what beat and Flower start from (``celery -A
common.celery_app``). They need the broker, the queues and the task names, never the code of
a task, so they import neither the render workers (torch) nor bookkeeping."""

from common.queue import make_app

app = make_app()
