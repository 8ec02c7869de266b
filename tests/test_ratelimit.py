"""Per-key rate limits by tenant plan (Redis counters): 429 with Retry-After on the API, on the
search fast path (cached answers are limited in the same Redis round trip) and through DRF."""

import pytest
from rest_framework.test import APIClient

from tenants import ratelimit
from tests.conftest import SAMPLE_FAQ_CSV, ingest, make_upload


@pytest.fixture(autouse=True)
def pinned_clock(monkeypatch):
    monkeypatch.setattr(ratelimit, "_now", lambda: 1_699_999_990.0)  # 50 s before the next window


@pytest.fixture
def limits(settings):
    settings.API_RATE_LIMITS = {"free": 3, "standard": 3, "enterprise": 100}
    return settings


def _client(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client


def test_api_key_over_its_plan_limit_gets_429_with_retry_after(bundle, limits):
    client = _client(bundle.api_key)
    for _ in range(3):
        assert client.get(f"/api/training-data/{bundle.chatbot.pk}").status_code == 200
    response = client.get(f"/api/training-data/{bundle.chatbot.pk}")
    assert response.status_code == 429
    assert response["Retry-After"] == "50"
    assert response.json()["error"]["code"] == "throttled"


@pytest.mark.parametrize("buffered", [True, False])
def test_searches_are_limited_on_the_fast_path_too(bundle, other_bundle, limits, buffered):
    """Repeated (cached) and new searches count alike; other keys and plans are untouched."""
    from tenants.services import api_key_create

    limits.SEARCH_LOG_BUFFER = buffered
    ingest(bundle, make_upload("faq.csv", SAMPLE_FAQ_CSV), content_type="faq")
    client = _client(bundle.api_key)
    body = {"query": "How can I pay?", "chatbot_id": bundle.chatbot.pk}
    answers = [client.post("/api/search", body, format="json") for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200] and answers[2].json()["cached"] is True
    throttled = client.post("/api/search", {**body, "query": "something new"}, format="json")
    assert throttled.status_code == 429 and throttled["Retry-After"] == "50"
    assert throttled.json()["error"]["code"] == "throttled"
    # answered by the fast path (in front of Django's middleware), not handed to DRF
    assert all("X-Frame-Options" not in response for response in [*answers, throttled])

    second_key = api_key_create(tenant=bundle.tenant, name="second").raw_key
    assert _client(second_key).post("/api/search", body, format="json").status_code == 200
    other_bundle.tenant.plan = "enterprise"
    other_bundle.tenant.save()
    other = _client(other_bundle.api_key)
    for _ in range(5):
        assert (
            other.post("/api/search", {**body, "chatbot_id": other_bundle.chatbot.pk}, format="json").status_code == 200
        )


def test_the_next_window_lets_the_key_in_again(bundle, limits, monkeypatch):
    client = _client(bundle.api_key)
    url = f"/api/training-data/{bundle.chatbot.pk}"
    for _ in range(3):
        client.get(url)
    assert client.get(url).status_code == 429
    monkeypatch.setattr(ratelimit, "_now", lambda: 1_700_000_040.5)
    assert client.get(url).status_code == 200


def test_redis_down_does_not_block_requests(bundle, limits, monkeypatch):
    import redis

    monkeypatch.setattr(ratelimit, "_client", redis.Redis(unix_socket_path="/nonexistent.sock", socket_timeout=0.1))
    monkeypatch.setattr(ratelimit, "_down_until", 0.0)
    client = _client(bundle.api_key)
    assert all(client.get(f"/api/training-data/{bundle.chatbot.pk}").status_code == 200 for _ in range(5))
