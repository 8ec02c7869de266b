"""The WSGI fast path and its in-memory key/chatbot context, against the real database with
committed data (a transactional test: PostgreSQL only sends NOTIFY at commit). Ingestion runs
eagerly in-process; requests are WSGI calls to the application object that servers load."""

import io
import json
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from search import access, fastpath
from tests.conftest import SAMPLE_FAQ_CSV, as_tenant, ingest, make_upload

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def wsgi(monkeypatch):
    from django.core.wsgi import get_wsgi_application

    monkeypatch.setenv("EMBEDDING_WARM_UP", "0")
    access.access_cache.clear()
    app = fastpath.FastPathWSGI(get_wsgi_application())
    queries = []

    def counted(**kwargs):
        queries.append(kwargs)
        return access._context_query(**kwargs)

    monkeypatch.setattr(access.access_cache, "query", counted)  # the cache's seam for its database read

    def call(key: str, body: dict):
        raw = json.dumps(body).encode()
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": "/api/search",
            "SERVER_NAME": "testserver",
            "SERVER_PORT": "80",
            "HTTP_HOST": "testserver",
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(raw),
            "CONTENT_LENGTH": str(len(raw)),
            "CONTENT_TYPE": "application/json",
            "HTTP_AUTHORIZATION": f"Bearer {key}",
        }
        started = []
        chunks = app(environ, lambda status, headers: started.append((status, dict(headers))))
        content = b"".join(chunks)
        if hasattr(chunks, "close"):
            chunks.close()
        status, headers = started[0]
        return int(status.split()[0]), headers, json.loads(content)

    call.context_queries = queries
    yield call
    access.access_cache._drop()
    access.access_cache.retry_at = 0.0


