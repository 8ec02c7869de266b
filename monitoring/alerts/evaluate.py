"""The evaluator (beat, every minute): every enabled rule, every target, one value each.

- The condition holds and no alert is open for (rule, scope key): one is opened (a partial unique
  constraint keeps it to one, whatever runs at once) with an ``opened`` event and its deliveries.
- It holds and one is open (firing or acknowledged): its value and ``last_evaluated_at`` move;
  an ``updated`` event is written only when the value changed.
- It no longer holds (or the figure has no data): the open alert is resolved with an event.
- Cooldown: an alert opening within ``cooldown_minutes`` of the last resolve of the same rule and
  scope key is opened (the inbox shows it) but not notified, and neither is its resolve.

Deliveries are rows (``Notification``) sent by ``monitoring.alert_notify`` after commit, so a
slow webhook never holds the evaluator up.
"""

from __future__ import annotations

import logging
import operator
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone

from monitoring.alerts.sources import GLOBAL, METRICS, TENANT, window_for
from monitoring.models import Alert, AlertEvent, AlertRule, Notification
from tenants.scoping import cross_tenant_context, tenant_context

logger = logging.getLogger(__name__)

COMPARE = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


def rule_scope(rule: AlertRule):
    """The scope to work on a rule's rows in: its tenant's, or (global rules) the maintenance one."""
    if rule.tenant_id is None:
        return cross_tenant_context("alerts-global-rules")
    return tenant_context(rule.tenant_id)


def rule_targets(rule: AlertRule) -> list[tuple[str, object]]:
    """(scope key, target) pairs: a chatbot rule without a chatbot means each of the tenant's."""
    from tenants.models import Chatbot

    if rule.scope == GLOBAL:
        return [("global", None)]
    if rule.scope == TENANT:
        return [(f"tenant:{rule.tenant_id}", rule.tenant)]
    chatbots = [rule.chatbot] if rule.chatbot_id else list(Chatbot.objects.filter(tenant_id=rule.tenant_id))
    return [(f"chatbot:{c.pk}", c) for c in chatbots]


def _message(rule: AlertRule, key: str, value: float) -> str:
    metric = METRICS[rule.metric]
    return (
        f"{rule.name}: {rule.metric} is {value:.4g} {metric.unit} ({key}), "
        f"{rule.get_condition_display()} the threshold {rule.threshold:g}."
    )


def _event(alert: Alert, kind: str, value=None, at=None, **detail) -> AlertEvent:
    return AlertEvent.objects.create(
        alert=alert, tenant_id=alert.tenant_id, kind=kind, value=value, at=at or timezone.now(), detail=detail
    )


def notifications_queue(event: AlertEvent, rule: AlertRule) -> list[Notification]:
    """One delivery row per target of the rule's channels; sent after commit."""
    targets = [("email", address) for address in rule.channels.get("email", [])]
    hook = rule.channels.get("webhook")
    if hook and hook.get("url"):
        targets.append(("webhook", hook["url"]))
    rows = [
        Notification.objects.get_or_create(
            event=event, channel=channel, target=target, defaults={"tenant_id": event.tenant_id}
        )[0]
        for channel, target in targets
    ]
    if rows:
        from monitoring.tasks import alert_notify_task

        ids = [(n.pk, n.tenant_id) for n in rows]
        transaction.on_commit(
            lambda: [alert_notify_task.delay(notification_id=i, tenant_id=t) for i, t in ids]
        )  # fmt: skip
    return rows


def _in_cooldown(rule: AlertRule, key: str, now: datetime) -> bool:
    if not rule.cooldown_minutes:
        return False
    since = now - timedelta(minutes=rule.cooldown_minutes)
    return Alert.objects.filter(rule=rule, scope_key=key, state="resolved", resolved_at__gte=since).exists()


def _open(rule: AlertRule, key: str, target, value: float, now: datetime) -> Alert | None:
    from tenants.models import Chatbot

    quiet = _in_cooldown(rule, key, now)
    try:
        with transaction.atomic():
            alert = Alert.objects.create(
                rule=rule,
                tenant_id=rule.tenant_id,
                chatbot=target if isinstance(target, Chatbot) else None,
                scope_key=key,
                value=value,
                message=_message(rule, key, value),
                notified=not quiet,
                first_fired_at=now,
                last_evaluated_at=now,
            )
    except IntegrityError:  # another evaluator opened it a moment ago
        return None
    event = _event(alert, "opened", value, now, threshold=rule.threshold, **({"cooldown": True} if quiet else {}))
    if not quiet:
        notifications_queue(event, rule)
    return alert


