"""/metrics: counters from every process (a real Celery worker's reach the web process through
prometheus_client's multiprocess files) and the state gauges read from the database."""

from __future__ import annotations

import re

import pytest
from django.test import Client

from tests.conftest import SAMPLE_FAQ_CSV, across_tenants, ingest, make_upload
from tests.test_worker_kill import wait_for
from tests.worker import celery_worker

TRANSACTIONAL = pytest.mark.django_db(transaction=True, databases=["default", "maintenance"])


def sample(text: str, name: str, **labels) -> float | None:
    """The value of one series in a Prometheus text exposition (None when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
        if all(found.get(key) == str(value) for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def scrape() -> str:
    response = Client().get("/metrics")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain")
    return response.content.decode()


@pytest.mark.worker
@TRANSACTIONAL
def test_a_celery_workers_task_counters_reach_metrics(bundle, worker_env):
    """A real worker process runs the task; the web process (this one) answers /metrics."""
    from knowledge.tasks import ingestion_jobs_sweep_task

    task = "knowledge.ingestion_jobs_sweep"
    before = sample(scrape(), "chatbot_tasks_total", task=task, outcome="success") or 0.0
    with celery_worker(worker_env):
        for _ in range(2):
            ingestion_jobs_sweep_task.delay()
        wait_for(
            lambda: (sample(scrape(), "chatbot_tasks_total", task=task, outcome="success") or 0) - before == 2,
            60,
            "the worker's task counter never reached /metrics",
        )
    text = scrape()
    assert sample(text, "chatbot_task_duration_seconds_count", task=task, outcome="success") >= 2


@TRANSACTIONAL
def test_state_gauges_match_the_database(bundle, other_bundle, settings):
    from knowledge.models import ChunkEmbedding, Document, EmbeddingSpace
    from monitoring.metrics import STATE

    settings.METRICS_GAUGES_TTL = 0
    STATE.forget()  # an earlier scrape in this process kept its figures for the default TTL
    ingest(bundle, make_upload("faq.csv", SAMPLE_FAQ_CSV), content_type="faq")
    ingest(other_bundle, make_upload("notes.txt", "Opening hours are nine to five on weekdays."))
    ingest(other_bundle, make_upload("broken.pdf", b"%PDF-1.4\n1 0 obj garbage"))  # fails: not a readable PDF
    text = scrape()
    with across_tenants():
        ready = Document.objects.filter(status="ready").count()
        failed = Document.objects.filter(status="failed").count()
        space = EmbeddingSpace.objects.get(pk=ChunkEmbedding.objects.values_list("space_id", flat=True).first())
        vectors = ChunkEmbedding.objects.filter(space=space).count()
    assert (ready, failed) == (2, 1)
    assert sample(text, "chatbot_documents", status="ready") == ready
    assert sample(text, "chatbot_documents", status="failed") == failed
    assert sample(text, "chatbot_vectors", space=space.key) == vectors
    assert sample(text, "chatbot_queue_depth", queue="training") is not None
    # bounded labels: no query text, no document or request ids
    assert not re.search(r'(query|document_id|request_id)="', text)
    # the web process's own counters are there too (django-prometheus, search)
    assert "django_http_requests_total_by_method" in text or "django_http_requests" in text


@TRANSACTIONAL
def test_metrics_can_require_a_bearer_token(settings):
    settings.METRICS_TOKEN = "s3cret-scrape-token"
    assert Client().get("/metrics").status_code == 401
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    answer = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-scrape-token")
    assert answer.status_code == 200 and b"chatbot_documents" in answer.content
