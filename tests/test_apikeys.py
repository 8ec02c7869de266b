"""API key scopes (search, read, write: least privilege) and rotation, through the API and the
dashboard. Ingestion runs eagerly in-process."""

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from tenants.models import ApiKey
from tests.conftest import SAMPLE_FAQ_CSV, as_tenant, ingest, make_upload


def _client(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client


@pytest.fixture
def owner(client, bundle):
    assert client.login(username=bundle.username, password=bundle.password)
    return client


def _every_operation(bundle, document_id, query_id):
    """(scope it needs, method, path, body, format) for every API operation."""
    upload = {"file": make_upload("more.txt", "More text about returns."), "chatbot_id": bundle.chatbot.pk}
    return [
        ("search", "post", "/api/search", {"query": "How can I pay?", "chatbot_id": bundle.chatbot.pk}, "json"),
        ("search", "get", f"/api/search/hybrid/{bundle.chatbot.pk}?q=pay", None, None),
        ("search", "post", f"/api/search/{query_id}/feedback", {"helpful": True}, "json"),
        ("read", "get", "/api/chatbots", None, None),
        ("read", "get", f"/api/training-data/{bundle.chatbot.pk}", None, None),
        ("read", "get", f"/api/documents/{document_id}", None, None),
        ("read", "get", f"/api/documents/{document_id}/status", None, None),
        ("read", "get", f"/api/search/analytics/{bundle.chatbot.pk}", None, None),
        ("read", "get", f"/api/search/logs/{bundle.chatbot.pk}.csv", None, None),
        ("write", "post", "/api/upload-training-data", upload, "multipart"),
        ("write", "post", f"/api/documents/{document_id}/reprocess", None, None),
        ("write", "delete", f"/api/documents/{document_id}", None, None),
    ]


@pytest.mark.parametrize("scopes", [["search"], ["read"], ["write"], ["search", "read"], ["search", "read", "write"]])
def test_each_scope_allows_exactly_its_operations(bundle, scopes, run_jobs):
    """A search key (what a public chat widget holds) searches and sends feedback, nothing else:
    no chunk text, no document list, no end users' queries, no analytics, no writes. Reading
    needs ``read``, changing content ``write`` (a write key may follow its upload's status)."""
    from tenants.services import api_key_create

    document = ingest(bundle, make_upload("faq.csv", SAMPLE_FAQ_CSV), content_type="faq")
    with as_tenant(bundle):
        key = _client(api_key_create(tenant=bundle.tenant, name="k", scopes=scopes).raw_key)
    query_id = (
        _client(bundle.api_key)
        .post("/api/search", {"query": "How can I pay?", "chatbot_id": bundle.chatbot.pk}, format="json")
        .json()["query_id"]
    )
    for needed, method, path, body, fmt in _every_operation(bundle, document.pk, query_id):
        with run_jobs():
            response = getattr(key, method)(path, body, format=fmt) if body else getattr(key, method)(path)
        allowed = needed in scopes or (path.endswith("/status") and "write" in scopes)
        if allowed:
            assert response.status_code < 400, (scopes, path, response.content[:300])
        else:
            assert response.status_code == 403, (scopes, path, response.status_code)
            message = response.json()["error"]["message"]
            assert f"needs the '{needed}'" in message and "API keys page" in message, message
            assert b"Q: How" not in response.content  # nothing of the content in a refusal


def test_a_search_key_on_the_fast_path_and_a_key_without_search_off_it(bundle, settings):
    """Cached searches are answered in front of Django: a key without the search scope is refused
    there too (the fast path's lookup requires it; the full path says why)."""
    from tenants.services import api_key_create

    ingest(bundle, make_upload("faq.csv", SAMPLE_FAQ_CSV), content_type="faq")
    with as_tenant(bundle):
        reader = _client(api_key_create(tenant=bundle.tenant, name="reader", scopes=["read"]).raw_key)
        widget = _client(api_key_create(tenant=bundle.tenant, name="widget").raw_key)  # search only by default
    body = {"query": "How can I pay?", "chatbot_id": bundle.chatbot.pk}
    assert widget.post("/api/search", body, format="json").status_code == 200
    cached = widget.post("/api/search", body, format="json")
    assert cached.status_code == 200 and cached.json()["cached"] is True and "X-Frame-Options" not in cached
    refused = reader.post("/api/search", body, format="json")
    assert refused.status_code == 403 and "X-Frame-Options" in refused  # the full path answered


def test_unknown_or_no_scopes_are_refused(bundle):
    from tenants.errors import DomainError
    from tenants.services import api_key_create

    with as_tenant(bundle):
        with pytest.raises(DomainError, match="Unknown scope 'admin'"):
            api_key_create(tenant=bundle.tenant, name="x", scopes=["admin"])
        with pytest.raises(DomainError, match="at least one scope"):
            api_key_create(tenant=bundle.tenant, name="x", scopes=[])


def test_the_schema_says_which_scope_each_operation_needs(api):
    schema = api.get("/api/schema/?format=json").json()
    search = schema["paths"]["/api/search"]["post"]
    assert search["x-required-scopes"] == ["search"] and "`search` scope" in search["description"]
    assert schema["paths"]["/api/documents/{document_id}"]["get"]["x-required-scopes"] == ["read"]
    assert schema["paths"]["/api/documents/{document_id}"]["delete"]["x-required-scopes"] == ["write"]
    assert schema["paths"]["/api/documents/{document_id}/status"]["get"]["x-required-scopes"] == ["read", "write"]


def test_rotation_overlaps_for_the_grace_period_then_the_old_key_fails(bundle, settings):
    from tenants.services import api_key_rotate

    settings.API_KEY_ROTATION_GRACE_SECONDS = 3600
    with as_tenant(bundle):
        old = ApiKey.objects.get(prefix=bundle.api_key[:12])
        issued, old = api_key_rotate(tenant=bundle.tenant, api_key_id=old.pk)
    assert issued.api_key.scopes == old.scopes and issued.api_key.chatbot_id == old.chatbot_id
    assert old.revoked_at is None and old.expires_at <= timezone.now() + timedelta(seconds=3600)
    url = f"/api/training-data/{bundle.chatbot.pk}"
    assert _client(issued.raw_key).get(url).status_code == 200
    assert _client(bundle.api_key).get(url).status_code == 200  # still inside the overlap
    with as_tenant(bundle):
        ApiKey.objects.filter(pk=old.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert _client(bundle.api_key).get(url).status_code == 401
    assert _client(issued.raw_key).get(url).status_code == 200


def test_rotation_without_grace_stops_the_old_key_at_once(bundle):
    from tenants.services import api_key_rotate

    with as_tenant(bundle):
        old = ApiKey.objects.get(prefix=bundle.api_key[:12])
        issued, old = api_key_rotate(tenant=bundle.tenant, api_key_id=old.pk, grace_seconds=0)
    body = {"query": "hello", "chatbot_id": bundle.chatbot.pk}
    assert _client(bundle.api_key).post("/api/search", body, format="json").status_code == 401
    assert _client(issued.raw_key).post("/api/search", body, format="json").status_code == 200


def test_dashboard_creates_scoped_keys_and_rotates_them(owner, bundle):
    form = owner.get("/keys/").content.decode()
    assert 'name="scopes" value="search" checked' in form and 'value="read">' in form  # search only by default
    assert "all a chat widget needs" in form and "read documents and their chunks" in form  # what each allows
    page = owner.post("/keys/", {"name": "widget", "scopes": ["search"]}).content.decode()
    owner.post("/keys/", {"name": "sync", "scopes": ["read", "write"]})
    with as_tenant(bundle):
        key = ApiKey.objects.get(name="widget")
        assert ApiKey.objects.get(name="sync").scopes == ["read", "write"]
    assert key.scopes == ["search"] and "<td>search</td>" in page
    refused = owner.post("/keys/", {"name": "nothing"}).content.decode()
    assert "Give the key at least one scope" in refused
    rotated = owner.post(f"/keys/{key.pk}/rotate")
    assert rotated.status_code == 200
    text = rotated.content.decode()
    new_raw = text.split('id="new-key">')[1].split("<")[0]
    with as_tenant(bundle):
        new = ApiKey.objects.filter(name="widget").exclude(pk=key.pk).get()
        key.refresh_from_db()
    assert new_raw.startswith(new.prefix) and new.scopes == ["search"]
    assert "rotated: it stops working at" in text
    assert key.expires_at is not None and key.revoked_at is None
