"""The REST API. Celery is eager: uploads run the ingestion task function in-process once the
request's transaction commits (captured on-commit callbacks)."""

import json

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from knowledge.models import Chunk, Document
from tests.conftest import LONG_TEXT, SAMPLE_FAQ_CSV, as_tenant, make_upload

pytestmark = pytest.mark.django_db


def upload(api, run_jobs, chatbot_id, name="faq.csv", content=SAMPLE_FAQ_CSV, **fields):
    with run_jobs():
        return api.post(
            "/api/upload-training-data",
            {"file": make_upload(name, content), "chatbot_id": chatbot_id, **fields},
            format="multipart",
        )


def test_upload_returns_202_and_the_document_becomes_ready(api, bundle, run_jobs):
    response = upload(
        api,
        run_jobs,
        bundle.chatbot.pk,
        content_type="faq",
        title="Store FAQ",
        category="shop",
        user_id="u-42",
        metadata=json.dumps({"locale": "en"}),
    )
    assert response.status_code == 202, response.json()
    body = response.json()
    assert body["status"] == "queued" and body["duplicate"] is False
    assert body["status_url"].endswith(f"/api/documents/{body['document_id']}/status")
    status = api.get(body["status_url"]).json()
    assert (status["status"], status["progress"], status["chunk_count"]) == ("ready", 100, 3)
    with as_tenant(bundle):
        document = Document.objects.get(pk=body["document_id"])
    assert (document.title, document.category, document.source_user_id, document.metadata) == (
        "Store FAQ",
        "shop",
        "u-42",
        {"locale": "en"},
    )


def test_training_data_list(api, bundle, run_jobs):
    upload(api, run_jobs, bundle.chatbot.pk, content_type="faq")
    upload(api, run_jobs, bundle.chatbot.pk, name="x.pdf", content=b"%PDF-1.4 broken")
    body = api.get(f"/api/training-data/{bundle.chatbot.pk}").json()
    assert body["totals"] == {
        "documents": 2,
        "chunks": 3,
        "bytes": len(SAMPLE_FAQ_CSV) + 15,
        "queued": 0,
        "processing": 0,
        "ready": 1,
        "failed": 1,
    }
    failed, ready = body["documents"]
    assert failed["status"] == "failed" and failed["error"].startswith("The PDF is corrupt")
    assert (ready["title"], ready["content_type"], ready["chunk_count"], ready["progress"]) == (
        "faq.csv",
        "faq",
        3,
        100,
    )
    assert ready["quality"]["language"] == "en"
    only_failed = api.get(f"/api/training-data/{bundle.chatbot.pk}?status=failed").json()["documents"]
    assert [d["id"] for d in only_failed] == [failed["id"]]
    bad = api.get(f"/api/training-data/{bundle.chatbot.pk}?status=nope")
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "status"


