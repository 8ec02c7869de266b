"""Who may search which chatbot, answered without Django's request machinery: the search fast
path's access cache.

The key/chatbot context (key valid, tenant active and its plan, the key's scopes and chatbot
restriction, the chatbot's content version) comes from one prepared SQL statement, or from memory
while this process hears PostgreSQL's ``access_changed`` notifications: triggers send one at commit
whenever a key, tenant, chatbot or space changes (whoever changes it), and every notification
empties the memory. If the listening connection is down, stalled or half-open (it is pinged about
once a second), nothing is remembered and every request reads the database; and no remembered row
is used more than ``ACCESS_CONTEXT_MAX_AGE`` seconds after it was read. So revocation, expiry and
new content apply on the very next request, and a cached answer costs no SQL at all.

``search_access_get`` turns the row into the same ``SearchPrincipal`` that ``ApiKeyAuthentication``
gives the DRF views; the scope and chatbot checks are then the pipeline's own
(``search.services.search_access_check``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass

import psycopg
from django.conf import settings
from django.db import connection
from django.utils import timezone

from tenants import dbroles
from tenants.models import Chatbot
from tenants.principal import SearchPrincipal
from tenants.selectors import api_key_hash

logger = logging.getLogger(__name__)

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
        if row is not None and row[EXPIRES_AT] is not None and row[EXPIRES_AT] <= timezone.now():
            return None  # expired since it was read
        return row

    def clear(self) -> None:
        with self.lock:
            self._forget()


access_cache = AccessCache()


EXPIRES_AT = 4  # app_search_context's columns (tenants/migrations/0008)


@dataclass(frozen=True)
class SearchAccess:
    """What the access row says: who is asking, and the chatbot as this search needs it (its
    tenant and content version; the rest of it is not read)."""

    principal: SearchPrincipal
    chatbot: Chatbot


def search_access_get(*, chatbot_id: int, raw_key: str) -> SearchAccess | None:
    """The key's principal and the chatbot, from memory or one prepared statement; None when the
    key is unknown, revoked or expired, its tenant inactive, or the chatbot not its tenant's. The
    scope and the key's chatbot restriction are checked after, by ``search_access_check``."""
    row = access_cache.get(chatbot_id=chatbot_id, key_hash=api_key_hash(raw_key))
    if row is None:
        return None
    key_id, tenant_id, last_used_at, content_version, _, plan, scopes, key_chatbot_id, prefix = row
    principal = SearchPrincipal(
        tenant_id=tenant_id,
        plan=plan,
        scopes=frozenset(scopes or ()),
        api_key_id=key_id,
        key_prefix=prefix,
        chatbot_id=key_chatbot_id,
        last_used_at=last_used_at,
    )
    return SearchAccess(principal, Chatbot(pk=chatbot_id, tenant_id=tenant_id, content_version=content_version))
