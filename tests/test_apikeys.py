"""API key scopes (search only vs search and upload) and rotation, through the API and the
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


def test_a_search_only_key_searches_but_cannot_change_content(bundle):
    from tenants.services import api_key_create

    document = ingest(bundle, make_upload("faq.csv", SAMPLE_FAQ_CSV), content_type="faq")
    with as_tenant(bundle):
        reader = _client(api_key_create(tenant=bundle.tenant, name="widget", scope="search").raw_key)
    search = reader.post("/api/search", {"query": "How can I pay?", "chatbot_id": bundle.chatbot.pk}, format="json")
    assert search.status_code == 200 and search.json()["results"]
    feedback = reader.post(f"/api/search/{search.json()['query_id']}/feedback", {"helpful": True}, format="json")
    assert feedback.status_code == 201
    assert reader.get(f"/api/training-data/{bundle.chatbot.pk}").status_code == 200
    upload = reader.post(
        "/api/upload-training-data",
        {"file": make_upload("more.txt", "More text."), "chatbot_id": bundle.chatbot.pk},
        format="multipart",
    )
    assert upload.status_code == 403 and "only search" in upload.json()["error"]["message"]
    assert reader.delete(f"/api/documents/{document.pk}").status_code == 403
    assert reader.post(f"/api/documents/{document.pk}/reprocess").status_code == 403
    writer = _client(bundle.api_key)  # the bootstrap key may upload
    assert writer.post(f"/api/documents/{document.pk}/reprocess").status_code == 202


def test_unknown_scope_is_refused(bundle):
    from tenants.errors import DomainError
    from tenants.services import api_key_create

    with pytest.raises(DomainError, match="Unknown scope"), as_tenant(bundle):
        api_key_create(tenant=bundle.tenant, name="x", scope="admin")


def test_rotation_overlaps_for_the_grace_period_then_the_old_key_fails(bundle, settings):
    from tenants.services import api_key_rotate

    settings.API_KEY_ROTATION_GRACE_SECONDS = 3600
    with as_tenant(bundle):
        old = ApiKey.objects.get(prefix=bundle.api_key[:12])
        issued, old = api_key_rotate(tenant=bundle.tenant, api_key_id=old.pk)
    assert issued.api_key.scope == old.scope and issued.api_key.chatbot_id == old.chatbot_id
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
    page = owner.post("/keys/", {"name": "widget", "scope": "search"}).content.decode()
    with as_tenant(bundle):
        key = ApiKey.objects.get(name="widget")
    assert key.scope == "search" and "search only" in page
    rotated = owner.post(f"/keys/{key.pk}/rotate")
    assert rotated.status_code == 200
    text = rotated.content.decode()
    new_raw = text.split('id="new-key">')[1].split("<")[0]
    with as_tenant(bundle):
        new = ApiKey.objects.filter(name="widget").exclude(pk=key.pk).get()
        key.refresh_from_db()
    assert new_raw.startswith(new.prefix) and new.scope == "search"
    assert "rotated: it stops working at" in text
    assert key.expires_at is not None and key.revoked_at is None
