"""Deliveries of alert events: email (Django's ``send_mail``) and signed webhooks.

A notification is claimed by a conditional UPDATE that moves ``next_attempt_at`` past a lease and
counts the attempt, so two senders never send the same row at once; a 2xx (or an accepted mail)
marks it ``sent`` for good. A failure is retried with exponential backoff
(``ALERT_NOTIFY_BACKOFF_SECONDS`` × 2^(attempt−1)) up to ``ALERT_NOTIFY_MAX_ATTEMPTS``, then the
row is ``failed``; each outcome is an event in the alert's history.

Webhook: ``POST`` of JSON with ``X-Chatbot-Timestamp`` (Unix seconds, also ``sent_at`` in the
body), ``X-Chatbot-Delivery`` (the notification id: the same on a retry) and
``X-Chatbot-Signature: sha256=<hex HMAC-SHA256 of the raw body with the rule's secret>``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.core.mail import send_mail
from django.db.models import F
from django.utils import timezone

from monitoring.models import AlertEvent, Notification
from tenants.scoping import cross_tenant_context, tenant_context

logger = logging.getLogger(__name__)

LEASE_SECONDS = 60


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def payload(event: AlertEvent, sent_at: int) -> dict:
    alert, rule = event.alert, event.alert.rule
    return {
        "event": event.kind,
        "event_id": event.pk,
        "sent_at": sent_at,
        "alert": {
            "id": alert.pk,
            "state": alert.state,
            "scope_key": alert.scope_key,
            "tenant_id": alert.tenant_id,
            "chatbot_id": alert.chatbot_id,
            "value": event.value,
            "message": alert.message,
            "first_fired_at": alert.first_fired_at.isoformat(),
            "resolved_at": alert.resolved_at.isoformat() if alert.resolved_at else None,
        },
        "rule": {
            "id": rule.pk,
            "name": rule.name,
            "metric": rule.metric,
            "condition": rule.condition,
            "threshold": rule.threshold,
            "severity": rule.severity,
        },
    }


class Undeliverable(Exception):
    """A delivery that no retry can make work: the notification fails at once."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # a 3xx is an answer (not 2xx: retried), never a hop to somewhere else


_opener = urllib.request.build_opener(_NoRedirects)


def _check_address(url: str) -> None:
    """Webhooks go to public addresses only (unless ``ALERT_WEBHOOK_ALLOW_PRIVATE``): a tenant's
    rule must not make the worker POST into the private network it runs in."""
    if settings.ALERT_WEBHOOK_ALLOW_PRIVATE:
        return
    parts = urlsplit(url)
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    except socket.gaierror as error:
        raise RuntimeError(f"the webhook's host did not resolve: {error}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise Undeliverable(
                f"the webhook's host resolves to {address}, a private address; webhooks go to public "
                "addresses (ALERT_WEBHOOK_ALLOW_PRIVATE=1 allows private ones)"
            )


def _send_webhook(notification: Notification, event: AlertEvent) -> None:
    hook = event.alert.rule.channels.get("webhook") or {}
    if not hook.get("url"):
        raise Undeliverable("the rule no longer has a webhook")
    _check_address(hook["url"])
    sent_at = int(time.time())
    body = json.dumps(payload(event, sent_at), separators=(",", ":")).encode()
    request = urllib.request.Request(
        hook["url"],
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "chatbot-training-alerts",
            "X-Chatbot-Timestamp": str(sent_at),
            "X-Chatbot-Delivery": str(notification.pk),
            "X-Chatbot-Signature": signature(hook.get("secret", ""), body),
        },
    )
    try:
        with _opener.open(request, timeout=settings.ALERT_WEBHOOK_TIMEOUT) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    if not 200 <= status < 300:
        raise RuntimeError(f"the webhook answered HTTP {status}")


def _send_email(notification: Notification, event: AlertEvent) -> None:
    alert, rule = event.alert, event.alert.rule
    verb = "resolved" if event.kind == "resolved" else "firing"
    subject = f"[{rule.severity}] {rule.name} {verb} ({alert.scope_key})"
    body = f"{alert.message}\n\nState: {alert.state}\nSince: {alert.first_fired_at:%Y-%m-%d %H:%M} UTC\n"
    send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [notification.target], fail_silently=False)


SENDERS = {"email": _send_email, "webhook": _send_webhook}


def backoff_seconds(attempts: int) -> float:
    return settings.ALERT_NOTIFY_BACKOFF_SECONDS * 2 ** max(attempts - 1, 0)


def notification_deliver(*, notification_id: int, now: datetime | None = None) -> float | None:
    """One attempt at a due notification. Returns the seconds until its next attempt when it
    failed and may be retried, else None (sent, given up, not due, or someone else's)."""
    now = now or timezone.now()
    claimed = Notification.objects.filter(pk=notification_id, status="pending", next_attempt_at__lte=now).update(
        attempts=F("attempts") + 1, next_attempt_at=now + timedelta(seconds=LEASE_SECONDS)
    )
    if not claimed:
        return None
    notification = Notification.objects.select_related("event__alert__rule").get(pk=notification_id)
    event = notification.event
    try:
        SENDERS[notification.channel](notification, event)
    except Exception as error:  # any failure of the far end is retried; the reason is kept
        reason = f"{error.__class__.__name__}: {error}"[:1000]
        last = isinstance(error, Undeliverable) or notification.attempts >= settings.ALERT_NOTIFY_MAX_ATTEMPTS
        delay = backoff_seconds(notification.attempts)
        Notification.objects.filter(pk=notification.pk).update(
            last_error=reason,
            status="failed" if last else "pending",
            next_attempt_at=now if last else timezone.now() + timedelta(seconds=delay),
        )
        AlertEvent.objects.create(
            alert=event.alert,
            tenant_id=event.tenant_id,
            kind="notify_failed",
            detail={
                "channel": notification.channel,
                "target": notification.target,
                "attempt": notification.attempts,
                "error": reason,
                "given_up": last,
            },
        )
        logger.warning("alert notification %s failed (attempt %s): %s", notification.pk, notification.attempts, reason)
        return None if last else delay
    Notification.objects.filter(pk=notification.pk).update(status="sent", sent_at=timezone.now(), last_error="")
    AlertEvent.objects.create(
        alert=event.alert,
        tenant_id=event.tenant_id,
        kind="notified",
        detail={"channel": notification.channel, "target": notification.target, "attempt": notification.attempts},
    )
    return None


def notification_scope(tenant_id: int | None):
    return cross_tenant_context("alert-notify-global") if tenant_id is None else tenant_context(tenant_id)


def notifications_due(*, now: datetime | None = None) -> int:
    """Send again what is due and was not sent (a lost message, a worker that died mid-send):
    the evaluator calls this every minute. Returns how many were sent to the worker."""
    from monitoring.tasks import alert_notify_task

    now = now or timezone.now()
    with cross_tenant_context("alert-notify-due"):
        due = list(
            Notification.objects.filter(status="pending", next_attempt_at__lte=now - timedelta(seconds=5))
            .values_list("pk", "tenant_id")
            .order_by("next_attempt_at")[:500]
        )
    for notification_id, tenant_id in due:
        alert_notify_task.delay(notification_id=notification_id, tenant_id=tenant_id)
    return len(due)
