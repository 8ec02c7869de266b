"""What clients see when PostgreSQL or Redis goes away (the full drills with real restarts are
bench/faults.py). Ingestion runs eagerly in-process."""

import pytest
from django.contrib.auth import get_user_model
from django.db import OperationalError
from django.test import Client
from rest_framework.test import APIClient

from tests.conftest import as_tenant, make_upload


def _database_down(*args, **kwargs):
    raise OperationalError('connection to server on socket "/var/pg/.s.PGSQL.5432" failed: Connection refused')


def test_an_unavailable_database_is_a_json_503_with_retry_after_not_a_500(bundle, monkeypatch):
    monkeypatch.setattr("tenants.apis.chatbot_list", _database_down)
    api = APIClient(raise_request_exception=False)
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {bundle.api_key}")
    response = api.get("/api/chatbots")
    assert response.status_code == 503 and response["Retry-After"] == "5"
    assert response.json()["error"]["code"] == "unavailable"


def test_the_dashboard_says_unavailable_too_and_other_errors_stay_500(bundle, monkeypatch):
    client = Client(raise_request_exception=False)
    client.force_login(get_user_model().objects.get(username=bundle.username))
    monkeypatch.setattr("tenants.views.chatbot_list", _database_down)
    page = client.get("/keys/")
    assert page.status_code == 503 and "Temporarily unavailable" in page.content.decode()
    monkeypatch.setattr("tenants.apis.chatbot_list", lambda **kw: 1 / 0)
    api = APIClient(raise_request_exception=False)
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {bundle.api_key}")
    broken = api.get("/api/chatbots")
    assert broken.status_code == 500 and broken.json()["error"]["code"] == "server_error"


@pytest.mark.django_db(transaction=True, databases=["default", "maintenance"])  # the sweeper's connection
def test_an_upload_while_the_broker_is_down_is_kept_queued_for_the_sweeper(bundle, monkeypatch, run_jobs):
    """Redis (the Celery broker) down: the upload is accepted and stays queued; the sweeper sends
    it again later (here called directly) and it is processed."""
    from kombu.exceptions import OperationalError as BrokerDown

    from knowledge.models import Document
    from knowledge.services import ingestion_jobs_sweep
    from knowledge.tasks import ingestion_job_run_task

    def broker_down(**kwargs):
        raise BrokerDown("Error 111 connecting to redis. Connection refused.")

    monkeypatch.setattr(ingestion_job_run_task, "delay", broker_down)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {bundle.api_key}")
    with run_jobs():
        response = api.post(
            "/api/upload-training-data",
            {
                "file": make_upload("hours.txt", "We answer the phone from nine to five."),
                "chatbot_id": bundle.chatbot.pk,
            },
            format="multipart",
        )
    assert response.status_code == 202
    with as_tenant(bundle):
        document = Document.objects.get(pk=response.json()["document_id"])
        assert document.status == "queued"
        document.jobs.update(updated_at=document.created_at.replace(year=2000))  # as if long waiting
    monkeypatch.undo()
    with run_jobs():
        assert ingestion_jobs_sweep()["requeued_lost"] == 1
    with as_tenant(bundle):
        document.refresh_from_db()
    assert document.status == "ready"


@pytest.mark.parametrize("path", ["/api/search"])
def test_the_search_fast_path_hands_a_database_error_to_the_503_answer(bundle, monkeypatch, path):
    from search import access

    access.access_cache.clear()
    monkeypatch.setattr(access.access_cache, "query", _database_down)  # the fast path's access read
    monkeypatch.setattr("tenants.authentication.api_key_find_active", _database_down)  # the full path's
    api = APIClient(raise_request_exception=False)
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {bundle.api_key}")
    response = api.post(path, {"query": "hours", "chatbot_id": bundle.chatbot.pk}, format="json")
    assert response.status_code == 503 and response["Retry-After"] == "5", response.content


def test_unknown_api_paths_answer_json_and_the_schema_documents_errors(bundle):
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {bundle.api_key}")
    missing = api.get("/api/documents/not-a-number")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    schema = api.get("/api/schema/?format=json").json()
    search = schema["paths"]["/api/search"]["post"]["responses"]
    assert {"200", "400", "401", "429", "503"} <= set(search)
    assert search["503"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
