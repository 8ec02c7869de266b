from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST


def healthz(request):
    """The process is up and serving."""
    return JsonResponse({"status": "ok"})


def _check_database() -> str | None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return None
    except Exception as exc:
        return f"database unavailable: {exc.__class__.__name__}"


def _check_redis() -> str | None:
    from tenants import redis_client

    return redis_client.ping()


def _check_worker() -> str | None:
    from chatbot_training.celery import app

    try:
        replies = app.control.ping(timeout=1.0)
    except Exception as exc:
        return f"worker check failed: {exc.__class__.__name__}"
    return None if replies else "no live Celery worker answered"


def readyz(request):
    """Ready to do useful work: database, Redis and at least one worker. 503 names what is down."""
    checks = {"database": _check_database(), "redis": _check_redis()}
    checks["worker"] = _check_worker() if checks["redis"] is None else "not checked: redis is down"
    down = {name: problem for name, problem in checks.items() if problem}
    body = {
        "status": "ok" if not down else "unavailable",
        "checks": {name: (problem or "ok") for name, problem in checks.items()},
    }
    if down:
        body["down"] = sorted(down)
    return JsonResponse(body, status=503 if down else 200)


DATABASE_RETRY_AFTER_SECONDS = 5


def server_error(request):
    """handler500: an unavailable database (restarted, failed over, connection refused) is a 503
    with Retry-After, not a 500 — JSON on the API, a short page on the dashboard; anything else
    stays a 500 (JSON on the API)."""
    import sys

    from django.db import InterfaceError, OperationalError
    from django.http import HttpResponse
    from psycopg.errors import QueryCanceled

    from tenants.errors import error_body

    error = sys.exc_info()[1]
    unavailable = isinstance(error, (OperationalError, InterfaceError))
    if unavailable and isinstance(getattr(error, "__cause__", None), QueryCanceled):
        status, code = 503, "timeout"
        message = "The request took too long in the database and was stopped; retry, or ask for less at once."
    elif unavailable:
        status, code = 503, "unavailable"
        message = f"The database is unavailable; retry in {DATABASE_RETRY_AFTER_SECONDS} s."
    else:
        status, code, message = 500, "server_error", "Something went wrong on our side; it has been logged."
    if request.path.startswith("/api/"):
        response = JsonResponse(error_body(code, message), status=status)
    else:
        page = f"<!doctype html><title>{status}</title><h1>{'Temporarily unavailable' if unavailable else 'Error'}</h1>"
        response = HttpResponse(f"{page}<p>{message}</p>", status=status)
    if unavailable:
        response["Retry-After"] = str(DATABASE_RETRY_AFTER_SECONDS)
    return response


def not_found(request, exception=None):
    """handler404: JSON under /api/ (an unknown path or an id that is not a number there is the
    API's 404, in its error format), Django's page elsewhere."""
    from django.views.defaults import page_not_found

    from tenants.errors import error_body

    if request.path.startswith("/api/"):
        return JsonResponse(error_body("not_found", "No such API endpoint or object."), status=404)
    return page_not_found(request, exception)


# --- Alerts inbox and rules (/alerts/) ------------------------------------------------------


def _alert_forms():
    from monitoring.alerts.sources import METRICS
    from monitoring.models import AlertRule

    tenant_metrics = [m for m in METRICS.values() if "global" not in m.scopes]
    return {
        "metrics": tenant_metrics,
        "conditions": AlertRule.Condition.choices,
        "severities": AlertRule.Severity.choices,
    }


