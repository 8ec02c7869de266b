from __future__ import annotations

from celery import shared_task


@shared_task(name="monitoring.alerts_evaluate", expires=55)
def alerts_evaluate_task() -> dict:
    from monitoring.alerts.evaluate import alerts_evaluate

    return alerts_evaluate()


@shared_task(name="monitoring.alert_notify", acks_late=True, reject_on_worker_lost=True, soft_time_limit=60)
def alert_notify_task(*, notification_id: int, tenant_id: int | None) -> None:
    """One attempt at one delivery; a failure sends the task again after its backoff."""
    from monitoring.alerts.notify import notification_deliver, notification_scope

    with notification_scope(tenant_id):
        delay = notification_deliver(notification_id=notification_id)
    if delay is not None:
        alert_notify_task.apply_async(
            kwargs={"notification_id": notification_id, "tenant_id": tenant_id}, countdown=delay
        )
