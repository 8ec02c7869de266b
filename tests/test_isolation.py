"""Tenant isolation enforced by PostgreSQL (row-level security, tenants/rls.py).

The tests connect as the app role, like the application. Ingestion runs eagerly in-process.
Requests go through the Django test client (every middleware, so each starts with no tenant).
"""

from __future__ import annotations

import random
import uuid

import psycopg
import pytest
from django.db import connection, transaction
from rest_framework.test import APIClient

from chatbot_training import dbroles
from tenants.scoping import no_tenant_context, tenant_context
from tests.conftest import SAMPLE_FAQ_CSV, ingest, make_upload

TENANT_TABLES_MIN = {
    "tenants_tenant",
    "tenants_membership",
    "tenants_chatbot",
    "tenants_apikey",
    "tenants_auditevent",
    "knowledge_embeddingspace",
    "knowledge_chatbotspace",
    "knowledge_document",
    "knowledge_ingestionjob",
    "knowledge_chunk",
    "knowledge_chunkembedding",
    "knowledge_conversation",
    "knowledge_conversationturn",
    "knowledge_qapair",
    "search_searchlog",
    "search_searchfeedback",
}


def _count(table: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f'SELECT count(*) FROM "{table}"')
        return cursor.fetchone()[0]


def _tenant_tables() -> list[str]:
    from tenants.rls import tenant_tables

    return tenant_tables(connection)


def test_every_tenant_table_forces_row_level_security_with_the_policy(db):
    tables = _tenant_tables()
    assert TENANT_TABLES_MIN <= set(tables)
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, count(p.polname)
            FROM pg_class c LEFT JOIN pg_policy p ON p.polrelid = c.oid
            WHERE c.relname = ANY(%s) GROUP BY 1, 2, 3
            """,
            [tables],
        )
        state = {name: (enabled, forced, policies) for name, enabled, forced, policies in cursor.fetchall()}
    assert all(state[t] == (True, True, 1) for t in tables), state
    from django.apps import apps

    from tenants.scoping import TenantOwned

    owned = {m._meta.db_table for m in apps.get_models() if issubclass(m, TenantOwned)}
    assert owned <= set(tables)


def test_the_app_role_owns_nothing_and_cannot_bypass(db):
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT rolsuper, rolbypassrls, rolcreaterole, current_user FROM pg_roles WHERE rolname = current_user"
        )
        superuser, bypass, createrole, role = cursor.fetchone()
        assert (superuser, bypass, createrole) == (False, False, False)
        assert role == dbroles.APP_ROLE
        cursor.execute("SELECT count(*) FROM pg_class WHERE relowner = current_user::regrole")
        assert cursor.fetchone()[0] == 0
        cursor.execute("SELECT count(*) FROM pg_proc WHERE proowner = current_user::regrole")
        assert cursor.fetchone()[0] == 0


@pytest.fixture
def two_tenants(bundle, other_bundle):
    """Overlapping content (the same FAQ in both) plus one document each with a secret marker."""
    for each in (bundle, other_bundle):
        ingest(each, make_upload("faq.csv", SAMPLE_FAQ_CSV), content_type="faq")
    secrets = {}
    for each in (bundle, other_bundle):
        marker = f"SECRET{uuid.uuid4().hex[:10].upper()}"
        text = f"The {each.tenant.name} vault code is {marker}. Only {each.tenant.name} staff may read it."
        secrets[each.tenant.pk] = (marker, ingest(each, make_upload(f"vault-{marker}.txt", text)))
    return bundle, other_bundle, secrets


def test_no_tenant_means_zero_rows_and_a_tenant_means_only_its_rows(two_tenants):
    mine, theirs, _ = two_tenants
    tables = [t for t in _tenant_tables() if t not in ("knowledge_embeddingspace", "tenants_auditevent")]
    everything = {t: _count(t) for t in tables}  # the tests' own cross-tenant scope
    assert everything["knowledge_chunk"] > 0 and everything["knowledge_chunkembedding"] > 0
    with no_tenant_context():
        assert {t: _count(t) for t in tables} == dict.fromkeys(tables, 0)
    with tenant_context(mine.tenant):
        with connection.cursor() as cursor:
            cursor.execute("SELECT DISTINCT tenant_id FROM knowledge_chunk")
            assert [row[0] for row in cursor.fetchall()] == [mine.tenant.pk]
            # writing another tenant's row is refused by the policy's WITH CHECK
            with pytest.raises(Exception, match="row-level security"), connection.cursor() as c2:
                with transaction.atomic():
                    c2.execute(
                        "UPDATE knowledge_document SET tenant_id = %s WHERE tenant_id = %s",
                        [theirs.tenant.pk, mine.tenant.pk],
                    )
            cursor.execute("UPDATE knowledge_document SET title = 'x' WHERE tenant_id = %s", [theirs.tenant.pk])
            assert cursor.rowcount == 0


def _app_url() -> str:
    from urllib.parse import urlsplit, urlunsplit

    from django.conf import settings

    return urlunsplit(urlsplit(settings.DATABASE_URL)._replace(path="/" + connection.settings_dict["NAME"]))


@pytest.mark.django_db(transaction=True)
def test_a_raw_query_on_a_fresh_app_connection_without_a_tenant_returns_nothing(two_tenants):
    """Committed rows of both tenants; a plain psycopg connection as the app role sees none of
    them until it names a tenant, and then only that tenant's (and forgets it at commit)."""
    mine, _, secrets = two_tenants
    with psycopg.connect(_app_url()) as raw:
        for table in ("knowledge_document", "knowledge_chunk", "knowledge_chunkembedding", "tenants_apikey"):
            assert raw.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0
        assert raw.execute("SELECT count(*) FROM knowledge_chunk WHERE text LIKE '%SECRET%'").fetchone()[0] == 0
        raw.execute("SELECT set_config('app.tenant_id', %s, true)", [str(mine.tenant.pk)])
        texts = [row[0] for row in raw.execute("SELECT text FROM knowledge_chunk WHERE text LIKE '%%SECRET%%'")]
        assert texts and all(secrets[mine.tenant.pk][0] in t for t in texts)
        raw.commit()  # the setting was transaction-local
        assert raw.execute("SELECT count(*) FROM knowledge_chunk").fetchone()[0] == 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            raw.execute("TRUNCATE knowledge_chunk")


