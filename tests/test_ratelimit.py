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


def test_redis_down_does_not_block_requests(bundle, limits, settings):
    from tenants import redis_client

    settings.REDIS_URL, settings.REDIS_TIMEOUT = "unix:///nonexistent.sock", 0.1
    redis_client.reset()
    try:
        client = _client(bundle.api_key)
        assert all(client.get(f"/api/training-data/{bundle.chatbot.pk}").status_code == 200 for _ in range(5))
    finally:
        redis_client.reset()


@pytest.fixture
def logins(settings, monkeypatch):
    """Login counters of this test only, and a clock the test moves."""
    from django.test import Client

    from tenants import redis_client

    client = redis_client.client()
    for key in client.scan_iter(f"{settings.SEARCH_CACHE_PREFIX}login:*"):
        client.delete(key)
    settings.LOGIN_ACCOUNT_FREE_FAILURES = 3
    settings.LOGIN_ACCOUNT_MAX_DELAY_SECONDS = 60
    settings.LOGIN_ADDRESS_FAILURES_MAX = 100
    clock = {"now": 1_700_000_000.0}
    monkeypatch.setattr(ratelimit, "_now", lambda: clock["now"])

    class Logins:
        def __init__(self):
            self.clock = clock

        def client(self, address: str) -> Client:
            return Client(REMOTE_ADDR=address)

        def advance(self, seconds: float) -> None:
            clock["now"] += seconds

    return Logins()


def _login(client, password: str, username: str = "acme-owner"):
    return client.post("/login/", {"username": username, "password": password})


def test_an_account_backs_off_after_failures_and_never_locks_the_owner_out(bundle, logins):
    """After the free failures each attempt waits 2, 4, 8 ... s after the last failure (from any
    address), without the password being checked; once the wait is over the right password works."""
    from django.contrib.auth import get_user_model

    get_user_model().objects.filter(username="acme-owner").update(is_staff=True)
    attacker = logins.client("203.0.113.7")
    for _ in range(3):
        response = _login(attacker, "wrong")
        assert response.status_code == 200 and b"and password didn't match" in response.content
    refused = _login(attacker, "pw-acme-123")  # the right password, but inside the wait: not checked
    assert refused.status_code == 429 and b"Try again in 2 seconds" in refused.content
    assert "_auth_user_id" not in attacker.session
    elsewhere = logins.client("198.51.100.2")  # the account waits, whatever the address
    assert _login(elsewhere, "pw-acme-123").status_code == 429
    admin = elsewhere.post("/admin/login/", {"username": "acme-owner", "password": "pw-acme-123"})
    assert admin.status_code == 200 and "_auth_user_id" not in elsewhere.session  # refused there too
    logins.advance(2.1)
    assert _login(attacker, "wrong").status_code == 200  # checked again, and the wait doubles
    assert b"Try again in 4 seconds" in _login(attacker, "wrong").content
    logins.advance(4.1)
    assert _login(elsewhere, "pw-acme-123").status_code == 302  # the owner is in
    elsewhere.logout()
    assert _login(elsewhere, "pw-acme-123").status_code == 302  # success cleared the count
    assert _login(logins.client("192.0.2.9"), "nope", username="globex-owner").status_code == 200  # others untouched


def test_a_browser_that_logged_in_before_is_not_delayed_by_an_attack_elsewhere(bundle, logins):
    owner = logins.client("198.51.100.20")
    first = _login(owner, "pw-acme-123")
    assert first.status_code == 302 and first.cookies["cbt_device"]["httponly"]
    device = first.cookies["cbt_device"].value
    owner.logout()  # the test client forgets every cookie; a browser keeps the device cookie
    owner.cookies["cbt_device"] = device
    attacker = logins.client("203.0.113.66")
    for _ in range(8):
        _login(attacker, "guess")
    assert _login(attacker, "pw-acme-123").status_code == 429
    assert _login(owner, "pw-acme-123").status_code == 302  # the device cookie is counted on its own
    forged = logins.client("203.0.113.66")
    forged.cookies["cbt_device"] = "not-signed"
    assert _login(forged, "pw-acme-123").status_code == 429


def test_one_address_failing_for_many_accounts_is_refused(bundle, other_bundle, logins, settings):
    settings.LOGIN_ADDRESS_FAILURES_MAX = 4
    sprayer = logins.client("203.0.113.99")
    for username in ("a", "b", "acme-owner", "globex-owner"):
        assert _login(sprayer, "Winter2026!", username=username).status_code == 200
    assert _login(sprayer, "pw-acme-123").status_code == 429  # the address, not the account
    assert _login(logins.client("198.51.100.3"), "pw-acme-123").status_code == 302


def test_throttled_attempts_are_recorded_once_not_each(bundle, logins):
    from tenants.models import AuditEvent
    from tests.conftest import as_tenant

    attacker = logins.client("203.0.113.5")
    for _ in range(3):
        _login(attacker, "wrong")
    for _ in range(20):
        assert _login(attacker, "wrong").status_code == 429
    with as_tenant(bundle):
        reasons = list(
            AuditEvent.objects.filter(action="login_failed").order_by("id").values_list("detail__reason", flat=True)
        )
    assert reasons == ["bad credentials"] * 3 + ["throttled"]


def test_addresses_come_from_trusted_proxies_only(bundle, logins, settings):
    import ipaddress

    from tenants.models import AuditEvent
    from tests.conftest import as_tenant

    settings.TRUSTED_PROXY_NETWORKS = (ipaddress.ip_network("10.0.0.0/8"),)
    behind_proxy = logins.client("10.1.2.3")
    behind_proxy.post(
        "/login/", {"username": "acme-owner", "password": "wrong"}, HTTP_X_FORWARDED_FOR="198.51.100.7, 10.9.9.9"
    )
    direct = logins.client("203.0.113.50")  # not a proxy: its header is ignored
    direct.post("/login/", {"username": "acme-owner", "password": "wrong"}, HTTP_X_FORWARDED_FOR="192.0.2.1")
    with as_tenant(bundle):
        addresses = list(AuditEvent.objects.filter(action="login_failed").order_by("id").values_list("ip", flat=True))
    assert addresses == ["198.51.100.7", "203.0.113.50"]
