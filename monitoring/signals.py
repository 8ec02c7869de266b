"""Time every Celery task once, here, instead of in each task."""

import time

from celery import signals

from monitoring.metrics import TASK_DURATION, TASKS

_started: dict[str, float] = {}


@signals.task_prerun.connect
def _task_prerun(task_id=None, **_):
    _started[task_id] = time.monotonic()


@signals.task_postrun.connect
def _task_postrun(task_id=None, task=None, state=None, **_):
    began = _started.pop(task_id, None)
    outcome = (state or "unknown").lower()
    TASKS.labels(task=task.name, outcome=outcome).inc()
    if began is not None:
        TASK_DURATION.labels(task=task.name, outcome=outcome).observe(time.monotonic() - began)
