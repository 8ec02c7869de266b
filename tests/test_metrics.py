"""The metrics API (/api/metrics/*, /api/analytics/{id}) against real figures: rows ingested by
the ingestion task (run in-process, Celery eager), searches through the API, jobs in the table.
Requests run as production runs them: the app role under row-level security for the key's or
session's tenant; staff figures on the maintenance role's connection."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from tests.conftest import SAMPLE_FAQ_CSV, as_tenant, ingest, make_upload
from tests.test_worker_kill import wait_for

TRANSACTIONAL = pytest.mark.django_db(transaction=True, databases=["default", "maintenance"])


def key_client(bundle) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {bundle.api_key}")
    return client


def session_client(bundle, *, role: str | None = None, staff: bool = False) -> APIClient:
    from tenants.services import member_add

    users = get_user_model()
    user = (users.objects.create_superuser if staff else users.objects.create_user)(
        f"{role or 'staff'}-{bundle.tenant.pk}", password="pw-metrics-1"
    )
    with as_tenant(bundle):
        member_add(tenant=bundle.tenant, user=user, role=role or "admin")
    client = APIClient()
    client.force_login(user)
    session = client.session
    session["tenant_id"] = bundle.tenant.pk
    session.save()
    return client


def counts(bundle) -> dict:
    from knowledge.models import Chunk, ChunkEmbedding, Document

    with as_tenant(bundle):
        return {
            "documents": Document.objects.filter(tenant=bundle.tenant).count(),
            "chunks": Chunk.objects.filter(tenant=bundle.tenant).count(),
            "vectors": ChunkEmbedding.objects.filter(tenant=bundle.tenant).count(),
        }


@TRANSACTIONAL
def test_database_figures_match_what_was_ingested_and_stay_per_tenant(bundle, other_bundle):
    ingest(bundle, make_upload("faq.csv", SAMPLE_FAQ_CSV), content_type="faq")
    ingest(bundle, make_upload("notes.txt", "Returns are accepted within 30 days.\n\nShipping takes 3 days."))
    ingest(other_bundle, make_upload("faq.csv", SAMPLE_FAQ_CSV), content_type="faq")
    mine, theirs = counts(bundle), counts(other_bundle)
    assert mine["chunks"] > 0 and mine["vectors"] >= mine["chunks"]

    body = key_client(bundle).get("/api/metrics/database").json()
    assert body["scope"] == "tenant" and "server" not in body
    share = body["tenant"]
    assert share["documents"] == mine["documents"] == 2
    assert share["chunks"] == mine["chunks"]
    assert share["vectors"] == mine["vectors"]
    assert share["vector_bytes"] == mine["vectors"] * (4 * 384 + 8)
    assert {row["chatbot_id"] for row in share["vector_spaces"]} == {bundle.chatbot.pk}
    assert key_client(other_bundle).get("/api/metrics/database").json()["tenant"]["chunks"] == theirs["chunks"]

    # staff: the whole database, read from PostgreSQL's statistics
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")  # this backend's counts, at its next commit
    staff = session_client(bundle, staff=True)
    total_vectors = mine["vectors"] + theirs["vectors"]

    def live_vectors():
        server = staff.get("/api/metrics/database").json()["server"]
        tables = {row["table"]: row for row in server["tables"]}
        return server if tables["knowledge_chunkembedding"]["live_tuples"] == total_vectors else None

    server = wait_for(live_vectors, 15, "pg_stat_user_tables never counted the ingested vectors")
    assert server["version"].split(".")[0].isdigit() and server["database_bytes"] > 0
    assert server["connections"]["total"] >= 1 and server["connections"]["max"] >= server["connections"]["total"]
    assert 0 < server["cache_hit_ratio"] <= 1
    assert any(row["method"] == "hnsw" for row in server["indexes"])
    assert all(row["state"] in ("valid", "invalid", "building") for row in server["vector_indexes"])
    # the test server has no streaming replica, and the tests configure none (tests/test_replicas.py has one)
    assert server["replication"] == {"standbys": [], "search_reads": {}}
    assert server["vector_indexes"], "the space's HNSW index is listed"
    assert server["slow_statements"]["available"] in (True, False) and (
        server["slow_statements"]["available"] or "pg_stat_statements" in server["slow_statements"]["reason"]
    )


@TRANSACTIONAL
def test_operator_figures_by_role(bundle):
    from training.models import TrainingJob

    with as_tenant(bundle):
        TrainingJob.objects.create(tenant=bundle.tenant, chatbot=bundle.chatbot)  # queued
    viewer = session_client(bundle, role="viewer")
    assert viewer.get("/api/metrics/system").status_code == 403
    assert viewer.get("/api/metrics/database").status_code == 403
    owner = session_client(bundle, role="owner").get("/api/metrics/system").json()
    assert owner["scope"] == "tenant" and "server" not in owner
    assert owner["tenant"]["queued"]["training"] == 1
    keyed = key_client(bundle).get("/api/metrics/system").json()
    assert keyed["tenant"]["queued"] == owner["tenant"]["queued"]

    server = session_client(bundle, staff=True).get("/api/metrics/system").json()["server"]
    assert server["cpu"]["cores"] >= 1 and 0 <= server["memory"]["used_percent"] <= 100
    assert server["disk"]["total_bytes"] > server["disk"]["free_bytes"] >= 0
    assert {"celery", "training"} <= set(server["queues"])
    assert any("pytest" in p["command"] and p["rss_bytes"] > 0 for p in server["processes"])
    assert "workers" in server


def test_search_and_training_figures(bundle, other_bundle, settings):
    from training.models import TrainingJob

    settings.API_RATE_LIMITS = {**settings.API_RATE_LIMITS, "standard": 10_000}
    ingest(bundle, make_upload("faq.csv", SAMPLE_FAQ_CSV), content_type="faq")
    api = key_client(bundle)
    for query in ("how do I reset my password", "refund policy", "xyzzy plugh"):
        assert (
            api.post("/api/search", {"chatbot_id": bundle.chatbot.pk, "query": query}, format="json").status_code == 200
        )
    assert (
        api.post("/api/search", {"chatbot_id": bundle.chatbot.pk, "query": "refund policy"}, format="json").status_code
        == 200
    )
    with as_tenant(bundle):
        now = timezone.now()
        for status, minutes in (("succeeded", 10), ("succeeded", 30), ("failed", 5)):
            TrainingJob.objects.create(tenant=bundle.tenant, chatbot=bundle.chatbot, status=status,
                                       started_at=now - timedelta(minutes=minutes), finished_at=now)  # fmt: skip

    body = api.get("/api/metrics/search?days=1").json()
    assert body["days"] == 1 and body["searches"] == 4
    assert body["cache_hit_rate"] == 0.25  # the repeated query came from the cache
    assert body["p95_ms"] >= body["p50_ms"] > 0
    assert body["per_chatbot"][0]["chatbot_id"] == bundle.chatbot.pk and body["per_chatbot"][0]["searches"] == 4
    assert sum(day["searches"] for day in body["daily"]) == 4
    assert key_client(other_bundle).get("/api/metrics/search").json()["searches"] == 0
    assert api.get("/api/metrics/search?days=0").status_code == 400
    assert api.get("/api/metrics/search?days=abc").json()["error"]["field"] == "days"

    training = api.get("/api/metrics/training").json()
    assert training["jobs"] == 3 and training["by_status"] == {"succeeded": 2, "failed": 1}
    assert training["failure_rate"] == round(1 / 3, 3)
    assert training["duration_seconds"]["p50"] == 1200.0  # the succeeded jobs' median: 20 minutes
    assert key_client(other_bundle).get("/api/metrics/training").json()["jobs"] == 0


def test_chatbot_analytics_is_the_whole_picture(bundle, other_bundle, settings):
    from search.models import SearchFeedback, SearchLog

    settings.API_RATE_LIMITS = {**settings.API_RATE_LIMITS, "standard": 10_000}
    ingest(bundle, make_upload("faq.csv", SAMPLE_FAQ_CSV), content_type="faq")
    api = key_client(bundle)
    answer = api.post("/api/search", {"chatbot_id": bundle.chatbot.pk, "query": "reset my password"}, format="json")
    feedback = api.post(f"/api/search/{answer.json()['query_id']}/feedback", {"helpful": True}, format="json")
    assert feedback.status_code == 201
    api.post("/api/search", {"chatbot_id": bundle.chatbot.pk, "query": "qwertyuiop zxcvbnm"}, format="json")

    body = api.get(f"/api/analytics/{bundle.chatbot.pk}?days=7").json()
    mine = counts(bundle)
    assert body["chatbot_id"] == bundle.chatbot.pk and body["content"]["chunks"] == mine["chunks"]
    assert body["content"]["by_status"] == {"ready": 1} and body["content"]["by_type"] == {"faq": 1}
    with as_tenant(bundle):
        assert body["search"]["searches"] == SearchLog.objects.filter(chatbot=bundle.chatbot).count() == 2
        assert body["feedback"]["count"] == SearchFeedback.objects.filter(chatbot=bundle.chatbot).count() == 1
    assert body["feedback"]["helpful_rate"] == 1.0
    assert body["training"]["versions"] == 0 and body["ab_test"] is None
    assert body["knowledge_gaps"]["groups"] >= 1
    assert api.get(f"/api/analytics/{other_bundle.chatbot.pk}").status_code == 404
    assert api.get(f"/api/analytics/{bundle.chatbot.pk}?days=400").status_code == 400
