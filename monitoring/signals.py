"""Wiring: time every Celery task once, here, instead of in each task; give each new tenant its
default alert rules (tenants cannot import monitoring, so monitoring listens)."""

import time

from celery import signals
from django.db.models.signals import post_save

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


def _tenant_created(sender, instance=None, created=False, raw=False, **_):
    """A new tenant starts with the default alert rules (each chatbot of it, as they come). It
    is saved in its own scope (``tenants.services.tenant_create``), so its rules are written there."""
    if not created or raw:
        return
    from monitoring.alerts.rules import alert_rules_default_create

    alert_rules_default_create(tenant=instance)


post_save.connect(_tenant_created, sender="tenants.Tenant", dispatch_uid="monitoring-alert-defaults")
