"""Chatbot searches answered in front of Django.

``POST /api/search`` is the hot path: a cached answer should cost a cache lookup, an uncached
one the embedding and the SQL, not a full Django/DRF request around them. ``FastPathWSGI`` wraps
the WSGI application (``chatbot_training/wsgi.py``) and ``SearchFastPathMiddleware`` (first in
``MIDDLEWARE``, for the test client) does the same inside Django. A request is taken only when
every part of it is plainly valid; anything else — an unusual body, a bad key, another tenant's
chatbot, a failure — falls through to the normal view, which answers it (and its errors) in full.

The key/chatbot context (key valid and allowed to search, tenant active and its plan, chatbot
scope, content version) comes from one prepared SQL statement, or from memory while
this process hears PostgreSQL's ``access_changed`` notifications: triggers send one at commit
whenever a key, tenant, chatbot or space changes (whoever changes it), and every notification
empties the memory. If the listening connection is down, stalled or half-open (it is pinged about
once a second), nothing is remembered and every request reads the database; and no remembered row
is used more than ``ACCESS_CONTEXT_MAX_AGE`` seconds after it was read. So revocation, expiry and
new content apply on the very next request, and a cached answer costs no SQL at all.
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
import uuid

import psycopg
from django.conf import settings
from django.db import connection
from django.http import HttpResponse
from django.utils import timezone

from search.apis import search_payload
from search.arguments import search_arguments_parse
from search.services import (
    CachedSearch,
    RateCheck,
    Throttled,
    assignment_key,
    query_plan_build,
    search_cached,
    serving_for,
)
from tenants import dbroles
from tenants.errors import DomainError, error_body
from tenants.models import ApiKey, Chatbot, Tenant
from tenants.ratelimit import WINDOW_SECONDS, limit_for, rate_hit, window_key
from tenants.scoping import no_tenant_context, tenant_context_enter
from tenants.selectors import api_key_hash

logger = logging.getLogger(__name__)

MAX_BODY = 64 * 1024

# The key is looked up before its tenant is known: the owner's SECURITY DEFINER function
# (tenants/migrations/0005) finds it, row-level security would show this connection nothing.
_CONTEXT_SQL = "SELECT * FROM app_search_context(%(hash)s, %(chatbot)s)"


def _context_query(*, chatbot_id: int, key_hash: str):
    """The key and chatbot row, as a server-side prepared statement (planned once per
    connection)."""
    connection.ensure_connection()
    with psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(_CONTEXT_SQL, {"chatbot": chatbot_id, "hash": key_hash}, prepare=True)
        return cursor.fetchone()


class AccessCache:
    """Context rows by (key hash, chatbot id), kept only while a dedicated connection LISTENs to
    ``access_changed`` and is known to be alive:

    - every notification empties the memory and moves ``generation`` on; a row read from the
      database is stored only if the generation is the one before the read (a revocation heard
      while the query ran must not be overwritten by what the query saw);
    - a row is used at most ``max_age`` seconds after it was read (``ACCESS_CONTEXT_MAX_AGE``),
      then read again, so nothing outlives a few seconds without a fresh confirmation;
    - the listener is pinged: about once a second this process sends ``NOTIFY`` on a channel of
      its own through its ordinary connection and expects it back on the listening one within
      ``ACCESS_LISTENER_TIMEOUT``; a listener that stalls or goes half-open misses it, is dropped,
      and nothing is remembered until a fresh one answers.

    ``query`` reads a row from the database (a seam for tests)."""

    LISTEN_RETRY_SECONDS = 5.0
    MAX_ROWS = 10000
    PING_SECONDS = 1.0

    def __init__(self, query=None):
        self.query = query or _context_query
        self.rows: dict = {}  # (key hash, chatbot id) -> (row, monotonic time it was read)
        self.generation = 0
        self.heard = 0  # access_changed notifications drained (tests wait on it)
        self.lock = threading.Lock()
        self.listener = None
        self.pid = None
        self.retry_at = 0.0
        self.channel = ""
        self.ping_sent_at: float | None = None
        self.ping_token = ""
        self.confirmed_at = 0.0  # when the listener last proved it hears us

    @property
    def max_age(self) -> float:
        return settings.ACCESS_CONTEXT_MAX_AGE

    def _connect(self) -> None:
        params = dbroles.plain_connection_params()
        keepalive = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 2}
        listener = psycopg.connect(**params, **keepalive, autocommit=True, connect_timeout=2)
        self.channel = f"access_ping_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        listener.execute("LISTEN access_changed")
        listener.execute(f"LISTEN {self.channel}")
        self.listener, self.pid = listener, os.getpid()
        self.ping_sent_at, self.confirmed_at = None, time.monotonic()
        self._forget()  # anything remembered before may have missed a notification

    def _forget(self) -> None:
        self.rows.clear()
        self.generation += 1

    def _drop(self) -> None:
        if self.listener is not None and self.pid == os.getpid():
            try:
                self.listener.close()
            except Exception:
                pass
        self.listener = None
        self._forget()
        self.retry_at = time.monotonic() + self.LISTEN_RETRY_SECONDS

    def _drain(self) -> None:
        """Read whatever arrived (non-blocking); a dead or broken connection raises."""
        pgconn = self.listener.pgconn
        # Twice: a terminated backend sends its FATAL message first; the second read sees the
        # close (on a healthy connection it is one more non-blocking recv).
        pgconn.consume_input()
        pgconn.consume_input()
        while (notify := pgconn.notifies()) is not None:
            if notify.relname.decode() == self.channel:
                if self.ping_sent_at is not None and notify.extra.decode() == self.ping_token:
                    self.confirmed_at, self.ping_sent_at = time.monotonic(), None
            else:
                self.heard += 1
                self._forget()
        if pgconn.status != psycopg.pq.ConnStatus.OK:
            raise psycopg.OperationalError("listener connection lost")

    def _ping(self, now: float) -> None:
        """Ask for a notification on our own channel, through the ordinary connection."""
        self.ping_token = uuid.uuid4().hex
        self.ping_sent_at = now
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, %s)", [self.channel, self.ping_token])

    def _listening(self) -> bool:
        """Drain notifications and check the listener is alive; False if rows may not be used."""
        if self.listener is not None and self.pid != os.getpid():  # a forked child: not our socket
            self.listener = None
            self._forget()
        if self.listener is None:
            if time.monotonic() < self.retry_at:
                return False
            try:
                self._connect()
            except Exception:
                logger.warning("search fast path: cannot LISTEN for access changes", exc_info=True)
                self._drop()
                return False
        try:
            self._drain()
            now = time.monotonic()
            if self.ping_sent_at is not None and now - self.ping_sent_at > settings.ACCESS_LISTENER_TIMEOUT:
                raise psycopg.OperationalError(
                    f"listener did not hear its own ping within {settings.ACCESS_LISTENER_TIMEOUT:g} s"
                )
            if self.ping_sent_at is None and now - self.confirmed_at > self.PING_SECONDS:
                self._ping(now)
        except Exception:
            logger.warning("search fast path: access-change listener lost or stalled; reconnecting", exc_info=True)
            self._drop()
            return False
        return True

    def get(self, *, chatbot_id: int, key_hash: str):
        if connection.in_atomic_block:  # inside a transaction (tests): its own changes are not notified yet
            return self.query(chatbot_id=chatbot_id, key_hash=key_hash)
        key = (key_hash, chatbot_id)
        with self.lock:
            listening = self._listening()
            entry = self.rows.get(key) if listening else None
            generation = self.generation
        now = time.monotonic()
        if entry is not None and now - entry[1] <= self.max_age:
            row = entry[0]
        else:
            row = self.query(chatbot_id=chatbot_id, key_hash=key_hash)
            if row is not None and listening:
                with self.lock:
                    try:
                        if self.listener is not None:
                            self._drain()  # hear what arrived while the query ran
                    except Exception:
                        self._drop()
                    if self.listener is not None and self.generation == generation:
                        if len(self.rows) >= self.MAX_ROWS:
                            self.rows.clear()
                        self.rows[key] = (row, now)
        if row is not None and row[4] is not None and row[4] <= timezone.now():
            return None  # expired since it was read
        return row

    def clear(self) -> None:
        with self.lock:
            self._forget()


access_cache = AccessCache()


def _context(*, chatbot_id: int, key_hash: str):
    return access_cache.get(chatbot_id=chatbot_id, key_hash=key_hash)


def search_answer(meta: dict, body: bytes) -> tuple[int, bytes, int | None] | None:
    """``(status, JSON body, Retry-After)`` for a search request (``meta``: WSGI environ or
    ``request.META``): 200 with the results, or 429 when the key is over its plan's rate limit;
    None when the full path must answer it. Starts with no tenant scope, like any request."""
    with no_tenant_context():
        return _search_answer(meta, body)


def _search_answer(meta: dict, body: bytes) -> tuple[int, bytes, int | None] | None:
    parts = meta.get("HTTP_AUTHORIZATION", "").split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return None
    if not meta.get("CONTENT_TYPE", "").startswith("application/json") or len(body) > MAX_BODY:
        return None
    try:
        args = search_arguments_parse(json.loads(body, parse_constant=_no_constant))
    except (ValueError, RecursionError, DomainError):  # the full path answers it, with the same message
        return None
    row = _context(chatbot_id=args.chatbot_id, key_hash=api_key_hash(parts[1]))
    if row is None:
        return None
    key_id, tenant_id, last_used, content_version, _, tenant_plan = row
    from search.services import search_run  # looked up per call (tests patch it)

    tenant_context_enter(tenant_id)  # the rest acts as the key's tenant (search_answer ends it)
    chatbot = Chatbot(pk=args.chatbot_id, tenant_id=tenant_id, content_version=content_version)
    assignment = assignment_key(query=args.query, user_id=args.end_user, conversation_id=args.conversation_id)
    serving = serving_for(chatbot, create=False, assignment=assignment)
    if serving is None:  # a chatbot that holds no space yet: the full path gives it one
        return None
    began = time.perf_counter()
    request = CachedSearch(
        tenant_id=tenant_id,
        chatbot_id=args.chatbot_id,
        content_version=content_version,
        space=serving.space,
        plan=query_plan_build(query=args.query, conversation=list(args.conversation)),
        mode=args.mode,
        max_results=args.max_results,
        threshold=args.threshold,
        filters=args.filters,
        weight=args.weight,
        conversation=list(args.conversation),
        api_key_id=key_id,
        user_id=None,
        source="api",
        variant=serving.variant,
    )
    rate_key, retry_after = window_key(key_id)
    rate = RateCheck(key=rate_key, limit=limit_for(tenant_plan), ttl=WINDOW_SECONDS + 5, retry_after=retry_after)
    try:
        result, counted = search_cached(request, began=began, rate=rate)
        if not counted:
            retry_after = rate_hit(key_id=key_id, plan=tenant_plan)
            if retry_after is not None:
                raise Throttled(retry_after)
    except Throttled as throttled:
        message = f"Too many requests for this API key; retry in {throttled.retry_after} s."
        return 429, _json(error_body("throttled", message)), throttled.retry_after
    if result is not None:
        _touch(key_id, last_used)
        return 200, _json(search_payload(result)), None
    try:
        result = search_run(
            tenant=Tenant(pk=tenant_id),
            chatbot=chatbot,
            serving=serving,
            cache_checked=True,
            query=args.query,
            max_results=args.max_results,
            similarity_threshold=args.threshold,
            mode=args.mode,
            filters=args.filters,
            conversation=list(args.conversation),
            semantic_weight=args.weight,
            api_key=ApiKey(pk=key_id, tenant_id=tenant_id),
            end_user=args.end_user,
            conversation_id=args.conversation_id,
        )
    except Exception:  # the full path runs it again and answers the error properly
        logger.warning("search fast path gave up; the full path takes over", exc_info=True)
        return None
    _touch(key_id, last_used)
    return 200, _json(search_payload(result)), None


def _no_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


TOUCH_SECONDS = 60
_touched: dict[int, float] = {}  # key id -> when this process last wrote its last_used_at


def _touch(key_id: int, last_used) -> None:
    """``last_used_at`` to the minute: written when the row read says it is older than that and
    this process has not written it in the last minute (the remembered row keeps its old value)."""
    if last_used is not None and (timezone.now() - last_used).total_seconds() <= TOUCH_SECONDS:
        return
    now = time.monotonic()
    if now - _touched.get(key_id, -TOUCH_SECONDS) <= TOUCH_SECONDS:
        return
    if len(_touched) > 10000:
        _touched.clear()
    _touched[key_id] = now
    with connection.cursor() as cursor:  # in the key's tenant scope (see _search_answer)
        cursor.execute("UPDATE tenants_apikey SET last_used_at = now() WHERE id = %s", [key_id])


def _json(body: dict) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


HEADERS = [
    ("Content-Type", "application/json"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
]


def _secure(environ: dict) -> bool:
    header = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if header:
        return environ.get(header[0], "").split(",")[0].strip() == header[1]
    return environ.get("wsgi.url_scheme") == "https"


def _headers(secure: bool, retry_after: int | None = None) -> list[tuple[str, str]]:
    """What SecurityMiddleware would add to this response (and Retry-After of a 429)."""
    if retry_after is not None:
        return [*_headers(secure), ("Retry-After", str(retry_after))]
    if secure and settings.SECURE_HSTS_SECONDS:
        hsts = f"max-age={settings.SECURE_HSTS_SECONDS}"
        if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS:
            hsts += "; includeSubDomains"
        if settings.SECURE_HSTS_PRELOAD:
            hsts += "; preload"
        return [*HEADERS, ("Strict-Transport-Security", hsts)]
    return HEADERS


class SearchFastPathMiddleware:
    """The fast path inside Django (the test client, or a server not using ``FastPathWSGI``)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        secure = _secure(request.META)
        if (
            request.method == "POST"
            and request.path_info == "/api/search"
            and (secure or not settings.SECURE_SSL_REDIRECT)  # else Django redirects it
        ):
            try:
                answer = search_answer(request.META, request.body)
            except Exception:
                logger.warning("search fast path gave up; the full path takes over", exc_info=True)
                answer = None
            if answer is not None:
                status, content, retry_after = answer
                response = HttpResponse(content, status=status)
                for name, value in _headers(secure, retry_after):
                    response[name] = value
                response["Content-Length"] = str(len(content))
                return response
        return self.get_response(request)


class FastPathWSGI:
    """The fast path in front of Django's WSGI handler: no request object, signals or middleware
    for a search it can answer; everything else goes to Django untouched (a body read here is
    handed on)."""

    def __init__(self, application):
        self.application = application

    def __call__(self, environ, start_response):
        secure = _secure(environ)
        if (
            environ.get("REQUEST_METHOD") == "POST"
            and environ.get("PATH_INFO") == "/api/search"
            and (secure or not settings.SECURE_SSL_REDIRECT)  # else Django redirects it
        ):
            try:
                length = int(environ.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = -1
            if 0 < length <= MAX_BODY:
                body = environ["wsgi.input"].read(length)
                environ["wsgi.input"] = io.BytesIO(body)
                answer = None
                try:
                    answer = search_answer(environ, body)
                except Exception:  # e.g. the database went away: Django answers (and reconnects)
                    logger.warning("search fast path gave up; the full path takes over", exc_info=True)
                if answer is not None:
                    status, content, retry_after = answer
                    start_response(
                        "200 OK" if status == 200 else "429 Too Many Requests",
                        [*_headers(secure, retry_after), ("Content-Length", str(len(content)))],
                    )
                    return [content]
        return self.application(environ, start_response)
