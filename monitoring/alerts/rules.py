"""Alert rules: every write (create, change, delete, the defaults) and its checks, shared by the
API, the dashboard and the admin. A rule with no tenant is global (system figures): staff only."""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction

from monitoring.alerts.sources import CHATBOT, GLOBAL, METRICS, TENANT
from monitoring.models import AlertRule
from tenants.errors import DomainError

EDITABLE = (
    "name",
    "description",
    "scope",
    "chatbot",
    "metric",
    "condition",
    "threshold",
    "window_minutes",
    "severity",
    "cooldown_minutes",
    "channels",
    "enabled",
)
MAX_WINDOW_MINUTES = 31 * 24 * 60

# (metric, condition, threshold, window minutes, severity, name)
TENANT_DEFAULTS = [
    ("training_failure_rate", ">", 0.5, 24 * 60, "warning", "Training jobs failing"),
    ("search_p95_ms", ">", 500.0, 15, "warning", "Slow searches (p95)"),
    ("search_zero_result_rate", ">", 0.3, 60, "warning", "Many searches without results"),
    ("upload_failure_rate", ">", 0.2, 24 * 60, "warning", "Uploads failing"),
    ("retrieval_ndcg_drop", ">", 0.03, 24 * 60, "critical", "Retrieval quality dropped"),
    ("index_recall", "<", 0.95, 60, "warning", "Vector index recall below target"),
]
GLOBAL_DEFAULTS = [
    ("disk_used_percent", ">", 90.0, 5, "critical", "Disk almost full"),
    ("memory_used_percent", ">", 90.0, 5, "critical", "Memory almost exhausted"),
    ("queue_backlog", ">", 1000.0, 5, "warning", "Task queue backlog"),
    ("db_connections", ">", 80.0, 5, "warning", "Database connections near max_connections"),
    ("db_cache_hit_ratio", "<", 0.9, 15, "warning", "Database cache hit ratio low"),
    ("db_dead_tuple_ratio", ">", 0.2, 60, "info", "Many dead rows (vacuum behind)"),
]


def _webhook(value) -> dict:
    if not isinstance(value, dict):
        raise DomainError('channels.webhook must be an object {"url": ..., "secret": ...}.', field="channels.webhook")
    unknown = sorted(set(value) - {"url", "secret"})
    if unknown:
        raise DomainError(f"channels.webhook takes url and secret, not {unknown[0]}.", field="channels.webhook")
    url = value.get("url")
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or len(url) > 500:
        raise DomainError("The webhook URL must be an http:// or https:// address.", field="channels.webhook.url")
    secret = value.get("secret") or secrets.token_urlsafe(24)  # none given: one is made (shown on creation)
    if not isinstance(secret, str) or not 16 <= len(secret) <= 200:
        raise DomainError("The webhook secret must be text of 16 to 200 characters.", field="channels.webhook.secret")
    return {"url": url, "secret": secret}


def channels_clean(value, *, previous: dict | None = None) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DomainError('channels must be an object: {"email": [...], "webhook": {...}}.', field="channels")
    unknown = sorted(set(value) - {"email", "webhook"})
    if unknown:
        raise DomainError(f"Unknown channel {unknown[0]!r}: use email or webhook.", field="channels")
    clean: dict = {}
    emails = value.get("email") or []
    if isinstance(emails, str):
        emails = [emails]
    if not isinstance(emails, list) or len(emails) > 20:
        raise DomainError("channels.email must be a list of up to 20 addresses.", field="channels.email")
    for address in emails:
        try:
            validate_email(address)
        except (ValidationError, TypeError):
            raise DomainError(f"{address!r} is not an email address.", field="channels.email") from None
    if emails:
        clean["email"] = list(dict.fromkeys(emails))
    hook = value.get("webhook")
    if hook:
        if isinstance(hook, dict) and not hook.get("secret") and previous and previous.get("webhook"):
            hook = {**hook, "secret": previous["webhook"].get("secret")}  # an edit keeps the secret
        clean["webhook"] = _webhook(hook)
    return clean


