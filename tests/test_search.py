"""Search foundation (issue 3, in progress): semantic, keyword and hybrid over ready chunks.
Celery is eager: ingestion runs the task function in-process."""

import pytest
from rest_framework.test import APIClient

from tests.conftest import SAMPLE_FAQ_CSV, ingest, make_upload

pytestmark = pytest.mark.django_db


@pytest.fixture
def faq(bundle):
    return ingest(bundle, make_upload("faq.csv", SAMPLE_FAQ_CSV), content_type="faq", category="help")


def search(api, chatbot_id, **body):
    return api.post("/api/search", {"chatbot_id": chatbot_id, **body}, format="json")


def test_semantic_search_finds_the_paraphrased_question(api, bundle, faq):
    response = search(api, bundle.chatbot.pk, query="I forgot my login credentials", max_results=2)
    assert response.status_code == 200, response.json()
    body = response.json()
    top = body["results"][0]
    assert top["content"].startswith("Q: How do I reset my password?")
    assert (top["document_id"], top["content_type"], top["category"]) == (faq.pk, "faq", "help")
    assert top["metadata"] == {"category": "account", "product": "web", "row": 2}
    assert 0 < top["similarity_score"] <= 1 and top["similarity_score"] > body["results"][1]["similarity_score"]
    assert body["mode"] == "semantic" and body["embedding_space"] == "local:all-MiniLM-L6-v2@1"


def test_similarity_threshold_filters(api, bundle, faq):
    results = search(api, bundle.chatbot.pk, query="password reset", similarity_threshold=0.99).json()["results"]
    assert results == []


def test_keyword_and_hybrid(api, bundle, faq):
    keyword = search(api, bundle.chatbot.pk, query="Mastercard", mode="keyword").json()["results"]
    assert [r["metadata"]["row"] for r in keyword] == [4]
    hybrid = search(api, bundle.chatbot.pk, query="pay with Mastercard", mode="hybrid", max_results=3).json()
    top = hybrid["results"][0]
    assert top["metadata"]["row"] == 4
    assert top["keyword_rank"] == 1 and top["semantic_rank"] == 1 and top["fused_score"] == pytest.approx(2 / 61, abs=1e-6)


def test_failed_and_other_tenants_content_is_never_returned(api, bundle, other_bundle, faq):
    ingest(other_bundle, make_upload("theirs.txt", "How do I reset my password? Call the Globex hotline."))
    results = search(api, bundle.chatbot.pk, query="reset password Globex hotline", max_results=10).json()["results"]
    assert results and all(r["document_id"] == faq.pk for r in results)
    assert search(api, other_bundle.chatbot.pk, query="password").status_code == 404


@pytest.mark.parametrize(
    "body,field",
    [
        ({"query": ""}, "query"),
        ({"query": "x" * 2001}, "query"),
        ({"query": "ok", "max_results": 51}, "max_results"),
        ({"query": "ok", "similarity_threshold": 1.5}, "similarity_threshold"),
        ({"query": "ok", "mode": "magic"}, "mode"),
    ],
)
def test_bad_requests_name_the_field(api, bundle, body, field):
    response = search(api, bundle.chatbot.pk, **body)
    assert response.status_code == 400 and response.json()["error"]["field"] == field


def test_unauthenticated_search_is_refused(bundle):
    assert APIClient().post("/api/search", {"query": "x", "chatbot_id": bundle.chatbot.pk}).status_code in (401, 403)
