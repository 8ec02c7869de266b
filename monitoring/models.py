"""Alerts: rules as data, the alerts they open, each alert's history and its deliveries.

Every table has a ``tenant`` column (nullable: a global rule, and what it opens, belongs to no
tenant), so ``tenants/rls.py`` covers them like every tenant table: a tenant session sees and
writes its own rows only, and rows without a tenant (the system rules, disk, memory, the
database) are seen and changed by staff and the evaluator alone, on the maintenance role's
connection (``cross_tenant_context``).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from tenants.scoping import TenantQuerySet


class AlertRule(models.Model):
    class Scope(models.TextChoices):
        TENANT = "tenant", "Tenant"
        CHATBOT = "chatbot", "Chatbot"
        GLOBAL = "global", "Global (system)"

    class Condition(models.TextChoices):
        GT = ">", "above"
        GTE = ">=", "at or above"
        LT = "<", "below"
        LTE = "<=", "at or below"

    class Severity(models.TextChoices):
        INFO = "info", "Info"
        WARNING = "warning", "Warning"
        CRITICAL = "critical", "Critical"

    tenant = models.ForeignKey("tenants.Tenant", null=True, blank=True, on_delete=models.CASCADE, db_index=True)
    chatbot = models.ForeignKey(
        "tenants.Chatbot",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="alert_rules",
        help_text="Chatbot scope: this chatbot only; empty: each chatbot of the tenant.",
    )
    scope = models.CharField(max_length=10, choices=Scope.choices, default=Scope.CHATBOT)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    metric = models.CharField(max_length=64, help_text="A metric of monitoring/alerts/sources.py.")
    condition = models.CharField(max_length=2, choices=Condition.choices, default=Condition.GT)
    threshold = models.FloatField()
    window_minutes = models.PositiveIntegerField(default=60)
    severity = models.CharField(max_length=10, choices=Severity.choices, default=Severity.WARNING)
    cooldown_minutes = models.PositiveIntegerField(
        default=60, help_text="After an alert of this rule resolves, a new one within this time is not notified."
    )
    channels = models.JSONField(default=dict, blank=True, help_text='{"email": [...], "webhook": {"url", "secret"}}')
    enabled = models.BooleanField(default=True)
    is_default = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["scope", "name", "pk"]
        constraints = [
            models.CheckConstraint(
                condition=(Q(scope="global", tenant__isnull=True, chatbot__isnull=True))
                | (Q(scope="tenant", tenant__isnull=False, chatbot__isnull=True))
                | (Q(scope="chatbot", tenant__isnull=False)),
                name="alertrule_scope_matches_owner",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class Alert(models.Model):
    class State(models.TextChoices):
        FIRING = "firing", "Firing"
        ACKNOWLEDGED = "acknowledged", "Acknowledged"
        RESOLVED = "resolved", "Resolved"

    ACTIVE = (State.FIRING, State.ACKNOWLEDGED)

    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="alerts")
    tenant = models.ForeignKey("tenants.Tenant", null=True, blank=True, on_delete=models.CASCADE, db_index=True)
    chatbot = models.ForeignKey("tenants.Chatbot", null=True, blank=True, on_delete=models.CASCADE)
    scope_key = models.CharField(
        max_length=60, help_text='What the alert is about: "chatbot:12", "tenant:3", "global".'
    )
    state = models.CharField(max_length=12, choices=State.choices, default=State.FIRING)
    value = models.FloatField(null=True, blank=True)
    message = models.TextField(blank=True)
    notified = models.BooleanField(default=True, help_text="False when it opened within the rule's cooldown.")
    first_fired_at = models.DateTimeField(default=timezone.now)
    last_evaluated_at = models.DateTimeField(default=timezone.now)
    resolved_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    acknowledged_at = models.DateTimeField(null=True, blank=True)

    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["-first_fired_at", "-pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["rule", "scope_key"], condition=~Q(state="resolved"), name="alert_one_open_per_rule_scope"
            ),
        ]
        indexes = [models.Index(fields=["tenant", "state"]), models.Index(fields=["rule", "scope_key", "resolved_at"])]

    def __str__(self) -> str:
        return f"{self.rule.name} ({self.scope_key}, {self.state})"


class AlertEvent(models.Model):
    class Kind(models.TextChoices):
        OPENED = "opened", "Opened"
        UPDATED = "updated", "Updated"
        ACKNOWLEDGED = "acknowledged", "Acknowledged"
        RESOLVED = "resolved", "Resolved"
        NOTIFIED = "notified", "Notified"
        NOTIFY_FAILED = "notify_failed", "Notification failed"

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="events")
    tenant = models.ForeignKey("tenants.Tenant", null=True, blank=True, on_delete=models.CASCADE, db_index=True)
    kind = models.CharField(max_length=14, choices=Kind.choices)
    value = models.FloatField(null=True, blank=True)
    at = models.DateTimeField(default=timezone.now)
    detail = models.JSONField(default=dict, blank=True)

    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["at", "pk"]

    def __str__(self) -> str:
        return f"{self.kind} at {self.at:%Y-%m-%d %H:%M}"


class Notification(models.Model):
    """One delivery of one event to one target; unique, so no event is sent twice to anyone."""

    class Channel(models.TextChoices):
        EMAIL = "email", "Email"
        WEBHOOK = "webhook", "Webhook"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"

    event = models.ForeignKey(AlertEvent, on_delete=models.CASCADE, related_name="notifications")
    tenant = models.ForeignKey("tenants.Tenant", null=True, blank=True, on_delete=models.CASCADE, db_index=True)
    channel = models.CharField(max_length=10, choices=Channel.choices)
    target = models.CharField(max_length=500)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.UniqueConstraint(fields=["event", "channel", "target"], name="notification_once_per_target"),
        ]
        indexes = [models.Index(fields=["status", "next_attempt_at"])]

    def __str__(self) -> str:
        return f"{self.channel} to {self.target} ({self.status})"
