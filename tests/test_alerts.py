"""Alerts: rules as data (API, permissions, validation), the evaluator on real rows (open, update,
dedup, resolve, cooldown), deliveries (email in the locmem outbox, a signed webhook to a real
HTTP server in the test, retried with backoff), the dashboard inbox and, end to end, a real
Celery worker delivering the webhook of an alert opened by slow searches."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from contextlib import contextmanager
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.db import ProgrammingError, transaction
from django.utils import timezone
from rest_framework.test import APIClient

from tests.conftest import across_tenants, as_tenant

TX = pytest.mark.django_db(transaction=True, databases=["default", "maintenance"])


# --- helpers ------------------------------------------------------------------------------


def session_client(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def member(bundle, username: str, role: str, **extra):
    from tenants.services import member_add

    user = get_user_model().objects.create_user(username, password="pw-123-abc", **extra)
    with as_tenant(bundle):
        member_add(tenant=bundle.tenant, user=user, role=role)
    return user


def owner(bundle):
    return get_user_model().objects.get(username=bundle.username)


def slow_searches(bundle, n: int = 20, took_ms: float = 900.0, minutes_ago: float = 1.0, results: int = 3) -> None:
    from search.models import SearchLog

    at = timezone.now() - timedelta(minutes=minutes_ago)
    with as_tenant(bundle):
        SearchLog.objects.bulk_create(
            SearchLog(
                tenant=bundle.tenant,
                chatbot=bundle.chatbot,
                query=f"slow question {i}",
                mode="semantic",
                took_ms=took_ms,
                result_count=results,
                embedding_space="local:test",
                created_at=at,
            )
            for i in range(n)
        )


def p95_rule(bundle, **fields):
    from monitoring.alerts.rules import alert_rule_create
    from monitoring.models import AlertRule

    with as_tenant(bundle):  # the tenant's default p95 rule would fire beside this one
        AlertRule.objects.filter(tenant=bundle.tenant, is_default=True, metric="search_p95_ms").update(enabled=False)
        return alert_rule_create(
            tenant=bundle.tenant,
            chatbot=bundle.chatbot,
            **{
                "name": "p95",
                "metric": "search_p95_ms",
                "threshold": 500.0,
                "window_minutes": 15,
                "cooldown_minutes": 30,
                **fields,
            },
        )


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        server = self.server
        server.calls.append({"headers": dict(self.headers), "body": body})
        code = server.codes.pop(0) if server.codes else 200
        self.send_response(code)
        self.end_headers()

    def log_message(self, *args):
        pass


@contextmanager
def webhook_server(codes=()):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    server.calls, server.codes = [], list(codes)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()


def assert_signed(call: dict, secret: str) -> dict:
    headers = {k.lower(): v for k, v in call["headers"].items()}
    expected = "sha256=" + hmac.new(secret.encode(), call["body"], hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-chatbot-signature"], expected)
    payload = json.loads(call["body"])
    assert int(headers["x-chatbot-timestamp"]) == payload["sent_at"]
    return payload


# --- defaults -------------------------------------------------------------------------------


def test_a_new_tenant_gets_the_default_rules_and_another_tenant_sees_none_of_them(bundle, other_bundle):
    from monitoring.alerts.rules import TENANT_DEFAULTS
    from monitoring.models import AlertRule

    with as_tenant(bundle):
        rules = list(AlertRule.objects.all())
    assert {r.metric for r in rules} == {row[0] for row in TENANT_DEFAULTS}
    assert all(r.is_default and r.scope == "chatbot" and r.chatbot_id is None for r in rules)
    assert {r.tenant_id for r in rules} == {bundle.tenant.pk}
    p95 = next(r for r in rules if r.metric == "search_p95_ms")
    assert (p95.condition, p95.threshold, p95.window_minutes) == (">", 500.0, 15)
    with as_tenant(other_bundle):
        assert set(AlertRule.objects.values_list("tenant_id", flat=True)) == {other_bundle.tenant.pk}


# --- API: CRUD, permissions, validation ------------------------------------------------------


def test_rule_crud_through_the_api_by_an_owner(bundle):
    client = session_client(owner(bundle))
    response = client.post(
        "/api/alerts/rules",
        {
            "name": "Slow",
            "metric": "search_p95_ms",
            "condition": ">=",
            "threshold": 250,
            "window_minutes": 10,
            "chatbot_id": bundle.chatbot.pk,
            "channels": {"email": ["ops@example.com"], "webhook": {"url": "https://hooks.example.com/x"}},
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    created = response.json()
    rule_id = created["id"]
    assert created["scope"] == "chatbot" and created["chatbot_id"] == bundle.chatbot.pk
    assert len(created["channels"]["webhook"]["secret"]) >= 16  # made for it, shown once
    listed = client.get("/api/alerts/rules").json()
    mine = next(r for r in listed["rules"] if r["id"] == rule_id)
    assert mine["channels"]["webhook"] == {"url": "https://hooks.example.com/x", "secret_set": True}
    assert "search_p95_ms" in listed["metrics"]

    response = client.patch(f"/api/alerts/rules/{rule_id}", {"enabled": False, "threshold": 300}, format="json")
    assert response.status_code == 200
    assert (response.json()["enabled"], response.json()["threshold"]) == (False, 300.0)
    with as_tenant(bundle):
        from monitoring.models import AlertRule

        rule = AlertRule.objects.get(pk=rule_id)
        assert rule.channels["webhook"]["secret"] == created["channels"]["webhook"]["secret"]  # kept
    assert client.get(f"/api/alerts/rules/{rule_id}").json()["enabled"] is False
    assert client.delete(f"/api/alerts/rules/{rule_id}").status_code == 204
    assert client.get(f"/api/alerts/rules/{rule_id}").status_code == 404


def test_viewers_and_read_keys_read_rules_but_cannot_write_them(bundle):
    from tenants.services import api_key_create

    viewer = session_client(member(bundle, "alert-viewer", "viewer"))
    assert viewer.get("/api/alerts/rules").status_code == 200
    assert viewer.get("/api/alerts").status_code == 200
    body = {"metric": "search_p95_ms", "threshold": 100}
    response = viewer.post("/api/alerts/rules", body, format="json")
    assert response.status_code == 403 and "viewer" in response.json()["error"]["message"]
    with as_tenant(bundle):
        issued = api_key_create(tenant=bundle.tenant, name="reader", created_by=owner(bundle), scopes=["read"])
    reader = APIClient()
    reader.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.raw_key}")
    assert reader.get("/api/alerts/rules").status_code == 200
    assert reader.post("/api/alerts/rules", body, format="json").status_code == 403
    writer = APIClient()
    writer.credentials(HTTP_AUTHORIZATION=f"Bearer {bundle.api_key}")
    made = writer.post("/api/alerts/rules", body, format="json")
    assert made.status_code == 201 and (made.json()["scope"], made.json()["chatbot_id"]) == ("chatbot", None)


def test_another_tenants_rules_and_alerts_are_404(bundle, other_bundle):
    from monitoring.models import AlertRule

    with as_tenant(other_bundle):
        theirs = AlertRule.objects.filter(tenant=other_bundle.tenant).first().pk
    client = session_client(owner(bundle))
    assert client.get(f"/api/alerts/rules/{theirs}").status_code == 404
    assert client.patch(f"/api/alerts/rules/{theirs}", {"enabled": False}, format="json").status_code == 404
    assert client.delete(f"/api/alerts/rules/{theirs}").status_code == 404
    assert client.get(f"/api/alerts?chatbot_id={other_bundle.chatbot.pk}").status_code == 404
    response = client.post(
        "/api/alerts/rules",
        {"metric": "search_p95_ms", "threshold": 1, "chatbot_id": other_bundle.chatbot.pk},
        format="json",
    )
    assert response.status_code == 404
    with as_tenant(other_bundle):
        assert AlertRule.objects.get(pk=theirs).enabled


@pytest.mark.parametrize(
    "body, field",
    [
        ({"metric": "nope", "threshold": 1}, "metric"),
        ({"metric": "search_p95_ms", "threshold": 1, "condition": "=="}, "condition"),
        ({"metric": "search_p95_ms", "threshold": 1, "window_minutes": -5}, "window_minutes"),
        ({"metric": "search_p95_ms", "threshold": "high"}, "threshold"),
        ({"metric": "search_p95_ms"}, "threshold"),
        (
            {"metric": "search_p95_ms", "threshold": 1, "channels": {"webhook": {"url": "ftp://x/y"}}},
            "channels.webhook.url",
        ),
        ({"metric": "search_p95_ms", "threshold": 1, "channels": {"email": ["not an address"]}}, "channels.email"),
        ({"metric": "search_p95_ms", "threshold": 1, "channels": {"sms": ["1"]}}, "channels"),
        ({"metric": "disk_used_percent", "threshold": 90}, "scope"),
        ({"metric": "index_recall", "threshold": 0.9, "scope": "tenant"}, "scope"),
        ({"metric": "search_p95_ms", "threshold": 1, "colour": "red"}, "colour"),
    ],
)
def test_bad_rules_are_400_naming_the_field(bundle, body, field):
    from monitoring.models import AlertRule

    with as_tenant(bundle):
        before = AlertRule.objects.count()
    response = session_client(owner(bundle)).post("/api/alerts/rules", body, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["field"] == field
    with as_tenant(bundle):
        assert AlertRule.objects.count() == before


@TX
def test_global_rules_are_staff_only(bundle):
    from monitoring.alerts.rules import alert_rules_global_default_create
    from monitoring.models import AlertRule

    with across_tenants():
        alert_rules_global_default_create()
        global_id = AlertRule.objects.filter(tenant__isnull=True, metric="disk_used_percent").get().pk
    body = {"metric": "disk_used_percent", "threshold": 95, "scope": "global", "name": "Disk"}
    owner_client = session_client(owner(bundle))
    assert owner_client.post("/api/alerts/rules", body, format="json").status_code == 403
    assert owner_client.get(f"/api/alerts/rules/{global_id}").status_code == 404
    assert all(r["tenant_id"] is not None for r in owner_client.get("/api/alerts/rules").json()["rules"])
    with as_tenant(bundle):  # a tenant's session sees no global row, and cannot write one
        assert not AlertRule.objects.filter(tenant__isnull=True).exists()
        with pytest.raises(ProgrammingError, match="row-level security"), transaction.atomic():
            AlertRule.objects.create(tenant=None, scope="global", metric="disk_used_percent", threshold=1, name="x")
        assert AlertRule.objects.filter(pk=global_id).update(threshold=1) == 0

    staff = session_client(member(bundle, "alert-staff", "admin", is_staff=True))
    response = staff.post("/api/alerts/rules", body, format="json")
    assert response.status_code == 201 and response.json()["tenant_id"] is None
    assert staff.patch(f"/api/alerts/rules/{global_id}", {"threshold": 97}, format="json").json()["threshold"] == 97
    assert any(r["id"] == global_id for r in staff.get("/api/alerts/rules").json()["rules"])
    with across_tenants():
        assert AlertRule.objects.get(pk=global_id).threshold == 97


# --- the evaluator ---------------------------------------------------------------------------


@TX
def test_slow_searches_open_one_alert_updated_then_resolved_with_email(bundle, settings):
    from monitoring.alerts.evaluate import alerts_evaluate
    from monitoring.models import Alert, Notification

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    rule = p95_rule(bundle, channels={"email": ["ops@example.com"]})
    slow_searches(bundle, 20, took_ms=900.0)

    totals = alerts_evaluate()
    assert totals["errors"] == 0 and totals["opened"] >= 1
    with as_tenant(bundle):
        alert = Alert.objects.get(rule=rule)
        assert (alert.state, alert.scope_key, alert.value) == ("firing", f"chatbot:{bundle.chatbot.pk}", 900.0)
        assert [e.kind for e in alert.events.all()] == ["opened", "notified"]
        assert Notification.objects.get(event__alert=alert).status == "sent"
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["ops@example.com"] and "firing" in mail.outbox[0].subject

    slow_searches(bundle, 20, took_ms=1500.0)  # slower still: the same alert, a new value
    alerts_evaluate()
    with as_tenant(bundle):
        assert Alert.objects.filter(rule=rule).count() == 1
        alert.refresh_from_db()
        assert alert.value == 1500.0 and alert.state == "firing"
        assert [e.kind for e in alert.events.all()][-1] == "updated"
    assert len(mail.outbox) == 1  # an update is not notified

    # the slow searches leave the window: resolved, and the resolve is mailed
    totals = alerts_evaluate(now=timezone.now() + timedelta(minutes=20))
    assert totals["resolved"] >= 1
    with as_tenant(bundle):
        alert.refresh_from_db()
        assert alert.state == "resolved" and alert.resolved_at is not None
        assert "resolved" in [e.kind for e in alert.events.all()]
    assert len(mail.outbox) == 2 and "resolved" in mail.outbox[1].subject


def test_zero_result_rate_and_its_rise_over_the_previous_window(bundle):
    from monitoring.alerts.sources import METRICS, window_for

    slow_searches(bundle, 10, took_ms=50, minutes_ago=90, results=3)  # the previous hour: none empty
    slow_searches(bundle, 6, took_ms=50, minutes_ago=30, results=0)  # this hour: 6 of 10 empty
    slow_searches(bundle, 4, took_ms=50, minutes_ago=30, results=2)
    rule = p95_rule(bundle, metric="search_zero_result_rate", threshold=0.3, window_minutes=60)
    window = window_for(rule, timezone.now())
    with as_tenant(bundle):
        assert METRICS["search_zero_result_rate"].measure(rule, bundle.chatbot, window) == pytest.approx(0.6)
        assert METRICS["search_zero_result_rise"].measure(rule, bundle.chatbot, window) == pytest.approx(0.6)
        assert METRICS["search_zero_result_rate"].measure(rule, bundle.tenant, window.previous) == 0.0
        rule.window_minutes = 10  # too few searches in the last 10 minutes: no figure
        recent = window_for(rule, timezone.now())
        assert METRICS["search_zero_result_rate"].measure(rule, bundle.chatbot, recent) is None


@TX
def test_cooldown_reopens_quietly_and_a_training_failure_opens_its_own_alert(bundle, settings):
    from monitoring.alerts.evaluate import alerts_evaluate
    from monitoring.models import Alert, Notification
    from training.models import TrainingJob

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    rule = p95_rule(bundle, channels={"email": ["ops@example.com"]}, cooldown_minutes=30)
    slow_searches(bundle, 20)
    now = timezone.now()
    alerts_evaluate(now=now)
    alerts_evaluate(now=now + timedelta(minutes=20))  # resolved: searches out of the window
    slow_searches(bundle, 20, minutes_ago=-24)  # slow again 25 minutes later
    alerts_evaluate(now=now + timedelta(minutes=25))
    with as_tenant(bundle):
        alerts = list(Alert.objects.filter(rule=rule).order_by("pk"))
        assert [a.state for a in alerts] == ["resolved", "firing"]
        assert alerts[1].notified is False and alerts[1].events.get(kind="opened").detail["cooldown"] is True
        assert Notification.objects.filter(event__alert=alerts[1]).count() == 0
    assert len(mail.outbox) == 2  # the first open and its resolve only

    # a failed training job trips the default training rule (chatbot scope, every chatbot)
    with as_tenant(bundle):
        TrainingJob.objects.create(
            tenant=bundle.tenant, chatbot=bundle.chatbot, status="failed", error="boom", finished_at=timezone.now()
        )
    alerts_evaluate()
    with as_tenant(bundle):
        failing = Alert.objects.get(rule__metric="training_failure_rate", state="firing")
        assert failing.value == 1.0 and failing.scope_key == f"chatbot:{bundle.chatbot.pk}"


@TX
def test_acknowledge_and_resolve_through_the_api_and_the_state_filter(bundle, other_bundle):
    from monitoring.alerts.evaluate import alerts_evaluate

    p95_rule(bundle)
    slow_searches(bundle, 20)
    alerts_evaluate()
    client = session_client(owner(bundle))
    alerts = client.get("/api/alerts").json()["alerts"]
    assert len(alerts) == 1 and alerts[0]["state"] == "firing"
    alert_id = alerts[0]["id"]
    assert session_client(owner(other_bundle)).post(f"/api/alerts/{alert_id}/acknowledge").status_code == 404
    assert session_client(member(bundle, "v2", "viewer")).post(f"/api/alerts/{alert_id}/resolve").status_code == 403

    assert session_client(owner(other_bundle)).get(f"/api/alerts/{alert_id}").status_code == 404
    acknowledged = client.post(f"/api/alerts/{alert_id}/acknowledge").json()
    assert acknowledged["state"] == "acknowledged" and acknowledged["acknowledged_by"] == bundle.username
    assert client.post(f"/api/alerts/{alert_id}/acknowledge").status_code == 409
    alerts_evaluate()  # still slow: it stays acknowledged, not firing again
    assert client.get(f"/api/alerts/{alert_id}").json()["state"] == "acknowledged"
    assert client.get("/api/alerts?state=firing").json()["alerts"] == []

    resolved = client.post(f"/api/alerts/{alert_id}/resolve").json()
    assert resolved["state"] == "resolved"
    assert [e["kind"] for e in resolved["events"]] == ["opened", "acknowledged", "resolved"]
    assert client.get("/api/alerts").json()["alerts"] == []
    assert [a["id"] for a in client.get("/api/alerts?state=resolved").json()["alerts"]] == [alert_id]
    assert client.get("/api/alerts?state=bogus").status_code == 400


@TX
def test_a_webhook_is_signed_and_a_failing_one_is_retried_with_backoff(bundle, settings):
    from monitoring.alerts.evaluate import alerts_evaluate
    from monitoring.alerts.notify import notification_deliver
    from monitoring.models import Notification

    settings.ALERT_NOTIFY_BACKOFF_SECONDS = 30
    settings.ALERT_WEBHOOK_ALLOW_PRIVATE = True  # the receiver is on 127.0.0.1
    secret = "s3cret-s3cret-s3cret"
    with webhook_server(codes=[500, 503]) as (server, url):
        rule = p95_rule(bundle, channels={"webhook": {"url": url, "secret": secret}})
        slow_searches(bundle, 20)
        alerts_evaluate()
        with as_tenant(bundle):
            notification = Notification.objects.get(event__alert__rule=rule)
        assert (notification.status, notification.attempts) == ("pending", 1)
        assert "HTTP 500" in notification.last_error
        due = notification.next_attempt_at
        assert 29 <= (due - notification.created_at).total_seconds() <= 35  # first backoff: 30 s
        with as_tenant(bundle):
            assert notification_deliver(notification_id=notification.pk) is None  # not due yet
            delay = notification_deliver(notification_id=notification.pk, now=due)  # 503
            assert delay == 60  # doubled
            notification.refresh_from_db()
            assert notification_deliver(notification_id=notification.pk, now=notification.next_attempt_at) is None
            notification.refresh_from_db()
            assert (notification.status, notification.attempts) == ("sent", 3)
            kinds = [e.kind for e in notification.event.alert.events.all()]
            assert kinds == ["opened", "notify_failed", "notify_failed", "notified"]
            # sent is final: never sent twice
            assert notification_deliver(notification_id=notification.pk, now=timezone.now() + timedelta(days=1)) is None
    assert len(server.calls) == 3
    payload = assert_signed(server.calls[-1], secret)
    assert payload["event"] == "opened" and payload["rule"]["id"] == rule.pk
    assert payload["alert"]["value"] == 900.0
    assert {c["headers"]["X-Chatbot-Delivery"] for c in server.calls} == {str(notification.pk)}


@TX
def test_a_webhook_to_a_private_address_is_refused_at_once(bundle, settings):
    from monitoring.alerts.evaluate import alerts_evaluate
    from monitoring.models import Notification

    settings.ALERT_WEBHOOK_ALLOW_PRIVATE = False
    with webhook_server() as (server, url):
        rule = p95_rule(bundle, channels={"webhook": {"url": url, "secret": "s3cret-s3cret-s3cret"}})
        slow_searches(bundle, 20)
        alerts_evaluate()
        with as_tenant(bundle):
            notification = Notification.objects.get(event__alert__rule=rule)
            failed = notification.event.alert.events.get(kind="notify_failed")
    assert (notification.status, notification.attempts) == ("failed", 1)
    assert "private address" in notification.last_error and failed.detail["given_up"] is True
    assert server.calls == []


@TX
def test_every_system_metric_measures_on_the_maintenance_connection(bundle):
    from monitoring.alerts.sources import GLOBAL, METRICS, window_for
    from monitoring.models import AlertRule

    rule = AlertRule(metric="disk_used_percent", scope="global", threshold=0, window_minutes=5)
    window = window_for(rule, timezone.now())
    with across_tenants():
        values = {m.name: m.measure(rule, None, window) for m in METRICS.values() if GLOBAL in m.scopes}
    assert set(values) == {"disk_used_percent", "memory_used_percent", "queue_backlog", "db_connections",
                           "db_cache_hit_ratio", "db_dead_tuple_ratio"}  # fmt: skip
    for name in ("disk_used_percent", "memory_used_percent", "db_connections"):
        assert 0 < values[name] <= 100, (name, values[name])
    assert 0 < values["db_cache_hit_ratio"] <= 1 and values["queue_backlog"] >= 0
    assert values["db_dead_tuple_ratio"] is None or 0 <= values["db_dead_tuple_ratio"] <= 1


@TX
def test_global_rules_evaluate_system_figures_and_only_staff_see_their_alerts(bundle):
    from monitoring.alerts.evaluate import alerts_evaluate
    from monitoring.alerts.rules import alert_rule_create
    from monitoring.models import Alert

    with across_tenants():
        rule = alert_rule_create(tenant=None, metric="memory_used_percent", condition=">=", threshold=0, name="m")
    alerts_evaluate()
    with across_tenants():
        alert = Alert.objects.get(rule=rule)
        assert alert.scope_key == "global" and alert.tenant_id is None and 0 < alert.value <= 100
    owner_client = session_client(owner(bundle))
    assert owner_client.get(f"/api/alerts/{alert.pk}").status_code == 404
    assert all(a["tenant_id"] is not None for a in owner_client.get("/api/alerts").json()["alerts"])
    staff = session_client(member(bundle, "alert-staff2", "admin", is_staff=True))
    assert staff.get(f"/api/alerts/{alert.pk}").json()["events"][0]["kind"] == "opened"
    assert staff.post(f"/api/alerts/{alert.pk}/acknowledge").json()["state"] == "acknowledged"

    admin = get_user_model().objects.create_user("alert-admin", password="pw-123-abc", is_staff=True, is_superuser=True)
    browser = session_client(admin)
    page = browser.get(f"/admin/monitoring/alert/{alert.pk}/change/")
    assert page.status_code == 200 and "Acknowledged" in page.content.decode()  # its events inline
    assert browser.get("/admin/monitoring/alertrule/").status_code == 200
    assert browser.get("/admin/monitoring/notification/").status_code == 200


@TX
def test_a_failed_upload_opens_the_default_upload_alert_per_chatbot(bundle):
    from monitoring.alerts.evaluate import alerts_evaluate
    from monitoring.models import Alert
    from tests.conftest import ingest, make_upload

    document = ingest(bundle, make_upload("broken.pdf", b"%PDF-1.4\n this is no PDF at all"))
    assert document.status == "failed"
    alerts_evaluate()
    with as_tenant(bundle):
        alert = Alert.objects.get(rule__metric="upload_failure_rate", rule__is_default=True)
        assert (alert.value, alert.chatbot_id, alert.state) == (1.0, bundle.chatbot.pk, "firing")
        assert "upload_failure_rate is 1" in alert.message


@TX
def test_index_recall_below_target_opens_the_default_alert(bundle):
    search_models = pytest.importorskip("search.models")
    if not hasattr(search_models, "SearchTuning"):
        pytest.skip("the optimizer's SearchTuning is not in this tree")
    from monitoring.alerts.evaluate import alerts_evaluate
    from monitoring.models import Alert

    with as_tenant(bundle):
        search_models.SearchTuning.objects.create(
            tenant=bundle.tenant, chatbot=bundle.chatbot, ef_search=40, exact_max=1500,
            recall_target=0.98, measured_recall=0.91,
        )  # fmt: skip
    alerts_evaluate()
    with as_tenant(bundle):
        alert = Alert.objects.get(rule__metric="index_recall", rule__is_default=True)
        assert alert.state == "firing" and alert.value == pytest.approx(0.91)
        search_models.SearchTuning.objects.filter(chatbot=bundle.chatbot).update(measured_recall=0.99)
    alerts_evaluate()
    with as_tenant(bundle):
        alert.refresh_from_db()
        assert alert.state == "resolved"


@TX
def test_a_nightly_ndcg_drop_opens_the_default_alert(bundle):
    from training import selectors

    if not hasattr(selectors, "evaluation_latest"):
        pytest.skip("the nightly evaluation (training.selectors.evaluation_latest) is not in this tree")
    from monitoring.alerts.evaluate import alerts_evaluate
    from monitoring.models import Alert
    from training.models import Evaluation

    with as_tenant(bundle):
        Evaluation.objects.create(
            tenant=bundle.tenant, chatbot=bundle.chatbot, space_key="local:test", queries=20,
            ndcg_10=0.60, baseline_ndcg_10=0.70,
        )  # fmt: skip
    alerts_evaluate()
    with as_tenant(bundle):
        alert = Alert.objects.get(rule__metric="retrieval_ndcg_drop", rule__is_default=True)
        assert alert.state == "firing" and alert.value == pytest.approx(0.10)
        assert alert.rule.severity == "critical"


# --- dashboard -------------------------------------------------------------------------------


@TX
def test_alerts_page_badge_and_rule_forms(bundle, client):
    from monitoring.alerts.evaluate import alerts_evaluate
    from monitoring.models import Alert, AlertRule

    p95_rule(bundle, name="Checkout is slow")
    slow_searches(bundle, 20)
    alerts_evaluate()
    client.force_login(owner(bundle))
    home = client.get("/").content.decode()
    assert 'href="/alerts/"' in home and 'class="alert-badge' in home and ">1<" in home
    page = client.get("/alerts/").content.decode()
    assert "Checkout is slow" in page and "firing" in page and "acknowledge" in page.lower()
    with as_tenant(bundle):
        alert = Alert.objects.get(rule__name="Checkout is slow")
    assert client.post(f"/alerts/{alert.pk}/acknowledge").status_code == 302
    with as_tenant(bundle):
        alert.refresh_from_db()
        assert alert.state == "acknowledged"

    response = client.post(
        "/alerts/rules/new", {"name": "Bad", "metric": "search_p95_ms", "condition": ">", "threshold": "abc",
                              "window_minutes": "15", "severity": "warning", "cooldown_minutes": "60"}, follow=True
    )  # fmt: skip
    assert "threshold" in response.content.decode() and "number" in response.content.decode()
    with as_tenant(bundle):
        assert not AlertRule.objects.filter(name="Bad").exists()
    response = client.post(
        "/alerts/rules/new", {"name": "Zero", "metric": "search_zero_result_rate", "condition": ">", "threshold": "0.4",
                              "window_minutes": "60", "severity": "critical", "cooldown_minutes": "60",
                              "emails": "a@example.com", "enabled": "on"}, follow=True
    )  # fmt: skip
    assert response.status_code == 200
    with as_tenant(bundle):
        made = AlertRule.objects.get(name="Zero")
        assert (made.threshold, made.severity, made.channels) == (0.4, "critical", {"email": ["a@example.com"]})
    client.post(f"/alerts/rules/{made.pk}/toggle")
    with as_tenant(bundle):
        made.refresh_from_db()
        assert made.enabled is False

    viewer = member(bundle, "alert-viewer3", "viewer")
    client.force_login(viewer)
    page = client.get("/alerts/").content.decode()
    assert "Checkout is slow" in page and "/acknowledge" not in page
    client.post(f"/alerts/rules/{made.pk}/toggle")
    with as_tenant(bundle):
        made.refresh_from_db()
        assert made.enabled is False


# --- end to end with a real worker -----------------------------------------------------------


@pytest.mark.worker
@TX
def test_end_to_end_a_real_worker_delivers_a_signed_webhook_after_a_500_then_resolves(bundle, worker_env):
    from monitoring.models import Alert, Notification
    from monitoring.tasks import alerts_evaluate_task
    from tests.test_worker_kill import wait_for
    from tests.worker import celery_worker

    secret = "end-to-end-secret-123"
    with webhook_server(codes=[500]) as (server, url):
        rule = p95_rule(bundle, channels={"webhook": {"url": url, "secret": secret}})
        slow_searches(bundle, 20, took_ms=1200.0)
        with celery_worker(worker_env, ALERT_NOTIFY_BACKOFF_SECONDS=0.5, ALERT_WEBHOOK_ALLOW_PRIVATE=1):
            alerts_evaluate_task.delay()  # what beat sends every minute

            def delivered():
                with as_tenant(bundle):
                    return Notification.objects.filter(event__alert__rule=rule, status="sent").first()

            sent = wait_for(delivered, 60, "the worker did not deliver the webhook")
            assert sent.attempts == 2 and "HTTP 500" not in sent.last_error
            assert len(server.calls) == 2
            payload = assert_signed(server.calls[-1], secret)
            assert payload["event"] == "opened" and payload["alert"]["value"] == 1200.0

            with as_tenant(bundle):  # the slow searches are gone: the condition clears
                from search.models import SearchLog

                SearchLog.objects.filter(chatbot=bundle.chatbot).delete()
            alerts_evaluate_task.delay()

            def resolved():
                with as_tenant(bundle):
                    return Alert.objects.filter(rule=rule, state="resolved").first()

            wait_for(resolved, 30, "the alert did not resolve")
            wait_for(lambda: len(server.calls) == 3, 30, "the resolve was not delivered")
    assert assert_signed(server.calls[-1], secret)["event"] == "resolved"
    with as_tenant(bundle):
        assert Alert.objects.filter(rule=rule).count() == 1