def test_a_selector_without_the_tenant_filter_is_caught_by_row_level_security(two_tenants, monkeypatch):
    """Break the chatbot and document selectors on purpose (no tenant filter): the API still
    returns only the caller's rows, because PostgreSQL filters them. The same broken query as the
    owner (who bypasses row-level security) shows what would have leaked."""
    from knowledge import apis as knowledge_apis
    from knowledge.models import Document
    from tenants import apis as tenant_apis
    from tenants.errors import NotFound
    from tenants.models import Chatbot

    mine, theirs, secrets = two_tenants
    monkeypatch.setattr(tenant_apis, "chatbot_list", lambda **kw: Chatbot.objects.all().order_by("name"))

    def document_get_without_tenant(*, tenant, document_id, api_key=None):
        document = Document.objects.select_related("chatbot").filter(pk=int(document_id)).first()
        if document is None:
            raise NotFound("Document not found.")
        return document

    monkeypatch.setattr(knowledge_apis, "document_get", document_get_without_tenant)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {mine.api_key}")
    listed = client.get("/api/chatbots").json()["chatbots"]
    assert [c["id"] for c in listed] == [mine.chatbot.pk]
    their_document = secrets[theirs.tenant.pk][1]
    response = client.get(f"/api/documents/{their_document.pk}")
    assert response.status_code == 404, response.content  # RLS hid it
    assert secrets[theirs.tenant.pk][0].encode() not in response.content

    # What the broken selector asks for, read the way the tests read (across tenants): both.
    assert set(Chatbot.objects.values_list("tenant_id", flat=True)) == {mine.tenant.pk, theirs.tenant.pk}
    # And the app role cannot switch row-level security off to get at them.
    with pytest.raises(Exception, match="row-level security"), no_tenant_context(), transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL row_security = off")
            cursor.execute("SELECT count(*) FROM tenants_chatbot")