def test_document_detail_pages_through_chunks(api, bundle, run_jobs):
    document_id = upload(api, run_jobs, bundle.chatbot.pk, name="long.txt", content=LONG_TEXT).json()["document_id"]
    with as_tenant(bundle):
        total = Chunk.objects.filter(document_id=document_id).count()
    assert total > 10
    first = api.get(f"/api/documents/{document_id}?page_size=10").json()
    assert first["chunks"]["total"] == total and first["chunks"]["pages"] == -(-total // 10)
    assert [c["position"] for c in first["chunks"]["results"]] == list(range(10))
    second = api.get(f"/api/documents/{document_id}?page_size=10&page=2").json()
    assert second["chunks"]["results"][0]["position"] == 10
    assert api.get(f"/api/documents/{document_id}?page_size=0").status_code == 400


def test_reprocess_and_delete(api, bundle, run_jobs):
    document_id = upload(api, run_jobs, bundle.chatbot.pk).json()["document_id"]
    with run_jobs():
        response = api.post(f"/api/documents/{document_id}/reprocess")
    assert response.status_code == 202
    assert api.get(f"/api/documents/{document_id}/status").json()["status"] == "ready"
    with run_jobs():
        assert api.delete(f"/api/documents/{document_id}").status_code == 204
    assert api.get(f"/api/documents/{document_id}").status_code == 404
    with as_tenant(bundle):
        assert not Chunk.objects.exists() and not Document.objects.exists()


def test_duplicate_upload_answers_200_with_the_existing_document(api, bundle, run_jobs):
    first = upload(api, run_jobs, bundle.chatbot.pk).json()
    second = upload(api, run_jobs, bundle.chatbot.pk, name="again.csv")
    assert second.status_code == 200
    assert second.json()["document_id"] == first["document_id"] and second.json()["duplicate"] is True
    with as_tenant(bundle):
        assert Document.objects.count() == 1


@pytest.mark.parametrize(
    "fields,field",
    [
        ({"chatbot_id": "abc"}, "chatbot_id"),
        ({"content_type": "poem"}, "content_type"),
        ({"metadata": "[1, 2]"}, "metadata"),
        ({"metadata": "{not json"}, "metadata"),
        ({"replace": "maybe"}, "replace"),
    ],
)
def test_bad_parameters_name_the_field(api, bundle, fields, field):
    data = {"file": make_upload("a.txt", "hello there, this is a test"), "chatbot_id": bundle.chatbot.pk, **fields}
    response = api.post("/api/upload-training-data", data, format="multipart")
    assert response.status_code == 400
    assert response.json()["error"]["field"] == field
    assert response.json()["error"]["message"].startswith(field)
    with as_tenant(bundle):
        assert not Document.objects.exists()


def test_missing_file(api, bundle):
    response = api.post("/api/upload-training-data", {"chatbot_id": bundle.chatbot.pk}, format="multipart")
    assert response.status_code == 400 and response.json()["error"]["field"] == "file"


def test_over_the_limit_is_413_before_anything_is_stored(api, bundle, settings):
    settings.UPLOAD_MAX_BYTES = 1000
    big = make_upload("big.txt", "word " * 20_000)
    response = api.post("/api/upload-training-data", {"file": big, "chatbot_id": bundle.chatbot.pk}, format="multipart")
    assert response.status_code == 413
    assert response.json()["error"] == {
        "code": "too_large",
        "message": "The upload is larger than the 0 MB limit.",
        "field": "file",
    }
    with as_tenant(bundle):
        assert not Document.objects.exists()
    # A file just over the limit inside a small request is refused by the service, also with 413
    settings.UPLOAD_MAX_BYTES = 60_000
    response = api.post(
        "/api/upload-training-data",
        {"file": make_upload("big.txt", "x" * 70_000), "chatbot_id": bundle.chatbot.pk},
        format="multipart",
    )
    assert response.status_code == 413
    with as_tenant(bundle):
        assert not Document.objects.exists()


def test_another_tenants_chatbot_and_documents_are_404(api, bundle, other_bundle, run_jobs):
    other_api = APIClient()
    other_api.credentials(HTTP_AUTHORIZATION=f"Bearer {other_bundle.api_key}")
    their_doc = upload(other_api, run_jobs, other_bundle.chatbot.pk).json()["document_id"]
    assert upload(api, run_jobs, other_bundle.chatbot.pk).status_code == 404
    for method, url in [
        ("get", f"/api/training-data/{other_bundle.chatbot.pk}"),
        ("get", f"/api/documents/{their_doc}"),
        ("get", f"/api/documents/{their_doc}/status"),
        ("post", f"/api/documents/{their_doc}/reprocess"),
        ("delete", f"/api/documents/{their_doc}"),
        ("get", "/api/training-data/999999"),
        ("get", "/api/documents/999999"),
    ]:
        response = getattr(api, method)(url)
        assert response.status_code == 404, url
        assert response.json()["error"]["code"] == "not_found"
    with as_tenant(other_bundle):
        assert Document.objects.get(pk=their_doc).status == "ready"
    assert [c["id"] for c in api.get("/api/chatbots").json()["chatbots"]] == [bundle.chatbot.pk]


def test_api_keys(bundle, run_jobs):
    from tenants.services import api_key_create, api_key_revoke, chatbot_create

    with as_tenant(bundle):
        second_bot = chatbot_create(tenant=bundle.tenant, name="Second bot")
        limited = api_key_create(tenant=bundle.tenant, name="only second", chatbot=second_bot, scopes=["read"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {limited.raw_key}")
    assert client.get(f"/api/training-data/{second_bot.pk}").status_code == 200
    assert client.get(f"/api/training-data/{bundle.chatbot.pk}").status_code == 404
    assert limited.api_key.key_hash != limited.raw_key and limited.raw_key.startswith(limited.api_key.prefix)
    with as_tenant(bundle):
        limited.api_key.refresh_from_db()
        assert limited.api_key.last_used_at is not None
        api_key_revoke(tenant=bundle.tenant, api_key_id=limited.api_key.pk)
    response = client.get(f"/api/training-data/{second_bot.pk}")
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "Invalid, revoked or expired API key."
    anonymous = APIClient()
    assert anonymous.get(f"/api/training-data/{second_bot.pk}").status_code in (401, 403)
    assert anonymous.get(f"/api/training-data/{second_bot.pk}?api_key={limited.raw_key}").status_code in (401, 403)


def test_expired_key_fails(bundle):
    from datetime import timedelta

    from django.utils import timezone

    from tenants.services import api_key_create

    with as_tenant(bundle):
        expired = api_key_create(tenant=bundle.tenant, name="old", expires_at=timezone.now() - timedelta(minutes=1))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {expired.raw_key}")
    assert client.get("/api/chatbots").status_code == 401


def test_viewer_session_can_read_but_not_write(bundle, run_jobs):
    from django.contrib.auth import get_user_model

    from tenants.services import member_add

    viewer = get_user_model().objects.create_user("viewer", password="pw-viewer-1")
    with as_tenant(bundle):
        member_add(tenant=bundle.tenant, user=viewer, role="viewer")
    client = APIClient()
    client.force_login(viewer)
    assert client.get(f"/api/training-data/{bundle.chatbot.pk}").status_code == 200
    response = client.post(
        "/api/upload-training-data",
        {"file": make_upload("a.txt", "some words here"), "chatbot_id": bundle.chatbot.pk},
        format="multipart",
    )
    assert response.status_code == 403
    with as_tenant(bundle):
        assert not Document.objects.exists()


def test_openapi_schema_generates_without_warnings(api, capsys):
    from django.core.management import call_command

    call_command("spectacular", "--fail-on-warn", "--file", "/dev/null")
    schema = api.get("/api/schema/?format=json").json()
    for path in [
        "/api/upload-training-data",
        "/api/training-data/{chatbot_id}",
        "/api/documents/{document_id}",
        "/api/documents/{document_id}/reprocess",
        "/api/documents/{document_id}/status",
        "/api/search",
        "/api/search/hybrid/{chatbot_id}",
        "/api/search/{query_id}/feedback",
        "/api/search/analytics/{chatbot_id}",
    ]:
        assert path in schema["paths"], path
    assert APIClient().get(reverse("api-docs")).status_code == 200


def test_health_and_readiness(client, monkeypatch):
    assert client.get("/healthz").json() == {"status": "ok"}
    from monitoring import views

    monkeypatch.setattr(views, "_check_worker", lambda: "no live Celery worker answered")
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["down"] == ["worker"]
    assert response.json()["checks"]["database"] == "ok" and response.json()["checks"]["redis"] == "ok"
    monkeypatch.setattr("django.conf.settings.REDIS_URL", "redis://127.0.0.1:1/0")
    body = client.get("/readyz").json()
    assert body["down"] == ["redis", "worker"]


@pytest.mark.django_db(databases=["default", "maintenance"])  # the gauges read every tenant's counts
def test_metrics_endpoint(client):
    response = client.get("/metrics")
    assert response.status_code == 200 and b"django_http_requests" in response.content
