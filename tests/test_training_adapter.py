"""Adapter jobs: a query transform learned over a hosted model's frozen vectors, judged by the
gate, deployed without re-embedding a chunk, served by both search paths, rolled back.

The chatbot embeds with ``openai:text-embedding-3-small`` through the real ``openai`` client
against a local HTTP server that speaks the embeddings API. So that its vectors carry meaning (an
adapter learns nothing from digests), the server answers with the local model's vectors turned
into 1,536 dimensions by a fixed rotation, which keeps every cosine. Celery is eager: a job's
task function runs in the test process when the request's transaction commits."""

import json

import numpy as np
import pytest

from tests.conftest import as_tenant, ingest, make_upload
from tests.test_openai_provider import DIMS, FakeOpenAI
from tests.test_training import MIN_HELDOUT, api_for, faq_rows

BASE = "openai:text-embedding-3-small@1"


def rotation() -> np.ndarray:
    """384 orthonormal rows in 1,536 dimensions (seeded): x @ R keeps lengths and cosines."""
    matrix = np.random.default_rng(7).standard_normal((DIMS, 384))
    q, _ = np.linalg.qr(matrix)
    return q.T.astype(np.float32)


@pytest.fixture
def hosted(settings):
    from knowledge.embeddings import provider_for, reset_providers

    local = provider_for("local:all-MiniLM-L6-v2")
    turn = rotation()
    server = FakeOpenAI(vectors=lambda texts: (np.asarray(local.embed(texts), dtype=np.float32) @ turn).tolist())
    settings.OPENAI_API_KEY = "sk-test"
    settings.OPENAI_BASE_URL = server.url
    settings.OPENAI_TIMEOUT_SECONDS = 10
    settings.OPENAI_MAX_RETRIES = 0
    reset_providers()
    yield server
    server.close()
    reset_providers()


@pytest.fixture
def hosted_bot(bundle, hosted, settings, tmp_path):
    settings.TRAINING_ARTIFACTS_DIR = tmp_path / "versions"
    settings.TRAINING_MIN_HELDOUT = MIN_HELDOUT
    bundle.chatbot.embedding_model = "openai:text-embedding-3-small"
    with as_tenant(bundle):
        bundle.chatbot.save()
    document = ingest(bundle, make_upload("faq.jsonl", "\n".join(json.dumps(r) for r in faq_rows())),
                      content_type="faq")  # fmt: skip
    assert document.status == "ready", document.error
    return bundle


def embedded_inputs(server) -> int:
    return sum(len(r["input"]) if isinstance(r["input"], list) else 1 for r in server.requests)