def _heard(before: int, timeout: float = 2.0) -> None:
    """Wait until the fast path's listener has drained a notification after ``before``
    (PostgreSQL delivers it to the listening connection just after the commit)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with access.access_cache.lock:
            access.access_cache._listening()
            if access.access_cache.heard > before:
                return
        time.sleep(0.005)
    raise AssertionError("no access_changed notification arrived")


def test_cached_answers_need_no_sql_until_access_changes(bundle, wsgi):
    from tenants.models import ApiKey
    from tenants.services import api_key_revoke

    ingest(bundle, make_upload("faq.csv", SAMPLE_FAQ_CSV), content_type="faq")
    body = {"query": "How can I pay?", "chatbot_id": bundle.chatbot.pk, "max_results": 2}
    status, headers, first = wsgi(bundle.api_key, body)
    assert status == 200 and first["cached"] is False and headers["X-Content-Type-Options"] == "nosniff"
    assert "X-Frame-Options" not in headers  # answered in front of Django's middleware
    assert len(wsgi.context_queries) == 1
    status, _, again = wsgi(bundle.api_key, body)
    assert status == 200 and again["cached"] is True and again["results"] == first["results"]
    assert len(wsgi.context_queries) == 1  # the context came from memory: no SQL at all

    before = access.access_cache.heard
    ingest(bundle, make_upload("pay.txt", "You can also pay with PayPal."))  # content version bump
    _heard(before)
    assert wsgi(bundle.api_key, body)[2]["cached"] is False
    assert len(wsgi.context_queries) == 2

    before = access.access_cache.heard
    with as_tenant(bundle):
        api_key_revoke(tenant=bundle.tenant, api_key_id=ApiKey.objects.get(prefix=bundle.api_key[:12]).pk)
    _heard(before)
    status, headers, answer = wsgi(bundle.api_key, body)
    assert status == 401 and "X-Frame-Options" in headers, answer  # the full path answered


def test_changes_made_in_plain_sql_are_heard_too(bundle, other_bundle, wsgi):
    ingest(bundle, make_upload("faq.csv", SAMPLE_FAQ_CSV), content_type="faq")
    body = {"query": "How can I pay?", "chatbot_id": bundle.chatbot.pk}
    assert wsgi(bundle.api_key, body)[0] == 200
    before = access.access_cache.heard
    with as_tenant(bundle), connection.cursor() as cursor:  # e.g. deactivating the tenant by hand
        cursor.execute("UPDATE tenants_tenant SET is_active = false WHERE id = %s", [bundle.tenant.pk])
        assert cursor.rowcount == 1
    _heard(before)
    assert wsgi(bundle.api_key, body)[0] == 401
    assert wsgi(other_bundle.api_key, {**body, "chatbot_id": other_bundle.chatbot.pk})[0] == 200


def test_expiry_applies_without_any_change(bundle, wsgi):
    from tenants.models import ApiKey

    ingest(bundle, make_upload("faq.csv", SAMPLE_FAQ_CSV), content_type="faq")
    body = {"query": "How can I pay?", "chatbot_id": bundle.chatbot.pk}
    assert wsgi(bundle.api_key, body)[0] == 200  # listening from here on
    before = access.access_cache.heard
    with as_tenant(bundle):
        ApiKey.objects.filter(prefix=bundle.api_key[:12]).update(expires_at=timezone.now() + timedelta(seconds=1))
    _heard(before)
    body = {"query": "How can I pay?", "chatbot_id": bundle.chatbot.pk}
    assert wsgi(bundle.api_key, body)[0] == 200
    assert wsgi(bundle.api_key, body)[0] == 200 and len(wsgi.context_queries) == 2
    time.sleep(1.1)
    assert wsgi(bundle.api_key, body)[0] == 401


def test_without_the_listener_nothing_is_remembered(bundle, wsgi):
    """The listening connection killed (e.g. a database restart): every request reads the
    database until it listens again; answers stay right throughout."""
    ingest(bundle, make_upload("faq.csv", SAMPLE_FAQ_CSV), content_type="faq")
    body = {"query": "How can I pay?", "chatbot_id": bundle.chatbot.pk}
    assert wsgi(bundle.api_key, body)[0] == 200
    listener_pid = access.access_cache.listener.info.backend_pid
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [listener_pid])
    time.sleep(0.2)
    for expected_queries in (2, 3):
        assert wsgi(bundle.api_key, body)[0] == 200
        assert len(wsgi.context_queries) == expected_queries
    assert access.access_cache.listener is None
    access.access_cache.retry_at = 0.0  # the retry delay has passed
    assert wsgi(bundle.api_key, body)[0] == 200
    assert access.access_cache.listener is not None


def test_a_row_read_before_a_revocation_is_not_remembered_after_it(bundle, wsgi):
    """The race, made deterministic: a request reads the key's context (valid), and while its
    query runs the key is revoked and the notification heard (as another thread would). The row
    it read must not be stored: the next request reads the database and is refused."""
    from tenants.models import ApiKey
    from tenants.selectors import api_key_hash
    from tenants.services import api_key_revoke

    ingest(bundle, make_upload("faq.csv", SAMPLE_FAQ_CSV), content_type="faq")
    cache = access.AccessCache()
    reads = []

    def revoked_while_reading(**kwargs):
        row = access._context_query(**kwargs)
        reads.append(row)
        if len(reads) == 1:
            before = cache.heard
            with as_tenant(bundle):
                api_key_revoke(tenant=bundle.tenant, api_key_id=ApiKey.objects.get(prefix=bundle.api_key[:12]).pk)
            deadline = time.monotonic() + 2
            while cache.heard == before and time.monotonic() < deadline:  # another thread drains it
                with cache.lock:
                    cache._listening()
                time.sleep(0.005)
            assert cache.heard > before
        return row

    cache.query = revoked_while_reading
    key_hash = api_key_hash(bundle.api_key)
    try:
        assert cache.get(chatbot_id=bundle.chatbot.pk, key_hash=key_hash) is not None  # read before it was revoked
        assert cache.get(chatbot_id=bundle.chatbot.pk, key_hash=key_hash) is None  # not from memory
        assert len(reads) == 2 and reads[1] is None
    finally:
        cache._drop()


def test_a_remembered_row_is_read_again_after_its_maximum_age(bundle, wsgi, settings):
    settings.ACCESS_CONTEXT_MAX_AGE = 0.3
    ingest(bundle, make_upload("faq.csv", SAMPLE_FAQ_CSV), content_type="faq")
    body = {"query": "How can I pay?", "chatbot_id": bundle.chatbot.pk}
    assert wsgi(bundle.api_key, body)[0] == 200 and wsgi(bundle.api_key, body)[0] == 200
    assert len(wsgi.context_queries) == 1  # the second came from memory
    time.sleep(0.4)
    assert wsgi(bundle.api_key, body)[0] == 200 and len(wsgi.context_queries) == 2


def test_a_stalled_listener_is_noticed_and_a_revoked_key_stops_within_seconds(bundle, wsgi, settings):
    """The listening connection's server process is stopped (SIGSTOP: as a stalled or half-open
    connection, it neither errors nor delivers). The key is revoked: the fast path must stop
    answering for it within the listener timeout and maximum age, without any notification."""
    import os
    import signal

    from tenants.models import ApiKey
    from tenants.services import api_key_revoke

    settings.ACCESS_CONTEXT_MAX_AGE = 30  # long: only the listener's health check can save us here
    settings.ACCESS_LISTENER_TIMEOUT = 1.0
    ingest(bundle, make_upload("faq.csv", SAMPLE_FAQ_CSV), content_type="faq")
    body = {"query": "How can I pay?", "chatbot_id": bundle.chatbot.pk}
    assert wsgi(bundle.api_key, body)[0] == 200 and wsgi(bundle.api_key, body)[0] == 200
    assert len(wsgi.context_queries) == 1
    backend = access.access_cache.listener.info.backend_pid
    os.kill(backend, signal.SIGSTOP)
    try:
        with as_tenant(bundle):
            api_key_revoke(tenant=bundle.tenant, api_key_id=ApiKey.objects.get(prefix=bundle.api_key[:12]).pk)
        began, answers = time.monotonic(), []
        while time.monotonic() - began < 10:
            status = wsgi(bundle.api_key, body)[0]
            answers.append(status)
            if status == 401:
                break
            time.sleep(0.1)
        assert answers[-1] == 401, answers
        assert time.monotonic() - began < 1.0 + access.AccessCache.PING_SECONDS + 1.5  # ping interval + timeout
        assert access.access_cache.listener is None or access.access_cache.listener.info.backend_pid != backend
    finally:
        os.kill(backend, signal.SIGCONT)


def test_a_plan_change_or_a_scope_change_is_heard(bundle, wsgi, settings):
    """The remembered row carries the tenant's plan (its rate limit) and stands for the key's
    search scope: changing either notifies, and the next request is answered under the new one."""
    from tenants.models import ApiKey, Tenant

    settings.API_RATE_LIMITS = {"free": 1, "standard": 1000, "enterprise": 1000}
    ingest(bundle, make_upload("faq.csv", SAMPLE_FAQ_CSV), content_type="faq")
    body = {"query": "How can I pay?", "chatbot_id": bundle.chatbot.pk}
    assert [wsgi(bundle.api_key, body)[0] for _ in range(3)] == [200, 200, 200]
    before = access.access_cache.heard
    with as_tenant(bundle):
        Tenant.objects.filter(pk=bundle.tenant.pk).update(plan="free")
    _heard(before)
    assert wsgi(bundle.api_key, {**body, "query": "refund"})[0] == 429  # the free plan's one request a minute is used
    before = access.access_cache.heard
    with as_tenant(bundle):
        Tenant.objects.filter(pk=bundle.tenant.pk).update(plan="standard")
        ApiKey.objects.filter(prefix=bundle.api_key[:12]).update(scopes=["read"])
    _heard(before)
    status, headers, _ = wsgi(bundle.api_key, body)
    assert status == 403 and "X-Frame-Options" in headers  # no longer a search key: the full path refuses
