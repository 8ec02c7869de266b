"""Per-API-key request limits by tenant plan, counted in Redis (fixed one-minute windows).

``API_RATE_LIMITS`` maps a plan to requests per minute per key. A key over its limit gets 429
with ``Retry-After`` (seconds to the next window). Counting never blocks a request when Redis is
unavailable: the limit fails open for a few seconds and a warning is logged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.conf import settings

from tenants import redis_client
from tenants.errors import Throttled
from tenants.redis_client import RedisError

WINDOW_SECONDS = 60
_now = time.time  # tests pin the clock


def limit_for(plan: str) -> int:
    limits = settings.API_RATE_LIMITS
    return int(limits.get(plan, limits["standard"]))


def window_key(key_id: int, now: float | None = None) -> tuple[str, int]:
    """The counter of the current window and the seconds until the next one starts."""
    now = _now() if now is None else now
    window = int(now // WINDOW_SECONDS)
    retry_after = max(1, int((window + 1) * WINDOW_SECONDS - now + 0.999))
    return f"{settings.SEARCH_CACHE_PREFIX}rate:{key_id}:{window}", retry_after


@dataclass(frozen=True)
class RateCheck:
    """One request of a key, not yet counted: its window's counter, the plan's limit, the
    counter's lifetime and the Retry-After to answer when over. ``rate_hit`` counts it; the
    search pipeline counts it in the same Redis round trip as its cache read
    (``search/logbuffer.py``) — the same counter either way."""

    key: str
    limit: int
    ttl: int
    retry_after: int


def rate_check(*, key_id: int, plan: str) -> RateCheck:
    key, retry_after = window_key(key_id)
    return RateCheck(key=key, limit=limit_for(plan), ttl=WINDOW_SECONDS + 5, retry_after=retry_after)


def rate_hit(check: RateCheck) -> int | None:
    """Counts one request; None if it is within the plan's limit, else the seconds to wait
    (Retry-After)."""
    client = redis_client.client()
    if client is None:
        return None
    try:
        with client.pipeline(transaction=False) as pipe:
            pipe.incr(check.key)
            pipe.expire(check.key, check.ttl)
            count, _ = pipe.execute()
    except RedisError as error:
        redis_client.failed(error, what="rate limits not enforced")
        return None
    return check.retry_after if count > check.limit else None


def principal_throttle(principal) -> None:
    """Counts one request of a key principal (``tenants.principal``); ``Throttled`` when over the
    plan's limit. Dashboard members are not limited here."""
    if principal.api_key_id is None:
        return
    retry_after = rate_hit(rate_check(key_id=principal.api_key_id, plan=principal.plan))
    if retry_after is not None:
        raise Throttled(retry_after)


# --- Logins ---------------------------------------------------------------------------------
#
# Two limits, neither of which locks the rightful owner out:
# - per address: more than LOGIN_ADDRESS_FAILURES_MAX failures (any usernames) within
#   LOGIN_FAILURES_WINDOW_SECONDS refuse that address until the window ends (password spraying);
# - per account: after LOGIN_ACCOUNT_FREE_FAILURES failures of one username (from any address),
#   each further attempt must wait 2, 4, 8, ... seconds (at most LOGIN_ACCOUNT_MAX_DELAY_SECONDS)
#   after the previous failure. A browser that has logged in as that user before carries a signed
#   device cookie and is counted on its own instead, so an attacker's failures elsewhere do not
#   delay it (OWASP's "device cookie" scheme).
# Failures are counted in Redis; with Redis down nothing is limited (and a warning is logged).


def _digest(*parts: str) -> str:
    import hashlib

    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def _normal(username: str) -> str:
    return username.strip().lower()


def _keys(address: str, username: str, device: str | None) -> dict[str, str]:
    prefix = f"{settings.SEARCH_CACHE_PREFIX}login:"
    keys = {"address": prefix + "addr:" + _digest(address)}
    keys["account"] = prefix + ("dev:" + _digest(device) if device else "acct:" + _digest(_normal(username)))
    return keys


def _account_wait(failures: int, last: float, now: float) -> int | None:
    free = settings.LOGIN_ACCOUNT_FREE_FAILURES
    if failures < free:
        return None
    delay = min(2 ** (failures - free + 1), settings.LOGIN_ACCOUNT_MAX_DELAY_SECONDS)
    remaining = last + delay - now
    return max(1, int(remaining + 0.999)) if remaining > 0 else None


def login_wait(*, address: str, username: str, device: str | None = None) -> int | None:
    """Seconds before this attempt may be tried, or None if it may be tried now."""
    client = redis_client.client()
    if client is None or not username:
        return None
    keys = _keys(address, username, device)
    try:
        with client.pipeline(transaction=False) as pipe:
            pipe.get(keys["address"])
            pipe.ttl(keys["address"])
            pipe.hmget(keys["account"], "failures", "last")
            address_failures, address_ttl, (failures, last) = pipe.execute()
    except RedisError as error:
        redis_client.failed(error, what="login throttling")
        return None
    if address_failures is not None and int(address_failures) >= settings.LOGIN_ADDRESS_FAILURES_MAX:
        return max(int(address_ttl), 1)
    if failures is None:
        return None
    return _account_wait(int(failures), float(last or 0), _now())


def login_failed(*, address: str, username: str, device: str | None = None) -> None:
    client = redis_client.client()
    if client is None or not username:
        return
    keys = _keys(address, username, device)
    window = settings.LOGIN_FAILURES_WINDOW_SECONDS
    try:
        with client.pipeline(transaction=False) as pipe:
            pipe.incr(keys["address"])
            pipe.ttl(keys["address"])
            pipe.hincrby(keys["account"], "failures", 1)
            pipe.hset(keys["account"], "last", _now())
            pipe.expire(keys["account"], window)  # an account's count ends a window after its last failure
            _, address_ttl, *_ = pipe.execute()
        if address_ttl < 0:  # the address's window starts at its first failure
            client.expire(keys["address"], window)
    except RedisError as error:
        redis_client.failed(error, what="login throttling")


def login_succeeded(*, address: str, username: str, device: str | None = None) -> None:
    client = redis_client.client()
    if client is None or not username:
        return
    try:  # a known device clears its own count only: the account's stays for attempts without one
        client.delete(_keys(address, username, device)["account"])
    except RedisError:
        pass


def login_throttled_first(*, address: str, username: str) -> bool:
    """Whether this is the first refused attempt for the account in its current throttle (the
    audit log records that one, and counts the rest here instead of writing a row each)."""
    client = redis_client.client()
    if client is None:
        return True
    key = f"{settings.SEARCH_CACHE_PREFIX}login:throttled:" + _digest(_normal(username), address)
    try:
        first = client.set(key, 1, nx=True, ex=settings.LOGIN_FAILURES_WINDOW_SECONDS)
        if not first:
            client.incr(key)
        return bool(first)
    except RedisError:
        return True