def test_the_tenant_setting_does_not_outlive_the_request(two_tenants):
    mine, _, _ = two_tenants
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {mine.api_key}")
    assert client.get("/api/chatbots").status_code == 200
    with no_tenant_context(), connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('app.tenant_id', true), count(*) FROM tenants_chatbot")
        setting, count = cursor.fetchone()
    assert (setting or "") == "" and count == 0


def _their_ids(theirs, secrets) -> dict:
    from knowledge.models import Chunk, Document
    from search.models import SearchLog
    from tenants.models import ApiKey

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {theirs.api_key}")
    found = client.post("/api/search", {"query": "vault code", "chatbot_id": theirs.chatbot.pk}, format="json")
    assert found.status_code == 200
    return {
        "chatbot": [theirs.chatbot.pk],
        "document": list(Document.objects.filter(tenant=theirs.tenant).values_list("pk", flat=True)),
        "chunk": list(Chunk.objects.filter(tenant=theirs.tenant).values_list("pk", flat=True)),
        "key": list(ApiKey.objects.filter(tenant=theirs.tenant).values_list("pk", flat=True)),
        "query": [str(q) for q in SearchLog.objects.filter(tenant=theirs.tenant).values_list("query_id", flat=True)],
        "tenant": [theirs.tenant.pk],
    }


def _api_requests(ids: dict, pick, *, own_chatbot: int) -> list:
    upload = lambda: {"file": make_upload("x.txt", "hello"), "chatbot_id": pick("chatbot")}  # noqa: E731
    return [
        ("get", lambda: "/api/chatbots", None, None),
        ("post", lambda: "/api/upload-training-data", upload, "multipart"),
        ("get", lambda: f"/api/training-data/{pick('chatbot')}", None, None),
        ("get", lambda: f"/api/documents/{pick('document')}", None, None),
        ("delete", lambda: f"/api/documents/{pick('document')}", None, None),
        ("get", lambda: f"/api/documents/{pick('document')}/status", None, None),
        ("post", lambda: f"/api/documents/{pick('document')}/reprocess", None, None),
        ("post", lambda: "/api/search", lambda: {"query": "vault code", "chatbot_id": pick("chatbot")}, "json"),
        (
            "post",
            lambda: "/api/search",
            lambda: {"query": "vault code", "chatbot_id": own_chatbot, "filters": {"document_ids": [pick("document")]}},
            "json",
        ),
        ("post", lambda: f"/api/search/hybrid/{pick('chatbot')}", lambda: {"query": "vault code"}, "json"),
        ("get", lambda: f"/api/search/analytics/{pick('chatbot')}", None, None),
        ("get", lambda: f"/api/search/logs/{pick('chatbot')}.csv", None, None),
        (
            "post",
            lambda: f"/api/search/{pick('query')}/feedback",
            lambda: {"helpful": False, "chunk_id": pick("chunk")},
            "json",
        ),
    ]


def _dashboard_requests(pick) -> list:
    return [
        ("get", lambda: "/", None),
        ("get", lambda: "/keys/", None),
        ("get", lambda: "/audit/", None),
        ("post", lambda: "/tenant/switch", lambda: {"tenant_id": pick("tenant")}),
        ("post", lambda: f"/keys/{pick('key')}/revoke", None),
        ("post", lambda: f"/keys/{pick('key')}/rotate", None),
        ("get", lambda: f"/chatbots/{pick('chatbot')}/", None),
        ("post", lambda: f"/chatbots/{pick('chatbot')}/upload", lambda: {"files": make_upload("y.txt", "hi")}),
        ("get", lambda: f"/chatbots/{pick('chatbot')}/search/?q=vault+code", None),
        ("get", lambda: f"/chatbots/{pick('chatbot')}/search/analytics", None),
        ("get", lambda: f"/chatbots/{pick('chatbot')}/search/export.csv", None),
        ("post", lambda: f"/chatbots/{pick('chatbot')}/faq", lambda: {"question": "q?", "answer": "a"}),
        ("get", lambda: f"/documents/{pick('document')}/", None),
        ("post", lambda: f"/documents/{pick('document')}/reprocess", None),
        ("post", lambda: f"/documents/{pick('document')}/delete", None),
        ("get", lambda: f"/keys/{pick('key')}/revoke", None),
    ]


