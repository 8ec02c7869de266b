"""Scale-out on one machine: two web servers and two Celery workers (real processes, granian and
prefork Celery), each with a working directory of its own and nothing on disk shared, on the test
database, the embedded Redis and a real S3-speaking server (moto's ``moto_server`` process).

- uploads through either web server are stored in the bucket, spread over both workers, and each
  document ends with exactly its chunks; no host keeps an uploaded file on its disk;
- a model fine-tuned by one worker is published to the bucket and served by a web server on
  another host, which fetches it (deploy re-embeds on a worker too);
- per-key rate limits are one count for the whole cluster;
- a revoked key stops working on both web servers within a second (their remembered key context
  is dropped by PostgreSQL's ``access_changed`` notification).

Async work runs in the cluster's real Celery workers; test code reads the database as the tenant."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import requests

from bench.cluster import Cluster, S3Server
from tests.conftest import as_tenant
from tests.test_training import MIN_HELDOUT, faq_rows
from tests.test_worker_kill import wait_for

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True, databases=["default", "maintenance"])]

RATE_LIMIT = 12  # requests per minute for the "free" plan inside this cluster


@pytest.fixture
def cluster(worker_env, tmp_path):
    env = {
        **worker_env,
        "SEARCH_CACHE_PREFIX": f"search:scaleout:{uuid.uuid4().hex[:8]}:",
        "API_RATE_LIMITS": json.dumps({"free": RATE_LIMIT}),
        "TRAINING_MIN_HELDOUT": str(MIN_HELDOUT),
    }
    with S3Server(tmp_path / "s3") as s3:
        with Cluster({**env, **s3.env()}, tmp_path / "hosts", webs=2, workers=2) as running:
            running.s3 = s3
            yield running


def faq_document(tag: str, rows: int) -> bytes:
    return "\n".join(
        json.dumps(
            {"question": f"{tag} question {i}: how does {tag} feature {i} work?", "answer": f"{tag} answer {i}."}
        )
        for i in range(rows)
    ).encode()


def upload(url: str, key: str, chatbot_id: int, name: str, body: bytes) -> int:
    response = requests.post(
        f"{url}/api/upload-training-data",
        headers={"Authorization": f"Bearer {key}"},
        data={"chatbot_id": chatbot_id, "content_type": "faq"},
        files={"file": (name, body)},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    return response.json()["document_id"]


def search(url: str, key: str, chatbot_id: int, query: str) -> requests.Response:
    return requests.post(
        f"{url}/api/search",
        headers={"Authorization": f"Bearer {key}"},
        json={"chatbot_id": chatbot_id, "query": query},
        timeout=30,
    )


def test_two_web_servers_and_two_workers_share_only_database_redis_and_bucket(cluster, bundle, other_bundle):
    from knowledge.models import Chunk, Document

    web_a, web_b = cluster.urls
    chatbot = bundle.chatbot.pk

    # --- uploads through both web servers, parsed by both workers --------------------------------
    documents = {}  # id -> (tag, rows)
    for index in range(6):
        tag, rows = f"doc{index}", 4 + index
        url = cluster.urls[index % 2]
        documents[upload(url, bundle.api_key, chatbot, f"{tag}.jsonl", faq_document(tag, rows))] = (tag, rows)
    training_doc = upload(web_b, bundle.api_key, chatbot, "faq.jsonl", "\n".join(map(json.dumps, faq_rows())).encode())

    def all_done():
        with as_tenant(bundle):
            states = dict(Document.objects.values_list("pk", "status"))
        return states if all(s in ("ready", "failed") for s in states.values()) and len(states) == 7 else None

    states = wait_for(all_done, 240, "the uploads were not all processed:\n" + "\n".join(cluster.log_tails()))
    assert set(states.values()) == {"ready"}, states
    with as_tenant(bundle):
        for document_id, (tag, rows) in documents.items():
            chunks = list(
                Chunk.objects.filter(document_id=document_id).order_by("position").values_list("position", "text")
            )
            assert [p for p, _ in chunks] == list(range(rows)), (tag, chunks)
            assert all(text.startswith(f"Q: {tag} question") for _, text in chunks), (tag, chunks)
            assert Document.objects.get(pk=document_id).chunk_count == rows
        assert Chunk.objects.filter(document_id=training_doc).count() == len(faq_rows())

    ran = cluster.tasks_by_worker()
    ingested = {
        name: sum(n for task, n in totals.items() if task.startswith("knowledge.")) for name, totals in ran.items()
    }
    assert all(count >= 1 for count in ingested.values()), f"every worker parses uploads: {ran}"
    stored = cluster.s3.keys("media/")
    assert len([k for k in stored if k.endswith(".jsonl")]) == 7, stored
    assert all(files == [] for files in cluster.host_files("media").values()), cluster.host_files("media")

    # --- a model trained by one worker, served by a web server on another host ----------------
    key = {"Authorization": f"Bearer {bundle.api_key}"}
    before = search(web_a, bundle.api_key, chatbot, "How do I reset my router?").json()
    assert before["embedding_space"] == "local:all-MiniLM-L6-v2@1"
    started = requests.post(
        f"{web_a}/api/training/start",
        headers=key,
        json={"chatbot_id": chatbot, "job_type": "initial_training", "config": {"batch_size": 16, "num_epochs": 1}},
        timeout=30,
    )
    assert started.status_code == 202, started.text

    def trained():
        status = requests.get(f"{web_b}{started.json()['status_url']}", headers=key, timeout=30).json()
        return status if status["status"] not in ("queued", "running") else None

    status = wait_for(trained, 300, "the training job did not finish:\n" + "\n".join(cluster.log_tails()))
    assert status["status"] == "succeeded", status
    (version,) = requests.get(f"{web_b}/api/models/{chatbot}", headers=key, timeout=30).json()["versions"]
    published = cluster.s3.keys("models/")
    assert any(k.endswith("/config.json") for k in published) and any(k.endswith("/MANIFEST.json") for k in published)
    trainers = [host for host, files in cluster.host_files("models").items() if "config.json" in " ".join(files)]
    assert len(trainers) == 1 and trainers[0].startswith("worker-"), cluster.host_files("models")

    deploying = requests.post(f"{web_b}/api/models/{version['version_id']}/deploy", headers=key, json={"force": True})
    assert deploying.status_code == 202, deploying.text

    def deployed():
        listing = requests.get(f"{web_a}/api/models/{chatbot}", headers=key, timeout=30).json()
        return listing if listing["serving"] == version["embedding_space"] else None

    wait_for(deployed, 240, "the version was not deployed:\n" + "\n".join(cluster.log_tails()))
    for url, query in zip(cluster.urls, ["How do I reset my router?", "how do i reset my router"]):
        # both web hosts fetch the weights from the bucket to embed a query (not a cached answer)
        answer = search(url, bundle.api_key, chatbot, query)
        assert answer.status_code == 200 and not answer.json()["cached"], answer.text
        assert answer.json()["embedding_space"] == version["embedding_space"]
        assert answer.json()["results"][0]["content"].startswith("Q: How do I reset my router?")
    copies = cluster.host_files("models")
    assert all(any(f.endswith("config.json") for f in copies[f"web-{i}"]) for i in range(2)), copies

    # --- one rate limit across both web servers --------------------------------------------------
    from tenants.models import Tenant
    from tests.conftest import across_tenants

    with across_tenants():
        Tenant.objects.filter(pk=other_bundle.tenant.pk).update(plan="free")
    if time.time() % 60 > 45:  # all requests inside one fixed window
        time.sleep(61 - time.time() % 60)
    codes = [
        search(cluster.urls[i % 2], other_bundle.api_key, other_bundle.chatbot.pk, f"question {i}").status_code
        for i in range(RATE_LIMIT + 4)
    ]
    assert codes == [200] * RATE_LIMIT + [429] * 4, codes

    # --- a revoked key stops on both web servers within a second ---------------------------------
    for url in cluster.urls:  # cached answers; the key context is remembered in each web process
        for _ in range(2):
            assert search(url, bundle.api_key, chatbot, "How do I reset my router?").status_code == 200
    from tenants.models import ApiKey
    from tenants.services import api_key_revoke

    with as_tenant(bundle):
        (key_id,) = ApiKey.objects.filter(revoked_at__isnull=True).values_list("pk", flat=True)
        api_key_revoke(tenant=bundle.tenant, api_key_id=key_id)
    revoked_at = time.monotonic()
    refused = {}
    while len(refused) < 2 and time.monotonic() - revoked_at < 5:
        for url in cluster.urls:
            if (
                url not in refused
                and search(url, bundle.api_key, chatbot, "How do I reset my router?").status_code == 401
            ):
                refused[url] = time.monotonic() - revoked_at
    assert set(refused) == set(cluster.urls) and max(refused.values()) < 1.0, refused
