"""The OpenAI provider through the real ``openai`` client, against a local HTTP server that
speaks the embeddings API. Celery is eager: the task function runs in the test process."""

import hashlib
import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from knowledge.embeddings import OpenAIProvider, ProviderError, ProviderUnavailable, reset_providers

DIMS = 1536


def same_vectors(a, b) -> bool:
    import numpy as np

    return np.asarray(a).shape == np.asarray(b).shape and np.allclose(a, b, atol=1e-6)


def fake_vector(text: str) -> list[float]:
    seed = hashlib.sha256(text.encode()).digest()
    values = [((seed[i % 32] + i * 7) % 97) / 97 - 0.5 for i in range(DIMS)]
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


class FakeOpenAI:
    """``vectors(texts)``: what the server answers (default: a digest of each text, no meaning)."""

    def __init__(self, vectors=None):
        self.vectors = vectors or (lambda texts: [fake_vector(t) for t in texts])
        self.requests: list[dict] = []
        self.fail_next: list[int] = []  # status codes to answer before succeeding
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
                if server.fail_next:
                    status = server.fail_next.pop(0)
                    payload = {"error": {"message": "slow down", "type": "rate_limit", "code": None}}
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("retry-after-ms", "10")
                    self.end_headers()
                    self.wfile.write(json.dumps(payload).encode())
                    return
                inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
                payload = {
                    "object": "list",
                    "model": body["model"],
                    "data": [
                        {"object": "embedding", "index": i, "embedding": v}
                        for i, v in enumerate(server.vectors(inputs))
                    ],
                    "usage": {"prompt_tokens": 1, "total_tokens": 1},
                }
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps(payload).encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def fake_openai(settings):
    server = FakeOpenAI()
    settings.OPENAI_API_KEY = "sk-test"
    settings.OPENAI_BASE_URL = server.url
    settings.OPENAI_TIMEOUT_SECONDS = 5
    settings.OPENAI_MAX_RETRIES = 3
    reset_providers()
    yield server
    server.close()
    reset_providers()


def test_embeddings_are_batched_and_in_input_order(fake_openai):
    provider = OpenAIProvider()
    provider.batch_size = 3
    texts = [f"text number {i}" for i in range(7)]
    vectors = provider.embed(texts)
    assert [len(r["input"]) for r in fake_openai.requests] == [3, 3, 1]
    assert fake_openai.requests[0]["model"] == "text-embedding-3-small"
    assert fake_openai.requests[0]["auth"] == "Bearer sk-test"
    assert same_vectors(vectors, [fake_vector(t) for t in texts])


def test_429_and_5xx_are_retried_with_backoff(fake_openai):
    fake_openai.fail_next = [429, 503]
    assert same_vectors(OpenAIProvider().embed(["hello"]), [fake_vector("hello")])
    assert len(fake_openai.requests) == 3


def test_persistent_outage_raises_unavailable(fake_openai, settings):
    settings.OPENAI_MAX_RETRIES = 1
    fake_openai.fail_next = [500, 500, 500]
    with pytest.raises(ProviderUnavailable):
        OpenAIProvider().embed(["hello"])


def test_bad_key_is_a_permanent_error(fake_openai):
    fake_openai.fail_next = [401]
    with pytest.raises(ProviderError, match="OpenAI rejected"):
        OpenAIProvider().embed(["hello"])


@pytest.mark.django_db
def test_a_chatbot_on_openai_stores_1536_dim_vectors_in_its_own_space(fake_openai, bundle):
    from knowledge.models import ChunkEmbedding, EmbeddingSpace
    from tests.conftest import SAMPLE_FAQ_CSV, as_tenant, ingest, make_upload

    bundle.chatbot.embedding_model = "openai:text-embedding-3-small"
    with as_tenant(bundle):
        bundle.chatbot.save()
    document = ingest(bundle, make_upload("faq.csv", SAMPLE_FAQ_CSV))
    assert document.status == "ready", document.error
    with as_tenant(bundle):
        space = EmbeddingSpace.objects.get(provider="openai")
        stored = list(ChunkEmbedding.objects.filter(chunk__document=document))
    assert (space.model_name, space.dimensions) == ("text-embedding-3-small", 1536)
    assert len(stored) == 3 and {e.space_id for e in stored} == {space.pk}
    assert all(len(e.embedding) == 1536 for e in stored)


@pytest.mark.django_db
def test_when_openai_is_down_the_job_waits_and_never_uses_another_model(bundle, settings):
    """The task function is called directly; the Celery retry it asks for is checked, not run."""
    from celery.exceptions import Retry
    from django.test import TestCase

    from knowledge.models import ChunkEmbedding, IngestionJob
    from knowledge.services import document_create
    from knowledge.tasks import ingestion_job_run_task
    from tests.conftest import SAMPLE_FAQ_CSV, as_tenant, make_upload

    settings.OPENAI_API_KEY = "sk-test"
    settings.OPENAI_BASE_URL = "http://127.0.0.1:9/v1"  # nothing listens there
    settings.OPENAI_MAX_RETRIES = 0
    settings.OPENAI_TIMEOUT_SECONDS = 1
    reset_providers()
    bundle.chatbot.embedding_model = "openai:text-embedding-3-small"
    with TestCase.captureOnCommitCallbacks(execute=False), as_tenant(bundle):
        bundle.chatbot.save()
        result = document_create(
            tenant=bundle.tenant, chatbot=bundle.chatbot, upload=make_upload("faq.csv", SAMPLE_FAQ_CSV)
        )
    with pytest.raises(Retry):
        ingestion_job_run_task.apply(kwargs={"job_id": result.job.pk, "tenant_id": bundle.tenant.pk}, throw=True)
    with as_tenant(bundle):
        job = IngestionJob.objects.select_related("document").get(pk=result.job.pk)
        assert not ChunkEmbedding.objects.exists()
    assert (job.status, job.stage, job.provider_waits) == ("queued", "provider_wait", 1)
    assert "OpenAI embeddings unavailable" in job.error
    assert job.document.status == "queued"
    reset_providers()
