"""The audit log: logins, key changes, uploads, deletes and staff access are recorded with who,
when, from where and tenant; owners see their tenant's, viewers do not; rows are append-only in
the database itself. Ingestion runs eagerly in-process."""

import psycopg
import pytest
from django.contrib.auth import get_user_model
from django.db import DatabaseError, connection, transaction
from django.test import Client
from rest_framework.test import APIClient

from tenants import dbroles
from tenants.models import ApiKey, AuditEvent, Membership
from tests.conftest import as_tenant, make_upload


def _actions(tenant) -> list[str]:
    with as_tenant(tenant):
        return list(AuditEvent.objects.filter(tenant_id=tenant.pk).order_by("id").values_list("action", flat=True))


def test_security_actions_are_recorded_with_actor_and_address(bundle, other_bundle):
    client = Client(REMOTE_ADDR="203.0.113.9", HTTP_USER_AGENT="pytest-browser")
    client.post("/login/", {"username": bundle.username, "password": "wrong"})
    assert client.post("/login/", {"username": bundle.username, "password": bundle.password}).status_code == 302
    client.post("/keys/", {"name": "widget", "scopes": ["search"]})
    with as_tenant(bundle):
        key = ApiKey.objects.get(name="widget")
    client.post(f"/keys/{key.pk}/rotate")
    client.post(f"/keys/{key.pk}/revoke")

    api = APIClient(REMOTE_ADDR="198.51.100.4")
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {bundle.api_key}")
    upload = api.post(
        "/api/upload-training-data",
        {"file": make_upload("a.txt", "Some text."), "chatbot_id": bundle.chatbot.pk},
        format="multipart",
    )
    assert upload.status_code == 202
    assert api.delete(f"/api/documents/{upload.json()['document_id']}").status_code == 204

    assert _actions(bundle.tenant) == [
        "key_create",  # the bootstrap key
        "login_failed", "login", "key_create", "key_create", "key_rotate", "key_revoke", "upload", "document_delete",
    ]  # fmt: skip
    with as_tenant(bundle):
        events = {e.action: e for e in AuditEvent.objects.filter(tenant_id=bundle.tenant.pk).order_by("id")}
    assert events["login"].actor == bundle.username and events["login"].ip == "203.0.113.9"
    assert events["login"].user_agent == "pytest-browser"
    assert events["key_revoke"].target == f"api-key:{key.prefix}" and events["key_revoke"].actor == bundle.username
    assert events["upload"].actor == f"api-key:{bundle.api_key[:12]}" and events["upload"].ip == "198.51.100.4"
    assert events["upload"].detail["filename"] == "a.txt"
    assert _actions(other_bundle.tenant) == ["key_create"]  # nothing of ours in another tenant's log

    page = client.get("/audit/").content.decode()
    assert "API key rotated" in page and "203.0.113.9" in page
    assert "failed login" in client.get("/audit/?action=login_failed").content.decode()


def test_viewers_do_not_see_the_audit_log(bundle):
    viewer = get_user_model().objects.create_user("viewer", password="pw-viewer-1")
    with as_tenant(bundle):
        Membership.objects.create(tenant=bundle.tenant, user=viewer, role="viewer")
    client = Client()
    client.force_login(viewer)
    assert client.get("/audit/").status_code == 404


@pytest.mark.django_db(transaction=True, databases=["default", "maintenance"])
def test_staff_access_to_a_tenants_objects_is_recorded_for_that_tenant(bundle, other_bundle):
    """Staff read on the maintenance connection (committed rows, so a transactional test)."""
    from tests.conftest import SAMPLE_FAQ_CSV, ingest

    ingest(bundle, make_upload("faq.csv", SAMPLE_FAQ_CSV), content_type="faq")
    staff = get_user_model().objects.create_superuser("staff", password="pw-staff-1")
    client = Client(REMOTE_ADDR="192.0.2.1")
    client.force_login(staff)
    with as_tenant(bundle):
        key = ApiKey.objects.get(prefix=bundle.api_key[:12])
    assert client.get(f"/admin/tenants/apikey/{key.pk}/change/").status_code == 200
    assert client.get(f"/admin/tenants/tenant/{bundle.tenant.pk}/change/").status_code == 200
    # lists, searches and autocomplete lookups of tenant content: one row per view and tenant shown
    assert "reset my password" in client.get("/admin/knowledge/chunk/?q=password").content.decode()
    assert client.get("/admin/search/searchlog/").status_code == 200
    assert client.get("/admin/knowledge/qapair/").status_code == 200
    lookup = client.get(
        "/admin/autocomplete/", {"app_label": "tenants", "model_name": "membership", "field_name": "tenant", "term": ""}
    )
    assert lookup.status_code == 200 and len(lookup.json()["results"]) == 2
    with as_tenant(bundle):
        events = list(AuditEvent.objects.filter(action="staff_access"))
    by_target = {(e.target, e.detail.get("view")): e for e in events}
    assert set(by_target) == {
        (f"tenants.ApiKey:{key.pk}", "change"),
        (f"tenants.Tenant:{bundle.tenant.pk}", "change"),
        ("knowledge.Chunk", "search"),
        ("tenants.Tenant", "autocomplete"),
    }  # the empty search log and Q&A lists showed none of its rows
    assert by_target[("knowledge.Chunk", "search")].detail["rows_shown"] == 1
    assert by_target[("knowledge.Chunk", "search")].detail["search"] == "password"
    assert all(e.actor == "staff" and e.ip == "192.0.2.1" for e in events)
    with as_tenant(other_bundle):  # the other tenant's log shows only what showed its rows
        assert list(AuditEvent.objects.filter(action="staff_access").values_list("target", flat=True)) == [
            "tenants.Tenant"
        ]
    assert client.get("/admin/tenants/auditevent/").status_code == 200  # staff see every tenant's


def test_audit_rows_cannot_be_changed_or_deleted(bundle):
    from tenants.audit import audit_record

    with as_tenant(bundle):
        audit_record(action="login", tenant_id=bundle.tenant.pk, target="user:x")
    statements = ("UPDATE tenants_auditevent SET actor = 'someone else'", "DELETE FROM tenants_auditevent")
    for statement in statements:  # the app role has no grant for either
        with pytest.raises(DatabaseError, match="permission denied"), as_tenant(bundle), transaction.atomic():
            with connection.cursor() as c:
                c.execute(statement)
    with dbroles.owner_connect(autocommit=False) as owner:  # and the owner is stopped by the trigger
        owner.execute("INSERT INTO tenants_auditevent (created_at, action, actor, api_key_prefix, target, "
                      "user_agent, detail) VALUES (now(), 'login', 'x', '', 'user:y', '', '{}')")  # fmt: skip
        for statement in statements:
            with pytest.raises(psycopg.Error, match="append-only"), owner.transaction():
                owner.execute(statement)
        owner.rollback()
    with as_tenant(bundle):
        assert AuditEvent.objects.filter(target="user:x").exclude(actor="someone else").count() == 1
