"""Per-key rate limits by tenant plan (Redis counters): 429 with Retry-After on the API, on the
search fast path (cached answers are limited in the same Redis round trip) and through DRF."""

import pytest
from rest_framework.test import APIClient

from tenants import ratelimit
from tests.conftest import SAMPLE_FAQ_CSV, as_tenant, ingest, make_upload


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

    with as_tenant(bundle):
        second_key = api_key_create(tenant=bundle.tenant, name="second").raw_key
    assert _client(second_key).post("/api/search", body, format="json").status_code == 200
    other_bundle.tenant.plan = "enterprise"
    with as_tenant(other_bundle):
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


def test_login_is_blocked_after_repeated_failures(bundle, settings):
    """Five wrong passwords for one user from one address block that pair (dashboard and admin),
    right password or not; other users and addresses are unaffected."""
    from django.contrib.auth import get_user_model
    from django.test import Client

    settings.LOGIN_FAILURES_MAX = 5
    get_user_model().objects.filter(username="acme-owner").update(is_staff=True)
    client = Client(REMOTE_ADDR="203.0.113.7")
    for _ in range(5):
        response = client.post("/login/", {"username": "acme-owner", "password": "wrong"})
        assert response.status_code == 200 and b"and password didn't match" in response.content
    blocked = client.post("/login/", {"username": "acme-owner", "password": "pw-acme-123"})
    assert blocked.status_code == 429 and b"Too many failed logins" in blocked.content
    assert "_auth_user_id" not in client.session
    admin = client.post("/admin/login/", {"username": "acme-owner", "password": "pw-acme-123"})
    assert admin.status_code == 200 and "_auth_user_id" not in client.session  # refused there too

    elsewhere = Client(REMOTE_ADDR="198.51.100.2")
    assert elsewhere.post("/login/", {"username": "acme-owner", "password": "pw-acme-123"}).status_code == 302
    other_user = client.post("/login/", {"username": "globex-owner", "password": "nope"})
    assert other_user.status_code == 200  # a plain failed login, not blocked


def test_a_successful_login_clears_the_failures(bundle, settings):
    from django.test import Client

    settings.LOGIN_FAILURES_MAX = 3
    client = Client(REMOTE_ADDR="203.0.113.8")
    for _ in range(2):
        client.post("/login/", {"username": "acme-owner", "password": "wrong"})
    assert client.post("/login/", {"username": "acme-owner", "password": "pw-acme-123"}).status_code == 302
    client.logout()
    for _ in range(2):
        client.post("/login/", {"username": "acme-owner", "password": "wrong"})
    assert client.post("/login/", {"username": "acme-owner", "password": "pw-acme-123"}).status_code == 302