def alert_resolve(*, alert: Alert, now: datetime | None = None, by: str = "") -> bool:
    """Resolve an open alert (the evaluator when the condition clears, or a person). Returns
    False when it was not open."""
    now = now or timezone.now()
    changed = Alert.objects.filter(pk=alert.pk, state__in=Alert.ACTIVE).update(
        state="resolved", resolved_at=now, last_evaluated_at=now
    )
    if not changed:
        return False
    alert.refresh_from_db()
    event = _event(alert, "resolved", alert.value, now, **({"by": by} if by else {}))
    if alert.notified:
        notifications_queue(event, alert.rule)
    return True


def rule_evaluate(rule: AlertRule, now: datetime) -> dict:
    counts = {"opened": 0, "updated": 0, "resolved": 0, "targets": 0}
    metric = METRICS.get(rule.metric)
    if metric is None:
        return counts
    window = window_for(rule, now)
    compare = COMPARE[rule.condition]
    open_alerts = {a.scope_key: a for a in Alert.objects.filter(rule=rule, state__in=Alert.ACTIVE)}
    for key, target in rule_targets(rule):
        counts["targets"] += 1
        value = metric.measure(rule, target, window)
        alert = open_alerts.pop(key, None)
        with transaction.atomic():
            if value is not None and compare(value, rule.threshold):
                if alert is None:
                    counts["opened"] += _open(rule, key, target, value, now) is not None
                    continue
                if value != alert.value:
                    _event(alert, "updated", value, now)
                    counts["updated"] += 1
                Alert.objects.filter(pk=alert.pk).update(
                    value=value, last_evaluated_at=now, message=_message(rule, key, value)
                )
            elif alert is not None:
                counts["resolved"] += alert_resolve(alert=alert, now=now)
    for alert in open_alerts.values():  # its target is gone (a chatbot deleted, the rule narrowed)
        with transaction.atomic():
            counts["resolved"] += alert_resolve(alert=alert, now=now)
    return counts


def alerts_evaluate(now: datetime | None = None) -> dict:
    """Every enabled rule of every tenant, and the global ones; each in its own tenant's scope.
    A rule whose figure fails is counted in ``errors`` and the others go on."""
    from monitoring.alerts.notify import notifications_due

    now = now or timezone.now()
    totals = {"rules": 0, "targets": 0, "opened": 0, "updated": 0, "resolved": 0, "errors": 0}
    with cross_tenant_context("alerts-evaluate"):
        rules = list(AlertRule.objects.filter(enabled=True).values_list("pk", "tenant_id").order_by("pk"))
    for rule_id, tenant_id in rules:
        scope = cross_tenant_context("alerts-global-rules") if tenant_id is None else tenant_context(tenant_id)
        with scope:
            rule = AlertRule.objects.select_related("tenant", "chatbot").filter(pk=rule_id, enabled=True).first()
            if rule is None:
                continue
            try:
                counts = rule_evaluate(rule, now)
            except Exception:
                logger.exception("alert rule %s (%s) could not be evaluated", rule.pk, rule.metric)
                totals["errors"] += 1
                continue
        totals["rules"] += 1
        for name, n in counts.items():
            totals[name] += n
    totals["notifications_resent"] = notifications_due(now=now)
    return totals


def alert_acknowledge(*, alert: Alert, user=None, by: str = "") -> Alert:
    """A person has seen a firing alert: it stays open (and resolves when the condition clears)
    but is no longer 'firing'. 409 when it is not firing."""
    from tenants.errors import Conflict

    now = timezone.now()
    with transaction.atomic():
        changed = Alert.objects.filter(pk=alert.pk, state="firing").update(
            state="acknowledged", acknowledged_by=user, acknowledged_at=now
        )
        if not changed:
            raise Conflict(f"This alert is {alert.state}, not firing: there is nothing to acknowledge.")
        alert.refresh_from_db()
        _event(alert, "acknowledged", alert.value, now, by=by or (user.get_username() if user else ""))
    return alert


def alert_resolve_by(*, alert: Alert, user=None, by: str = "") -> Alert:
    """A person resolves an alert; if the condition still holds, the next evaluation opens a new
    one (within the cooldown it is not notified)."""
    from tenants.errors import Conflict

    with transaction.atomic():
        if not alert_resolve(alert=alert, by=by or (user.get_username() if user else "person")):
            raise Conflict("This alert is already resolved.")
    alert.refresh_from_db()
    return alert
