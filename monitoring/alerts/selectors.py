"""Reads of rules and alerts, always for one tenant; global rows (no tenant) only in the staff
functions, on the maintenance role's connection."""

from __future__ import annotations

from django.db.models import Count, Q

from monitoring.models import Alert, AlertRule
from tenants.errors import NotFound
from tenants.scoping import cross_tenant_context

STATES = ("active", "firing", "acknowledged", "resolved", "all")


def _id(value, field: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise NotFound("Not found.", field=field) from None


def alert_rules(*, tenant, chatbot=None):
    rules = AlertRule.objects.for_tenant(tenant).select_related("chatbot")
    return rules.filter(chatbot=chatbot) if chatbot is not None else rules


def alert_rule_get(*, tenant, rule_id, staff: bool = False) -> AlertRule:
    """The tenant's rule, or (staff) a global one; NotFound for anything else."""
    rule_id = _id(rule_id, "rule_id")
    rule = AlertRule.objects.for_tenant(tenant).select_related("chatbot").filter(pk=rule_id).first()
    if rule is None and staff:
        with cross_tenant_context("staff-global-alert-rules"):
            rule = AlertRule.objects.filter(pk=rule_id, tenant__isnull=True).first()
    if rule is None:
        raise NotFound("Alert rule not found.", field="rule_id")
    return rule


def global_alert_rules():
    with cross_tenant_context("staff-global-alert-rules"):
        return list(AlertRule.objects.filter(tenant__isnull=True))


def _state_filter(alerts, state: str):
    if state == "active":
        return alerts.filter(state__in=Alert.ACTIVE)
    if state == "all":
        return alerts
    return alerts.filter(state=state)


def alerts_list(*, tenant, state: str = "active", chatbot=None, limit: int = 200) -> list[Alert]:
    alerts = _state_filter(Alert.objects.for_tenant(tenant).select_related("rule", "chatbot"), state)
    if chatbot is not None:
        alerts = alerts.filter(chatbot=chatbot)
    return list(alerts[:limit])


def global_alerts(*, state: str = "active", limit: int = 200) -> list[Alert]:
    with cross_tenant_context("staff-global-alerts"):
        alerts = Alert.objects.filter(tenant__isnull=True).select_related("rule")
        return list(_state_filter(alerts, state)[:limit])


def alert_get(*, tenant, alert_id, staff: bool = False) -> Alert:
    alert_id = _id(alert_id, "alert_id")
    alert = Alert.objects.for_tenant(tenant).select_related("rule", "chatbot").filter(pk=alert_id).first()
    if alert is None and staff:
        with cross_tenant_context("staff-global-alerts"):
            alert = Alert.objects.filter(pk=alert_id, tenant__isnull=True).select_related("rule").first()
    if alert is None:
        raise NotFound("Alert not found.", field="alert_id")
    return alert


def alert_events(*, alert: Alert) -> list:
    if alert.tenant_id is None:
        with cross_tenant_context("staff-global-alerts"):
            return list(alert.events.all())
    return list(alert.events.all())


def alert_counts(*, tenant) -> dict:
    counts = Alert.objects.for_tenant(tenant).aggregate(
        firing=Count("pk", filter=Q(state="firing")),
        acknowledged=Count("pk", filter=Q(state="acknowledged")),
        critical=Count("pk", filter=Q(state__in=Alert.ACTIVE, rule__severity="critical")),
    )
    counts["active"] = counts["firing"] + counts["acknowledged"]
    return counts
