"""Streaming replicas for search reads: ``DATABASE_REPLICA_URLS`` (comma separated, app-role URLs).

Each URL becomes a connection alias ``replica_0``, ``replica_1``, ... built like the primary's (the
same engine, so the row-level security scope is set per transaction on a replica exactly as on the
primary). Only the read-only search SQL and analytics (``search/selectors/``) ask for one, through ``read``;
everything else, writes, LISTEN/NOTIFY and the reads right after a write (a document's status after
its upload) stay on the primary through the ordinary router.

``read(work)`` runs ``work(connection)`` on a healthy replica (round robin) in web processes; a
replica that fails (connection refused, recovery conflict, statement timeout, shut down) is marked
down for ``DATABASE_REPLICA_RETRY_SECONDS`` and the same work runs again on the primary within the
same request, so no request fails because a replica did. Inside a transaction on the primary, in a
cross-tenant scope, or outside a web process (workers read what they have just written), the work
runs on the primary.

``caught_up(check)`` scopes the reads of one search to what the caller has seen on the primary: a
replica serves them only once ``check(replica)`` says it has replayed that far (the search checks
the chatbot's ``content_version``, which every content change bumps in or after its own
transaction, and replay keeps commit order). A lagging replica is not marked down: that search
reads from the primary, so its answer (and the cache entry keyed on that content version) holds the
newest content.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from prometheus_client import Counter

logger = logging.getLogger(__name__)

PREFIX = "replica_"
T = TypeVar("T")

_down_until: dict[str, float] = {}
_lock = threading.Lock()
_turn = itertools.count()

READS = Counter(
    "chatbot_replica_reads_total",
    "Search reads sent to a read replica, by outcome: served there, lagging (read from the primary), failed.",
    ["replica", "outcome"],
)


class _Expectation:
    """What the reads of one ``caught_up`` block require of a replica, and which replicas met it."""

    def __init__(self, check: Callable):
        self.check = check
        self.met: set[str] = set()


_expected: contextvars.ContextVar[_Expectation | None] = contextvars.ContextVar("replica_expectation", default=None)


@contextlib.contextmanager
def caught_up(check: Callable):
    """Within: a replica serves a read only if ``check(connection)`` is true on it (asked once per
    replica and block: replay only moves forward); otherwise the read runs on the primary."""
    token = _expected.set(_Expectation(check))
    try:
        yield
    finally:
        _expected.reset(token)


def _has_caught_up(alias: str, connection) -> bool:
    expectation = _expected.get()
    if expectation is None or alias in expectation.met:
        return True
    if not expectation.check(connection):
        return False
    expectation.met.add(alias)
    return True


def databases(env, make) -> dict:
    """Extra ``DATABASES`` entries, one per URL of ``DATABASE_REPLICA_URLS`` (``make`` builds an entry from a URL)."""
    urls = [url.strip() for url in env.list("DATABASE_REPLICA_URLS", default=[]) if url.strip()]
    connect_timeout = env.int("DATABASE_REPLICA_CONNECT_TIMEOUT", default=2)
    retry_seconds = env.float("DATABASE_REPLICA_RETRY_SECONDS", default=5.0)
    entries = {}
    for number, url in enumerate(urls):
        config = make(url)
        config["OPTIONS"]["connect_timeout"] = connect_timeout  # a replica that is gone costs this, once
        pool = config["OPTIONS"].get("pool")
        if isinstance(pool, dict):
            pool.setdefault("timeout", connect_timeout)
        config["TEST"] = {"MIRROR": "default"}  # no test database of its own (and no migrations: the router)
        config["REPLICA_RETRY_SECONDS"] = retry_seconds
        entries[f"{PREFIX}{number}"] = config
    return entries


def aliases() -> list[str]:
    from django.conf import settings

    return [alias for alias in settings.DATABASES if alias.startswith(PREFIX)]


def _usable() -> list[str]:
    from django.conf import settings
    from django.db import connections

    from tenants.scope import current_scope

    if settings.PROCESS_KIND != "web" or current_scope().cross_tenant:
        return []
    if connections["default"].in_atomic_block:  # the caller's own uncommitted writes are on the primary
        return []
    now = time.monotonic()
    with _lock:
        return [alias for alias in aliases() if _down_until.get(alias, 0.0) <= now]


def choose() -> str | None:
    """The replica alias the next search read goes to, None for the primary."""
    usable = _usable()
    if not usable:
        return None
    return usable[next(_turn) % len(usable)]


def mark_down(alias: str, error: Exception) -> None:
    from django.conf import settings

    seconds = float(settings.DATABASES[alias].get("REPLICA_RETRY_SECONDS", 5.0))
    with _lock:
        _down_until[alias] = time.monotonic() + seconds
    logger.warning("read replica %s failed (%s): reading from the primary for %.0f s", alias, error, seconds)


def status() -> dict[str, bool]:
    """Whether each replica is taken for reads now (True) or marked down."""
    now = time.monotonic()
    with _lock:
        return {alias: _down_until.get(alias, 0.0) <= now for alias in aliases()}


def reset() -> None:
    with _lock:
        _down_until.clear()


def read(work: Callable[..., T]) -> T:
    """``work(connection)`` on a replica when one is usable, else (or when it fails) on the primary
    (the scope's own connection: ``tenants.routers.scope_alias``)."""
    from django.db import DatabaseError, InterfaceError, OperationalError, connections

    from tenants.routers import scope_alias

    alias = choose()
    if alias is not None:
        replica = connections[alias]
        try:
            if _has_caught_up(alias, replica):
                answer = work(replica)
                READS.labels(alias, "served").inc()
                return answer
            READS.labels(alias, "lagging").inc()
        except (OperationalError, InterfaceError) as exc:
            READS.labels(alias, "failed").inc()
            mark_down(alias, exc)
            with contextlib.suppress(DatabaseError):
                replica.close()  # a broken session is not reused; the next try connects afresh
    return work(connections[scope_alias()])
