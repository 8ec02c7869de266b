"""The process's one Redis client and its one "down" switch, for everything that uses Redis: the
search caches and log buffer, the per-key rate limits and login throttling, ``/readyz``.

Nothing needs Redis to answer: a caller treats ``client()`` returning None as "go on without it"
(search uncached, logs written directly, limits not enforced). A failed call reported through
``failed`` turns Redis off for the whole process for ``RETRY_AFTER_SECONDS``, so a dead Redis
costs one short timeout (``REDIS_TIMEOUT``), not one per request. The client follows
``settings.REDIS_URL``: a changed URL gets a new client.
"""

from __future__ import annotations

import logging
import threading
import time

import redis
from django.conf import settings

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5.0
RedisError = redis.RedisError

_lock = threading.Lock()
_client: redis.Redis | None = None
_client_url: str | None = None
_down_until = 0.0


def _connected() -> redis.Redis:
    global _client, _client_url
    url = settings.REDIS_URL
    if _client is None or _client_url != url:
        with _lock:
            if _client is None or _client_url != url:
                _client = redis.Redis.from_url(
                    url,
                    socket_timeout=settings.REDIS_TIMEOUT,
                    socket_connect_timeout=settings.REDIS_TIMEOUT,
                    health_check_interval=30,
                )
                _client_url = url
    return _client


def client() -> redis.Redis | None:
    """The shared client, or None while Redis is switched off after a failure."""
    if time.monotonic() < _down_until:
        return None
    return _connected()


def failed(error: Exception, *, what: str) -> None:
    """A Redis call failed: switch Redis off for everyone in this process for a few seconds."""
    global _down_until
    _down_until = time.monotonic() + RETRY_AFTER_SECONDS
    logger.warning("Redis unavailable (%s); going on without it for %ss: %s", what, RETRY_AFTER_SECONDS, error)


def ping() -> str | None:
    """None if Redis answers now (whatever the switch says), else why not (``/readyz``)."""
    try:
        _connected().ping()
        return None
    except Exception as exc:
        return f"redis unavailable: {exc.__class__.__name__}"


def reset() -> None:
    """Forget the client and any "Redis is down" state (tests, settings changes)."""
    global _client, _client_url, _down_until
    with _lock:
        _client, _client_url, _down_until = None, None, 0.0
