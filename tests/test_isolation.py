"""Tenant isolation enforced by PostgreSQL (row-level security, tenants/rls.py).

The tests connect as the app role, like the application; cross-tenant work goes through the
maintenance role's own connection. Ingestion runs eagerly in-process. Requests go through the
Django test client (every middleware, so each starts with no tenant).
"""

from __future__ import annotations

import random
import uuid

import psycopg
import pytest
from django.db import connection, transaction
from rest_framework.test import APIClient

from tenants import dbroles
from tenants.scoping import no_tenant_context, tenant_context, user_context
from tests.conftest import SAMPLE_FAQ_CSV, across_tenants, as_tenant, ingest, make_upload

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


def test_every_tenant_table_forces_row_level_security_with_its_policies(db):
    from tenants.rls import policies_for

    tables = _tenant_tables()
    assert TENANT_TABLES_MIN <= set(tables)
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,
                   array_agg(p.polname ORDER BY p.polname) FILTER (WHERE p.polname IS NOT NULL),
                   bool_or(pg_get_expr(p.polqual, p.polrelid) LIKE '%%cross_tenant%%'
                           OR pg_get_expr(p.polwithcheck, p.polrelid) LIKE '%%cross_tenant%%')
            FROM pg_class c LEFT JOIN pg_policy p ON p.polrelid = c.oid
            WHERE c.relname = ANY(%s) GROUP BY 1, 2, 3
            """,
            [tables],
        )
        state = {row[0]: tuple(row[1:]) for row in cursor.fetchall()}
    for table in tables:
        names = sorted(p.name for p in policies_for(table, (dbroles.MAINTENANCE_ROLE,)))
        assert state[table] == (True, True, names, False), (table, state[table])  # no setting opens every tenant
    from django.apps import apps

    from tenants.scoping import TenantOwned

    owned = {m._meta.db_table for m in apps.get_models() if issubclass(m, TenantOwned)}
    assert owned <= set(tables)


def test_only_the_maintenance_role_is_named_for_every_tenant_and_the_app_role_cannot_become_it(db):
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT DISTINCT r.rolname FROM pg_policy p CROSS JOIN unnest(p.polroles) AS role(oid) "
            "JOIN pg_roles r ON r.oid = role.oid WHERE p.polname = 'maintenance'"
        )
        named = {row[0] for row in cursor.fetchall()}
        assert dbroles.MAINTENANCE_ROLE in named and dbroles.APP_ROLE not in named
        cursor.execute("SELECT pg_has_role(current_user, %s, 'MEMBER')", [dbroles.MAINTENANCE_ROLE])
        assert cursor.fetchone()[0] is False
        role = dbroles.MAINTENANCE_ROLE
        for statement in (f"SET ROLE {role}", f"SET SESSION AUTHORIZATION {role}"):
            with pytest.raises(Exception, match="permission denied"), transaction.atomic():
                with connection.cursor() as c:
                    c.execute(statement)


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
    with as_tenant(mine):
        assert _count("knowledge_chunk") > 0 and _count("knowledge_chunkembedding") > 0
    with no_tenant_context():
        assert {t: _count(t) for t in tables} == dict.fromkeys(tables, 0)
        # the setting that once opened every tenant is only a label now
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT set_config('app.cross_tenant', 'injected', true)")
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

    # What the broken selector asks for exists: their chatbot and document, read as their tenant.
    with as_tenant(theirs):
        assert Chatbot.objects.filter(pk=theirs.chatbot.pk).exists()
        assert Document.objects.filter(pk=their_document.pk).exists()
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
    with as_tenant(theirs):
        return {
            "chatbot": [theirs.chatbot.pk],
            "document": list(Document.objects.filter(tenant=theirs.tenant).values_list("pk", flat=True)),
            "chunk": list(Chunk.objects.filter(tenant=theirs.tenant).values_list("pk", flat=True)),
            "key": list(ApiKey.objects.filter(tenant=theirs.tenant).values_list("pk", flat=True)),
            "query": [str(q) for q in SearchLog.objects.values_list("query_id", flat=True)],
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

    from knowledge.models import Chunk, Document
    from tenants.models import ApiKey

    settings.API_RATE_LIMITS = {"standard": 10**6}
    mine, theirs, secrets = two_tenants
    their_marker = secrets[theirs.tenant.pk][0]
    ids = _their_ids(theirs, secrets)

    def their_state() -> dict:
        with as_tenant(theirs):
            return {
                "documents": sorted(Document.objects.values_list("pk", "status", "title")),
                "chunks": Chunk.objects.count(),
                "keys": sorted(ApiKey.objects.values_list("pk", "revoked_at", "expires_at")),
            }

    before = their_state()
    assert before["documents"] and before["chunks"] and before["keys"]
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
    assert their_state() == before
    assert statuses.get(404, 0) > 500, statuses  # their ids really were refused, not skipped
    # and the same clients do reach their own rows (the test is not blind)
    own = api.get(f"/api/documents/{secrets[mine.tenant.pk][1].pk}")
    assert own.status_code == 200 and secrets[mine.tenant.pk][0] in own.content.decode()


@pytest.mark.django_db(transaction=True, databases=["default", "maintenance"])
def test_staff_work_across_tenants_only_in_the_admin_and_it_is_audited(two_tenants, client):
    """Staff in the admin read every tenant on the maintenance role's connection (committed rows:
    a transactional test); each list view and each object view is recorded for the tenants it
    showed."""
    from django.contrib.auth import get_user_model

    from tenants.models import AuditEvent

    mine, theirs, secrets = two_tenants
    staff = get_user_model().objects.create_user("staff-iso", password="pw-staff-123", is_staff=True, is_superuser=True)
    client.force_login(staff)
    listing = client.get("/admin/knowledge/document/").content.decode()
    assert secrets[mine.tenant.pk][0] in listing and secrets[theirs.tenant.pk][0] in listing
    their_document = secrets[theirs.tenant.pk][1]
    assert client.get(f"/admin/knowledge/document/{their_document.pk}/change/").status_code == 200
    with as_tenant(theirs):
        events = [e.target for e in AuditEvent.objects.filter(action="staff_access", actor="staff-iso")]
    assert f"knowledge.Document:{their_document.pk}" in events and "knowledge.Document" in events
    # outside the admin the same person is an ordinary user with no tenant: nothing
    assert client.get(f"/documents/{their_document.pk}/").status_code == 404


@pytest.mark.django_db(transaction=True, databases=["default", "maintenance"])
def test_the_maintenance_connection_sees_every_tenant_and_the_app_connection_one(two_tenants):
    from knowledge.models import Chunk
    from tenants.models import Tenant

    mine, theirs, secrets = two_tenants
    with across_tenants():
        tenants = set(Chunk.objects.values_list("tenant_id", flat=True))
        role = Tenant.objects.raw("SELECT id, current_user AS role FROM tenants_tenant LIMIT 1")[0].role
    assert tenants == {mine.tenant.pk, theirs.tenant.pk} and role == dbroles.MAINTENANCE_ROLE
    with as_tenant(mine):
        assert set(Chunk.objects.values_list("tenant_id", flat=True)) == {mine.tenant.pk}


def test_built_in_embedding_spaces_are_read_by_every_tenant_and_written_by_none(bundle):
    from knowledge.models import EmbeddingSpace
    from knowledge.services import chatbot_space_ensure_active

    with as_tenant(bundle):
        space = chatbot_space_ensure_active(chatbot=bundle.chatbot).space  # created by the owner's function
        assert space.tenant_id is None and EmbeddingSpace.objects.filter(pk=space.pk).exists()
        with connection.cursor() as cursor:  # invisible to UPDATE and DELETE
            cursor.execute("UPDATE knowledge_embeddingspace SET dimensions = 3 WHERE id = %s", [space.pk])
            assert cursor.rowcount == 0
            cursor.execute("DELETE FROM knowledge_embeddingspace WHERE id = %s", [space.pk])
            assert cursor.rowcount == 0
        with pytest.raises(Exception, match="row-level security"), transaction.atomic():
            EmbeddingSpace.objects.create(provider="local", model_name="evil", version="1", dimensions=3)
        own = EmbeddingSpace.objects.create(
            tenant=bundle.tenant, provider="local", model_name="all-MiniLM-L6-v2", version="tuned-1", dimensions=384
        )
    with as_tenant(bundle):
        assert EmbeddingSpace.objects.get(pk=space.pk).dimensions == 384
    with no_tenant_context():
        assert list(EmbeddingSpace.objects.values_list("pk", flat=True)) == [space.pk]  # not the tenant's own
    assert own.pk != space.pk


def test_audit_rows_are_added_only_for_the_current_tenant_or_the_signed_in_users(bundle, other_bundle):
    from django.contrib.auth import get_user_model

    def insert(tenant_id):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO tenants_auditevent (created_at, tenant_id, action, actor, api_key_prefix, target, "
                "user_agent, detail) VALUES (now(), %s, 'login', 'x', '', 'user:x', '', '{}')",
                [tenant_id],
            )

    with as_tenant(bundle):
        insert(bundle.tenant.pk)
        insert(None)  # a failed login naming nobody
        with pytest.raises(Exception, match="row-level security"):
            insert(other_bundle.tenant.pk)
    owner = get_user_model().objects.get(username=other_bundle.username)
    with user_context(owner.pk):  # a login by one of the other tenant's members is recorded there
        insert(other_bundle.tenant.pk)
        with pytest.raises(Exception, match="row-level security"):
            insert(bundle.tenant.pk)


def test_database_roles_prints_the_setup_for_an_external_server(db):
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("database_roles", "--database", "bots", stdout=out)
    sql = out.getvalue()
    assert "CREATE ROLE chatbot_app LOGIN NOSUPERUSER NOBYPASSRLS" in sql
    assert "CREATE ROLE chatbot_owner LOGIN NOSUPERUSER BYPASSRLS" in sql
    assert "CREATE ROLE chatbot_maintenance LOGIN NOSUPERUSER NOBYPASSRLS" in sql and "DATABASE_MAINTENANCE_URL" in sql
    assert 'ALTER DATABASE "bots" OWNER TO chatbot_owner' in sql and "LEAKPROOF" in sql