def test_randomized_requests_with_one_tenants_credentials_and_the_others_ids(two_tenants, client, run_jobs, settings):
    """2,000 requests over every API endpoint and dashboard page, as tenant A (API key with
    upload scope, and the owner's session) naming tenant B's chatbots, documents, chunks, keys,
    searches and tenant: no 5xx, nothing of B's in any answer, nothing of B's changed."""
    from django.contrib.auth import get_user_model

    from knowledge.models import Document
    from tenants.models import ApiKey

    settings.API_RATE_LIMITS = {"standard": 10**6}
    mine, theirs, secrets = two_tenants
    their_marker = secrets[theirs.tenant.pk][0]
    ids = _their_ids(theirs, secrets)
    before = {
        "documents": sorted(Document.objects.filter(tenant=theirs.tenant).values_list("pk", "status", "title")),
        "keys": sorted(ApiKey.objects.filter(tenant=theirs.tenant).values_list("pk", "revoked_at", "expires_at")),
    }
    rng = random.Random(20261125)

    def pick(kind: str):
        return rng.choice(ids[kind])

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {mine.api_key}")
    client.force_login(get_user_model().objects.get(username=mine.username))
    api_requests = _api_requests(ids, pick, own_chatbot=mine.chatbot.pk)
    dashboard_requests = _dashboard_requests(pick)
    statuses: dict[int, int] = {}
    with run_jobs():
        for _ in range(2000):
            if rng.random() < 0.55:
                method, url, body, fmt = rng.choice(api_requests)
                kwargs = {"format": fmt} if body else {}
                response = getattr(api, method)(url(), body() if body else None, **kwargs)
            else:
                method, url, body = rng.choice(dashboard_requests)
                response = getattr(client, method)(url(), body() if body else None)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code < 500, (url(), response.content[:500])
            content = b"".join(response.streaming_content) if response.streaming else response.content
            assert their_marker.encode() not in content, url()
            assert theirs.tenant.name.encode() not in content, url()
    after = {
        "documents": sorted(Document.objects.filter(tenant=theirs.tenant).values_list("pk", "status", "title")),
        "keys": sorted(ApiKey.objects.filter(tenant=theirs.tenant).values_list("pk", "revoked_at", "expires_at")),
    }
    assert after == before
    assert statuses.get(404, 0) > 500, statuses  # their ids really were refused, not skipped
    # and the same clients do reach their own rows (the test is not blind)
    own = api.get(f"/api/documents/{secrets[mine.tenant.pk][1].pk}")
    assert own.status_code == 200 and secrets[mine.tenant.pk][0] in own.content.decode()


def test_staff_work_across_tenants_only_in_the_admin_and_it_is_audited(two_tenants, client):
    from django.contrib.auth import get_user_model

    from tenants.models import AuditEvent

    mine, theirs, secrets = two_tenants
    staff = get_user_model().objects.create_user("staff-iso", password="pw-staff-123", is_staff=True, is_superuser=True)
    client.force_login(staff)
    listing = client.get("/admin/knowledge/document/").content.decode()
    assert secrets[mine.tenant.pk][0] in listing and secrets[theirs.tenant.pk][0] in listing
    their_document = secrets[theirs.tenant.pk][1]
    assert client.get(f"/admin/knowledge/document/{their_document.pk}/change/").status_code == 200
    assert AuditEvent.objects.filter(tenant_id=theirs.tenant.pk, action="staff_access", actor="staff-iso").exists()
    # outside the admin the same person is an ordinary user with no tenant: nothing
    assert client.get(f"/documents/{their_document.pk}/").status_code == 404


def test_database_roles_prints_the_setup_for_an_external_server(db):
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("database_roles", "--database", "bots", stdout=out)
    sql = out.getvalue()
    assert "CREATE ROLE chatbot_app LOGIN NOSUPERUSER NOBYPASSRLS" in sql
    assert "CREATE ROLE chatbot_owner LOGIN NOSUPERUSER BYPASSRLS" in sql
    assert 'ALTER DATABASE "bots" OWNER TO chatbot_owner' in sql and "LEAKPROOF" in sql
