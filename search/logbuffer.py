"""Search logs are written in batches: a search appends its row to a Redis list (a fraction of a
millisecond) and ``search_logs_flush`` moves rows into PostgreSQL with one ``COPY``-like bulk
insert. Flushes happen from a background thread in every web process (about once a second),
from a beat task (safety net), and on demand before anything reads the logs (analytics,
feedback). With Redis down a search writes its row directly.
"""

from __future__ import annotations

import atexit
import json
import logging
import threading
import uuid

from django.conf import settings
from django.db import IntegrityError, close_old_connections, connection, transaction

from tenants import redis_client
from tenants.redis_client import RedisError

logger = logging.getLogger(__name__)
BATCH = 1000
_flusher: threading.Thread | None = None
_flusher_lock = threading.Lock()
_stopping = threading.Event()


def _key() -> str:
    return f"{settings.SEARCH_CACHE_PREFIX}logs"


def search_log_enqueue(row: dict) -> None:
    """Queue one SearchLog row (field names as on the model); written directly without Redis."""
    from search.models import SearchLog

    if settings.SEARCH_LOG_BUFFER:
        client = redis_client.client()
        if client is not None:
            try:
                client.rpush(_key(), json.dumps(row, default=str))
                if settings.SEARCH_LOG_FLUSHER_THREAD:
                    _ensure_flusher()
                return
            except RedisError as error:
                redis_client.failed(error, what="search log buffer")
    SearchLog.objects.create(**_model_fields(row))


# One Redis round trip for a cached answer: count the request against the key's rate limit; if
# allowed, read the answer and queue its log row (the cached value appended as "from_cache",
# completed from it when written). Returns {allowed, value}.
_GET_AND_LOG = """
local count = redis.call('INCR', KEYS[3])
if count == 1 then redis.call('EXPIRE', KEYS[3], ARGV[3]) end
if count > tonumber(ARGV[2]) then return {0, false} end
local value = redis.call('GET', KEYS[1])
if value then redis.call('RPUSH', KEYS[2], ARGV[1] .. value .. '}') end
return {1, value}
"""
_script = None


def cached_get_logged(key: str, row: dict, *, rate_key: str, rate_limit: int, rate_ttl: int):
    """``(allowed, value)``: whether the request is within its key's rate limit (counted here),
    and the value cached at ``key`` (None if absent); when present, ``row`` (a log row without its
    result fields) is queued in the same round trip. None if Redis is unavailable."""
    global _script
    client = redis_client.client()
    if client is None:
        return None
    if _script is None:
        _script = client.register_script(_GET_AND_LOG)
    head = json.dumps(row, default=str)
    try:
        allowed, value = _script(
            keys=[key, _key(), rate_key], args=[head[:-1] + ',"from_cache":', rate_limit, rate_ttl], client=client
        )
    except RedisError as error:
        redis_client.failed(error, what="search log buffer")
        return None
    if value is not None and settings.SEARCH_LOG_FLUSHER_THREAD:
        _ensure_flusher()
    return bool(allowed), value


def _model_fields(row: dict) -> dict:
    fields = dict(row)
    fields["query_id"] = uuid.UUID(str(fields["query_id"]))
    cached = fields.pop("from_cache", None)
    if cached is not None:
        from search.selectors import Hit
        from search.services import result_fields

        fields.update(result_fields([Hit(**hit) for hit in cached["results"]], fields["mode"]))
        fields["strategy"] = fields.get("strategy") or cached.get("strategy", "")
    return fields


def search_logs_flush(*, limit: int = 100_000) -> int:
    """Move queued rows into the database; returns how many were written. The queue holds every
    tenant's searches; each row names its tenant and is written in that tenant's scope (one
    insert per tenant in a batch), so flushing needs no cross-tenant access."""
    from tenants.scoping import no_tenant_context

    with no_tenant_context():
        return _flush(limit)


def _write_as_tenants(rows: list) -> None:
    from search.models import SearchLog
    from tenants.scoping import tenant_context

    by_tenant: dict[int, list] = {}
    for row in rows:
        by_tenant.setdefault(row.tenant_id, []).append(row)
    for tenant_id, group in by_tenant.items():
        with tenant_context(tenant_id):
            try:
                with transaction.atomic():
                    _constraints_now()
                    SearchLog.objects.bulk_create(group, ignore_conflicts=True)
            except IntegrityError:  # a key, user or chatbot was deleted meanwhile
                _insert_each(group)


def _flush(limit: int) -> int:
    from search.models import SearchLog

    client = redis_client.client()
    if client is None:
        return 0
    written = 0
    while written < limit:
        try:
            with client.pipeline(transaction=True) as pipe:
                pipe.lrange(_key(), 0, BATCH - 1)
                pipe.ltrim(_key(), BATCH, -1)
                raw, _ = pipe.execute()
        except RedisError as error:
            redis_client.failed(error, what="search log buffer")
            return written
        if not raw:
            break
        rows = []
        for item in raw:
            try:
                rows.append(SearchLog(**_model_fields(json.loads(item))))
            except (ValueError, TypeError) as error:  # a malformed row must not block the others
                logger.error("dropping an unreadable search log row: %s", error)
        try:
            _write_as_tenants(rows)
        except Exception:
            # Put the rows back so a database hiccup loses nothing; the next flush retries.
            try:
                client.lpush(_key(), *reversed(raw))
            except RedisError as error:
                redis_client.failed(error, what="search log buffer")
            raise
        written += len(rows)
    return written


def _constraints_now() -> None:
    """Django's foreign keys are deferred to commit; check them per statement here, so a bad row
    is caught where it can be handled."""
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")


def _insert_each(rows) -> None:
    """Row by row: a row whose API key or user is gone keeps the search without them; a row
    whose chatbot or tenant is gone is dropped (its logs would have been deleted with it)."""
    for row in rows:
        for attempt in range(2):
            try:
                with transaction.atomic():
                    _constraints_now()
                    row.save(force_insert=True)
                break
            except IntegrityError:
                if attempt == 0:
                    row.api_key_id = row.user_id = None
                else:
                    logger.warning("dropping the log of search %s: its chatbot is gone", row.query_id)


def _loop() -> None:
    while not _stopping.wait(settings.SEARCH_LOG_FLUSH_SECONDS):
        try:
            close_old_connections()
            search_logs_flush()
        except Exception:  # keep flushing after a database outage
            logger.exception("search log flush failed; retrying")


def _ensure_flusher() -> None:
    global _flusher
    if _flusher is not None and _flusher.is_alive():
        return
    with _flusher_lock:
        if _flusher is None or not _flusher.is_alive():
            _flusher = threading.Thread(target=_loop, name="search-log-flusher", daemon=True)
            _flusher.start()
            atexit.register(_flush_at_exit)


def _flush_at_exit() -> None:
    _stopping.set()
    try:
        search_logs_flush()
    except Exception:
        logger.exception("search logs could not be flushed at exit; they stay queued in Redis")
