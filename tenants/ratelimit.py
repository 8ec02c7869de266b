"""Per-API-key request limits by tenant plan, counted in Redis (fixed one-minute windows).

``API_RATE_LIMITS`` maps a plan to requests per minute per key. A key over its limit gets 429
with ``Retry-After`` (seconds to the next window). Counting never blocks a request when Redis is
unavailable: the limit fails open for a few seconds and a warning is logged.
"""

from __future__ import annotations

import logging
import time

import redis
from django.conf import settings

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60
_now = time.time  # tests pin the clock
_client: redis.Redis | None = None
_down_until = 0.0


def limit_for(plan: str) -> int:
    limits = settings.API_RATE_LIMITS
    return int(limits.get(plan, limits["standard"]))


def window_key(key_id: int, now: float | None = None) -> tuple[str, int]:
    """The counter of the current window and the seconds until the next one starts."""
    now = _now() if now is None else now
    window = int(now // WINDOW_SECONDS)
    retry_after = max(1, int((window + 1) * WINDOW_SECONDS - now + 0.999))
    return f"{settings.SEARCH_CACHE_PREFIX}rate:{key_id}:{window}", retry_after


def _redis() -> redis.Redis | None:
    global _client
    if time.monotonic() < _down_until:
        return None
    if _client is None:
        _client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=0.25, socket_connect_timeout=0.25)
    return _client


def rate_hit(*, key_id: int, plan: str) -> int | None:
    """Counts one request of the key; None if it is within the plan's limit, else the seconds to
    wait (Retry-After)."""
    global _down_until
    client = _redis()
    if client is None:
        return None
    key, retry_after = window_key(key_id)
    try:
        with client.pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.expire(key, WINDOW_SECONDS + 5)
            count, _ = pipe.execute()
    except redis.RedisError:
        logger.warning("rate limiting is off for 5 s: Redis is unavailable", exc_info=True)
        _down_until = time.monotonic() + 5
        return None
    return retry_after if count > limit_for(plan) else None


def _login_key(address: str, username: str) -> str:
    import hashlib

    digest = hashlib.sha256(f"{address}|{username.strip().lower()}".encode()).hexdigest()[:32]
    return f"{settings.SEARCH_CACHE_PREFIX}login-fail:{digest}"


def login_blocked(*, address: str, username: str) -> int | None:
    """Seconds until this username may try again from this address, or None if it may now
    (``LOGIN_FAILURES_MAX`` failures within ``LOGIN_FAILURES_WINDOW_SECONDS`` block it)."""
    global _down_until
    client = _redis()
    if client is None or not username:
        return None
    try:
        with client.pipeline(transaction=False) as pipe:
            pipe.get(_login_key(address, username))
            pipe.ttl(_login_key(address, username))
            count, ttl = pipe.execute()
    except redis.RedisError:
        _down_until = time.monotonic() + 5
        return None
    if count is not None and int(count) >= settings.LOGIN_FAILURES_MAX:
        return max(int(ttl), 1)
    return None


def login_failed(*, address: str, username: str) -> None:
    global _down_until
    client = _redis()
    if client is None or not username:
        return
    key = _login_key(address, username)
    try:
        if client.incr(key) == 1:  # the window starts at the first failure
            client.expire(key, settings.LOGIN_FAILURES_WINDOW_SECONDS)
    except redis.RedisError:
        _down_until = time.monotonic() + 5


def login_succeeded(*, address: str, username: str) -> None:
    client = _redis()
    if client is not None and username:
        try:
            client.delete(_login_key(address, username))
        except redis.RedisError:
            pass