def _rule_changes(post, chatbots) -> dict:
    """The rule form's fields as a rule's changes; a bad value is a DomainError naming it."""
    from tenants.errors import DomainError

    def number(name: str, cast):
        raw = (post.get(name) or "").strip()
        try:
            return cast(raw)
        except ValueError:
            kind = "a whole number" if cast is int else "a number"
            raise DomainError(f"{name.replace('_', ' ')} must be {kind} (got {raw!r}).", field=name) from None

    chatbot_id = (post.get("chatbot_id") or "").strip()
    chatbot = None
    if chatbot_id:
        chatbot = next((c for c in chatbots if str(c.pk) == chatbot_id), None)
        if chatbot is None:
            raise DomainError("Choose one of your chatbots.", field="chatbot_id")
    emails = [e.strip() for e in (post.get("emails") or "").replace(";", ",").split(",") if e.strip()]
    channels: dict = {"email": emails} if emails else {}
    url = (post.get("webhook_url") or "").strip()
    if url:
        channels["webhook"] = {"url": url, "secret": (post.get("webhook_secret") or "").strip() or None}
    metric = post.get("metric") or ""
    scope = "tenant" if post.get("scope") == "tenant" and not chatbot else "chatbot"
    from monitoring.alerts.sources import METRICS

    if metric in METRICS and scope not in METRICS[metric].scopes:
        scope = METRICS[metric].scopes[0]
    return {
        "name": (post.get("name") or "").strip() or metric,
        "description": (post.get("description") or "").strip(),
        "metric": metric,
        "scope": scope,
        "chatbot": chatbot,
        "condition": post.get("condition") or ">",
        "threshold": number("threshold", float),
        "window_minutes": number("window_minutes", int),
        "severity": post.get("severity") or "warning",
        "cooldown_minutes": number("cooldown_minutes", int),
        "channels": channels,
        "enabled": post.get("enabled") == "on",
    }


@login_required
def alerts_page(request):
    """The tenant's alerts (active by default, or a state), each with its history, and its rules
    with forms to add, edit, switch on and off and delete them (owners and admins)."""
    from monitoring.alerts import selectors
    from tenants.selectors import chatbot_list
    from tenants.views import dashboard_membership

    membership = dashboard_membership(request)
    state = request.GET.get("state", "active")
    if state not in selectors.STATES:
        state = "active"
    alerts = selectors.alerts_list(tenant=membership.tenant, state=state, limit=100)
    events = {}
    for alert in alerts:
        events[alert.pk] = list(alert.events.all())[-20:]
    rules = list(selectors.alert_rules(tenant=membership.tenant))
    editing = next((r for r in rules if str(r.pk) == request.GET.get("edit")), None)
    context = {
        "alerts": [(a, events[a.pk]) for a in alerts],
        "state": state,
        "states": selectors.STATES,
        "rules": rules,
        "editing": editing,
        "editing_emails": ", ".join((editing.channels or {}).get("email", [])) if editing else "",
        "editing_webhook": ((editing.channels or {}).get("webhook") or {}).get("url", "") if editing else "",
        "chatbots": list(chatbot_list(tenant=membership.tenant)),
        "can_write": membership.can_write,
        **_alert_forms(),
    }
    return render(request, "dashboard/alerts.html", context)


def _alerts_write(request, action):
    """The writes of the alerts page: act, say what happened (or what to fix), back to the page."""
    from tenants.errors import DomainError
    from tenants.views import dashboard_membership, require_write

    membership = dashboard_membership(request)
    if require_write(request, membership):
        try:
            messages.success(request, action(request, membership))
        except DomainError as error:
            where = f"{error.field.replace('_', ' ')}: " if error.field else ""
            messages.error(request, f"{where}{error.message}")
    return redirect("dashboard-alerts")


@login_required
@require_POST
def alert_acknowledge_view(request, alert_id: int):
    from monitoring.alerts.evaluate import alert_acknowledge
    from monitoring.alerts.selectors import alert_get

    def act(request, membership):
        alert = alert_acknowledge(alert=alert_get(tenant=membership.tenant, alert_id=alert_id), user=request.user)
        return f"Acknowledged: {alert.rule.name} ({alert.scope_key})."

    return _alerts_write(request, act)