def test_an_adapter_tunes_a_hosted_models_queries_and_deploys_without_re_embedding(
    hosted_bot, hosted, other_bundle, settings, django_capture_on_commit_callbacks
):
    from django.test import override_settings

    from knowledge.adapters import QueryAdapter
    from knowledge.embeddings import artifact_path
    from knowledge.models import Chunk, ChunkEmbedding
    from training.models import ModelVersion

    bundle, api = hosted_bot, api_for(hosted_bot)
    start = {"chatbot_id": bundle.chatbot.pk, "job_type": "initial_training", "config": {}}
    refused = api.post("/api/training/start", start, format="json")
    assert refused.status_code == 400 and "adapter job" in refused.json()["error"]["message"]
    misplaced = api.post("/api/training/start", {**start, "config": {"adapter_rank": 8}}, format="json")
    assert misplaced.status_code == 400 and misplaced.json()["error"]["field"] == "config.adapter_rank"
    too_big = api.post("/api/training/start", {**start, "job_type": "adapter", "config": {"adapter_rank": 999}},
                       format="json")  # fmt: skip
    assert too_big.status_code == 400 and too_big.json()["error"]["field"] == "config.adapter_rank"

    with django_capture_on_commit_callbacks(execute=True):
        started = api.post("/api/training/start", {**start, "job_type": "adapter", "config": {"adapter_rank": 16}},
                           format="json")  # fmt: skip
    assert started.status_code == 202, started.json()
    status = api.get(started.json()["status_url"]).json()
    assert status["status"] == "succeeded", status
    assert status["job_type"] == "adapter" and status["percent"] == 100 and status["step"] == status["total_steps"]
    assert status["total_steps"] == 10 * -(-status["metrics"]["training"]["pairs"] // 64)  # adapter defaults
    assert status["loss"] and status["loss"][-1][1] < status["loss"][0][1]  # it learned something
    metrics = status["metrics"]
    assert metrics["adapter"] == {"rank": 16, "dimensions": DIMS, "vectors_of": BASE}
    assert metrics["active_space"] == BASE and metrics["candidate"]["queries"] >= MIN_HELDOUT
    assert metrics["training"]["hard_negatives"] > 0

    (version,) = api.get(f"/api/models/{bundle.chatbot.pk}").json()["versions"]
    assert version["kind"] == "adapter" and version["vectors_of"] == BASE
    assert version["embedding_space"] == f"openai:text-embedding-3-small@c{bundle.chatbot.pk}.v1"
    assert 0 < version["size_bytes"] < 1_000_000  # two small matrices, not a model

    calls = embedded_inputs(hosted)
    with django_capture_on_commit_callbacks(execute=True):
        deploying = api.post(f"/api/models/{version['version_id']}/deploy", {"force": True}, format="json")
    assert deploying.status_code == 202, deploying.json()
    listing = api.get(f"/api/models/{bundle.chatbot.pk}").json()
    assert listing["serving"] == version["embedding_space"] and listing["versions"][0]["status"] == "active"
    assert embedded_inputs(hosted) == calls  # deploy embedded no chunk: the stored vectors serve
    with as_tenant(bundle):
        space = ModelVersion.objects.select_related("space").get(pk=version["version_id"]).space
        assert not ChunkEmbedding.objects.filter(space=space).exists()
        stored = dict(ChunkEmbedding.objects.filter(space=space.store).values_list("chunk_id", "embedding"))
        assert len(stored) == Chunk.objects.count() == 80

    # both search paths embed the query, apply the adapter and search the stored vectors: the
    # answer is exactly the ranking computed here by hand
    adapter = QueryAdapter.load(artifact_path(space.artifact))
    query = "my speaker will not turn on any more, what should I do"
    hand = adapter.apply(np.asarray(hosted.vectors([query])[0], dtype=np.float32))
    ids = list(stored)
    scores = np.asarray([stored[i] for i in ids], dtype=np.float32) @ hand
    expected = [ids[i] for i in np.argsort(-scores)[:5]]
    body = {"chatbot_id": bundle.chatbot.pk, "query": query, "mode": "semantic", "max_results": 5}
    served = api.post("/api/search", body, format="json").json()  # the fast path (middleware) answers
    assert served["embedding_space"] == version["embedding_space"]
    assert [r["chunk_id"] for r in served["results"]] == expected
    assert served["results"][0]["similarity_score"] == pytest.approx(float(np.sort(scores)[-1]), abs=1e-4)
    with override_settings(MIDDLEWARE=[m for m in settings.MIDDLEWARE if "fastpath" not in m]):  # the DRF view
        full = api.post("/api/search", {**body, "max_results": 4}, format="json").json()
    assert full["embedding_space"] == version["embedding_space"]
    assert [r["chunk_id"] for r in full["results"]] == expected[:4]

    # a document uploaded while the adapter serves is embedded once, into the stored space
    row = {"question": "Do you sell gift cards?", "answer": "Gift cards from 10 to 200 euros are sold in every shop."}
    added = ingest(bundle, make_upload("new.jsonl", json.dumps(row)), content_type="faq")
    assert added.status == "ready", added.error
    with as_tenant(bundle):
        assert ChunkEmbedding.objects.filter(chunk__document=added, space=space.store).count() == 1
        assert not ChunkEmbedding.objects.filter(space=space).exists()
    found = api.post("/api/search", {**body, "query": "can I buy a gift card"}, format="json").json()
    assert found["results"][0]["content"].startswith("Q: Do you sell gift cards?")

    rolled = api.post(f"/api/models/{bundle.chatbot.pk}/rollback")
    assert rolled.status_code == 200 and rolled.json()["space"] == BASE
    again = api.post("/api/search", {**body, "max_results": 3}, format="json").json()
    assert again["embedding_space"] == BASE
    assert api_for(other_bundle).get(f"/api/models/{bundle.chatbot.pk}").status_code == 404


def test_a_corrupt_adapter_fails_its_deploy_and_the_hosted_model_keeps_serving(
    hosted_bot, django_capture_on_commit_callbacks
):
    from knowledge.embeddings import artifact_path
    from training.models import ModelVersion

    bundle, api = hosted_bot, api_for(hosted_bot)
    with django_capture_on_commit_callbacks(execute=True):
        api.post("/api/training/start", {"chatbot_id": bundle.chatbot.pk, "job_type": "adapter",
                                         "config": {"num_epochs": 1}}, format="json")  # fmt: skip
    with as_tenant(bundle):
        version = ModelVersion.objects.select_related("space").get()
    (artifact_path(version.space.artifact) / "adapter.npz").write_bytes(b"not a numpy file")
    with django_capture_on_commit_callbacks(execute=True):
        api.post(f"/api/models/{version.pk}/deploy", {"force": True}, format="json")
    listing = api.get(f"/api/models/{bundle.chatbot.pk}").json()
    assert listing["serving"] == BASE
    assert listing["versions"][0]["status"] == "failed" and "cannot be loaded" in listing["versions"][0]["error"]
    served = api.post("/api/search", {"chatbot_id": bundle.chatbot.pk, "query": "warranty of the phone"},
                      format="json").json()  # fmt: skip
    assert served["embedding_space"] == BASE and served["results"]


@pytest.mark.django_db(transaction=True, databases=["default", "maintenance"])  # staff read on its connection
def test_staff_deploy_and_roll_back_versions_from_the_admin(bundle, settings, tmp_path):
    """The admin's actions on model versions, on committed rows (staff read them on the
    maintenance connection): a version the gate refused is not deployed by the plain action (the
    reason is shown); deployed through the API with force, it is rolled back by the admin's."""
    from django.contrib.auth import get_user_model
    from django.test import Client

    from training.models import ModelVersion

    settings.TRAINING_ARTIFACTS_DIR = tmp_path / "versions"
    settings.TRAINING_MIN_HELDOUT = MIN_HELDOUT
    ingest(bundle, make_upload("faq.jsonl", "\n".join(json.dumps(r) for r in faq_rows())), content_type="faq")
    api = api_for(bundle)
    started = api.post("/api/training/start", {"chatbot_id": bundle.chatbot.pk, "job_type": "adapter",
                                               "config": {"num_epochs": 2}}, format="json")  # fmt: skip
    assert started.status_code == 202, started.json()
    with as_tenant(bundle):
        version = ModelVersion.objects.select_related("space").get()
    assert not version.gate["passed"]  # the base model answers these FAQ questions perfectly already

    staff = get_user_model().objects.create_superuser("staff-models", password="pw-staff-1")
    admin = Client()
    admin.force_login(staff)
    listing = admin.get("/admin/training/modelversion/").content.decode()
    assert "adapter" in listing and "+0.0000" in listing
    refused = admin.post("/admin/training/modelversion/", {"action": "deploy", "_selected_action": [version.pk]},
                         follow=True).content.decode()  # fmt: skip
    assert "did not pass the evaluation gate" in refused
    assert api.post(f"/api/models/{version.pk}/deploy", {"force": True}, format="json").status_code == 202
    assert api.get(f"/api/models/{bundle.chatbot.pk}").json()["serving"] == version.space.key
    rolled = admin.post("/admin/training/modelversion/", {"action": "rollback", "_selected_action": [version.pk]},
                        follow=True).content.decode()  # fmt: skip
    assert "local:all-MiniLM-L6-v2@1 serves again" in rolled
    assert api.get(f"/api/models/{bundle.chatbot.pk}").json()["serving"] == "local:all-MiniLM-L6-v2@1"
