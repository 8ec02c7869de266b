"""One search pipeline behind every entry point (``search.services.search_answer``): the fast path
in front of Django, the DRF view, hybrid GET and the dashboard playground all name their caller
as the same principal, count one rate limit, run one access check, and log and touch alike.
Requests go through the test client under row-level security as the app role; ingestion runs
the task function in-process (eager Celery)."""

import pytest
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from search.models import SearchLog
from tenants import ratelimit
from tenants.models import ApiKey
from tests.conftest import SAMPLE_FAQ_CSV, as_tenant, ingest, make_upload

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def pinned_clock(monkeypatch):
    monkeypatch.setattr(ratelimit, "_now", lambda: 1_699_999_990.0)  # 50 s before the next window


@pytest.fixture
def faq(bundle):
    ingest(bundle, make_upload("faq.csv", SAMPLE_FAQ_CSV), content_type="faq")


def _client(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client


def _paths(key: str, chatbot_id: int):
    """Each entry point as a callable taking a query: (name, response)."""
    client = _client(key)

    def fast(query):
        return client.post("/api/search", {"query": query, "chatbot_id": chatbot_id}, format="json")

    def drf(query):
        from django.conf import settings

        with override_settings(MIDDLEWARE=[m for m in settings.MIDDLEWARE if "fastpath" not in m]):
            # a client made here loads the middleware without the fast path
            return _client(key).post("/api/search", {"query": query, "chatbot_id": chatbot_id}, format="json")

    def hybrid(query):
        return client.get(f"/api/search/hybrid/{chatbot_id}", {"q": query})

    return {"fast": fast, "drf": drf, "hybrid": hybrid}


def test_every_entry_point_counts_one_rate_limit(bundle, faq, settings):
    settings.API_RATE_LIMITS = {"free": 5, "standard": 5, "enterprise": 100}
    paths = _paths(bundle.api_key, bundle.chatbot.pk)
    answered = [
        paths["fast"]("How can I pay?"),
        paths["drf"]("How can I pay?"),  # cached by the fast path's search: one cache for both
        paths["hybrid"]("opening hours"),
        paths["fast"]("opening hours"),
        paths["drf"]("reset my password"),
    ]
    assert [r.status_code for r in answered] == [200] * 5, [r.content for r in answered]
    assert answered[1].json()["cached"] is True and answered[0].json()["cached"] is False
    assert "X-Frame-Options" not in answered[0] and "X-Frame-Options" in answered[1]  # fast path, then Django
    for name, path in paths.items():
        refused = path("anything else")
        assert refused.status_code == 429, (name, refused.content)
        assert refused["Retry-After"] == "50", name
        error = refused.json()["error"]
        assert error == {"code": "throttled", "message": "Too many requests for this API key; retry in 50 s.",
                         "field": None}, name  # fmt: skip
    with as_tenant(bundle):
        logs = list(SearchLog.objects.filter(chatbot=bundle.chatbot))
        key = ApiKey.objects.get(prefix=bundle.api_key[:12])
    assert len(logs) == 5  # the throttled requests ran nothing and logged nothing
    assert {log.api_key_id for log in logs} == {key.pk} and {log.source for log in logs} == {"api"}
    assert key.last_used_at is not None and (timezone.now() - key.last_used_at).total_seconds() < 60


def test_every_entry_point_runs_one_access_check(bundle, faq):
    from tenants.services import api_key_create, chatbot_create

    with as_tenant(bundle):
        second = chatbot_create(tenant=bundle.tenant, name="Second bot")
        limited = api_key_create(tenant=bundle.tenant, name="limited", chatbot=bundle.chatbot).raw_key
        reader = api_key_create(tenant=bundle.tenant, name="reader", scopes=["read"]).raw_key
    for name, path in _paths(limited, second.pk).items():  # outside the key's chatbot
        response = path("How can I pay?")
        assert response.status_code == 404, (name, response.content)
        assert response.json()["error"]["code"] == "not_found", name
    for name, path in _paths(limited, bundle.chatbot.pk).items():  # its own chatbot
        assert path("How can I pay?").status_code == 200, name
    messages = set()
    for name, path in _paths(reader, bundle.chatbot.pk).items():  # no search scope
        response = path("How can I pay?")
        assert response.status_code == 403, (name, response.content)
        messages.add(response.json()["error"]["message"])
    assert len(messages) == 1 and "'search' scope" in messages.pop()
    with as_tenant(bundle):
        assert SearchLog.objects.filter(chatbot=second).count() == 0
        assert SearchLog.objects.filter(chatbot=bundle.chatbot).count() == 3


def test_another_tenants_chatbot_is_not_found_on_every_entry_point(bundle, other_bundle, faq):
    for name, path in _paths(bundle.api_key, other_bundle.chatbot.pk).items():
        response = path("How can I pay?")
        assert response.status_code == 404, (name, response.content)
    with as_tenant(other_bundle):
        assert not SearchLog.objects.exists()


def test_the_playground_is_the_same_pipeline_as_a_dashboard_member(client, bundle, faq):
    """The playground's form becomes an API body (same parser) and its searches share the API's
    cache: a question the API answered a moment ago is cached for the dashboard too."""
    body = {"query": "How can I pay?", "chatbot_id": bundle.chatbot.pk, "max_results": 2}
    first = _client(bundle.api_key).post("/api/search", {**body, "user_id": "x"}, format="json")
    assert first.status_code == 200 and first.json()["cached"] is False
    assert client.login(username=bundle.username, password=bundle.password)
    page = client.get(f"/chatbots/{bundle.chatbot.pk}/search/", {"q": "How can I pay?", "max_results": 2,
                                                                  "compare": "semantic,keyword"})  # fmt: skip
    assert page.status_code == 200
    with as_tenant(bundle):
        logs = list(SearchLog.objects.filter(chatbot=bundle.chatbot).order_by("id"))
    assert [(log.source, log.mode, log.cache_hit) for log in logs] == [
        ("api", "semantic", False),
        ("dashboard", "semantic", True),  # the API's cached answer: one cache key for both
        ("dashboard", "keyword", False),
    ]
    assert logs[1].user_id == logs[2].user_id is not None and logs[1].api_key_id is None
    refused = client.get(f"/chatbots/{bundle.chatbot.pk}/search/", {"q": "x" * 2001})
    assert refused.status_code == 200 and "query: Ensure this field has no more than 2000 characters." in (
        refused.content.decode()
    )