@login_required
@require_POST
def alert_resolve_view(request, alert_id: int):
    from monitoring.alerts.evaluate import alert_resolve_by
    from monitoring.alerts.selectors import alert_get

    def act(request, membership):
        alert = alert_resolve_by(alert=alert_get(tenant=membership.tenant, alert_id=alert_id), user=request.user)
        return f"Resolved: {alert.rule.name} ({alert.scope_key}). If the condition still holds it opens again."

    return _alerts_write(request, act)


@login_required
@require_POST
def alert_rule_save_view(request, rule_id: int | None = None):
    from monitoring.alerts.rules import alert_rule_create, alert_rule_update
    from monitoring.alerts.selectors import alert_rule_get
    from tenants.selectors import chatbot_list

    def act(request, membership):
        changes = _rule_changes(request.POST, list(chatbot_list(tenant=membership.tenant)))
        if rule_id is None:
            rule = alert_rule_create(tenant=membership.tenant, **changes)
            return f"Rule “{rule.name}” added."
        rule = alert_rule_get(tenant=membership.tenant, rule_id=rule_id)
        alert_rule_update(rule=rule, changes=changes)
        return f"Rule “{rule.name}” saved."

    return _alerts_write(request, act)


@login_required
@require_POST
def alert_rule_toggle_view(request, rule_id: int):
    from monitoring.alerts.rules import alert_rule_update
    from monitoring.alerts.selectors import alert_rule_get

    def act(request, membership):
        rule = alert_rule_get(tenant=membership.tenant, rule_id=rule_id)
        alert_rule_update(rule=rule, changes={"enabled": not rule.enabled})
        return f"Rule “{rule.name}” {'enabled' if rule.enabled else 'disabled'}."

    return _alerts_write(request, act)


@login_required
@require_POST
def alert_rule_delete_view(request, rule_id: int):
    from monitoring.alerts.rules import alert_rule_delete
    from monitoring.alerts.selectors import alert_rule_get

    def act(request, membership):
        rule = alert_rule_get(tenant=membership.tenant, rule_id=rule_id)
        alert_rule_delete(rule=rule)
        return f"Rule “{rule.name}” deleted with its alerts."

    return _alerts_write(request, act)


def metrics_export(request):
    """/metrics for Prometheus: every process's counters and histograms (web and Celery workers,
    multiprocess files) and the state gauges (see ``monitoring.metrics``)."""
    import hmac

    from django.conf import settings
    from django.http import HttpResponse

    from monitoring.metrics import exposition

    token = settings.METRICS_TOKEN
    if token:  # scrapers send it as a bearer token (Prometheus: authorization.credentials)
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            return HttpResponse("A bearer token is needed for /metrics.\n", status=401, content_type="text/plain")
    body, content_type = exposition()
    return HttpResponse(body, content_type=content_type)


# --- Monitoring area (/monitoring/) ---------------------------------------------------------
DAY_CHOICES = (1, 7, 30, 90)


@login_required
def monitoring_page(request):
    """The tenant's activity for every member; its share of the server for owners and admins;
    the whole server for staff. Drawn by the page from the metrics API."""
    from tenants.selectors import chatbot_list
    from tenants.views import dashboard_membership

    membership = dashboard_membership(request)
    return render(
        request,
        "dashboard/monitoring.html",
        {
            "chatbots": chatbot_list(tenant=membership.tenant).order_by("name"),
            "operator": membership.can_write or request.user.is_staff,
            "staff": request.user.is_staff,
            "day_choices": DAY_CHOICES,
        },
    )


@login_required
def chatbot_monitoring_page(request, chatbot_id: int):
    """One chatbot's analytics: content, search, feedback, quality over time, training, A/B."""
    from tenants.selectors import chatbot_get
    from tenants.views import dashboard_membership

    membership = dashboard_membership(request)
    chatbot = chatbot_get(tenant=membership.tenant, chatbot_id=chatbot_id)
    return render(request, "dashboard/chatbot_monitoring.html", {"chatbot": chatbot, "day_choices": DAY_CHOICES})