def _check(rule: AlertRule) -> None:
    metric = METRICS.get(rule.metric)
    if metric is None:
        raise DomainError(f"Unknown metric {rule.metric!r}: use one of {', '.join(METRICS)}.", field="metric")
    if rule.condition not in AlertRule.Condition.values:
        raise DomainError("condition must be one of >, >=, <, <=.", field="condition")
    if rule.severity not in AlertRule.Severity.values:
        raise DomainError("severity must be info, warning or critical.", field="severity")
    if rule.scope not in AlertRule.Scope.values:
        raise DomainError("scope must be tenant, chatbot or global.", field="scope")
    if rule.scope not in metric.scopes:
        raise DomainError(
            f"{rule.metric} is measured per {' or '.join(metric.scopes)}, not per {rule.scope}.", field="scope"
        )
    if (rule.scope == GLOBAL) != (rule.tenant_id is None):
        raise DomainError("Global rules (system figures) belong to no tenant: staff create them.", field="scope")
    if rule.scope != CHATBOT and rule.chatbot_id is not None:
        raise DomainError("Only a chatbot-scope rule names a chatbot.", field="chatbot_id")
    if not isinstance(rule.threshold, int | float) or rule.threshold != rule.threshold:
        raise DomainError("threshold must be a number.", field="threshold")
    if not 1 <= rule.window_minutes <= MAX_WINDOW_MINUTES:
        raise DomainError(f"window_minutes must be 1 to {MAX_WINDOW_MINUTES}.", field="window_minutes")
    if not 0 <= rule.cooldown_minutes <= MAX_WINDOW_MINUTES:
        raise DomainError(f"cooldown_minutes must be 0 to {MAX_WINDOW_MINUTES}.", field="cooldown_minutes")
    if not rule.name.strip():
        raise DomainError("A rule needs a name.", field="name")


def _apply(rule: AlertRule, changes: dict) -> None:
    unknown = sorted(set(changes) - set(EDITABLE))
    if unknown:
        raise DomainError(f"Unknown field {unknown[0]!r}.", field=unknown[0])
    for key, value in changes.items():
        if key == "channels":
            value = channels_clean(value, previous=rule.channels)
        elif key == "name":
            value = (value or "").strip()[:200]
        setattr(rule, key, value)
    if rule.chatbot is not None and rule.tenant_id is not None and rule.chatbot.tenant_id != rule.tenant_id:
        raise DomainError("Chatbot not found.", field="chatbot_id", code="not_found")


def alert_rule_create(*, tenant, **fields) -> AlertRule:
    """A rule of ``tenant`` (None: a global rule; the caller has checked the user is staff)."""
    if "scope" not in fields:  # a chatbot named, or each chatbot where the metric allows it
        metric = METRICS.get(fields.get("metric", ""))
        per_chatbot = fields.get("chatbot") is not None or metric is None or CHATBOT in metric.scopes
        fields["scope"] = GLOBAL if tenant is None else (CHATBOT if per_chatbot else TENANT)
    fields.setdefault("name", fields.get("metric", ""))
    is_default = fields.pop("is_default", False)
    rule = AlertRule(tenant=tenant, threshold=0.0, is_default=is_default)
    _apply(rule, fields)
    _check(rule)
    rule.save()
    return rule


def alert_rule_update(*, rule: AlertRule, changes: dict) -> AlertRule:
    _apply(rule, changes)
    _check(rule)
    rule.save()
    return rule


@transaction.atomic
def alert_rule_delete(*, rule: AlertRule) -> None:
    rule.delete()  # its alerts, their history and deliveries go with it


def _defaults(tenant, rows) -> list[AlertRule]:
    have = set(AlertRule.objects.filter(tenant=tenant, is_default=True).values_list("metric", flat=True))
    made = []
    for metric, condition, threshold, window, severity, name in rows:
        if metric in have:
            continue
        made.append(
            alert_rule_create(
                tenant=tenant,
                metric=metric,
                condition=condition,
                threshold=threshold,
                window_minutes=window,
                severity=severity,
                name=name,
                description=f"Default rule: {METRICS[metric].description.lower()} {condition} {threshold:g}.",
                is_default=True,
                scope=GLOBAL if tenant is None else CHATBOT,
            )
        )
    return made


def alert_rules_default_create(*, tenant) -> list[AlertRule]:
    """The default rules a tenant starts with (chatbot scope, each chatbot of the tenant);
    idempotent: a default already there (by metric) is not made again."""
    return _defaults(tenant, TENANT_DEFAULTS)


def alert_rules_global_default_create() -> list[AlertRule]:
    """The system rules (no tenant); call in ``cross_tenant_context`` (the migration and tests do)."""
    return _defaults(None, GLOBAL_DEFAULTS)
