"""Redis caches for search: query embeddings and whole result lists.

Keys carry the chatbot's ``content_version`` (bumped by ingestion and deletes), so a chatbot's
cached results stop being read the moment its content changes; old entries expire by TTL.
Redis trouble never fails a search: an error turns the cache off for a few seconds (so a dead
Redis costs one short timeout, not one per request) and the search runs uncached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time

import numpy as np
import redis
from django.conf import settings

from search.metrics import CACHE_EVENTS

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5.0

_client: redis.Redis | None = None
_client_lock = threading.Lock()
_down_until = 0.0


def _redis() -> redis.Redis | None:
    global _client
    if time.monotonic() < _down_until:
        return None
    if _client is None:
        with _client_lock:
            if _client is None:
                _client = redis.Redis.from_url(
                    settings.REDIS_URL,
                    socket_timeout=settings.SEARCH_CACHE_TIMEOUT,
                    socket_connect_timeout=settings.SEARCH_CACHE_TIMEOUT,
                    health_check_interval=30,
                )
    return _client


def _failed(error: Exception) -> None:
    global _down_until
    _down_until = time.monotonic() + RETRY_AFTER_SECONDS
    CACHE_EVENTS.labels("redis", "error").inc()
    logger.warning("search cache unavailable, searching uncached for %ss: %s", RETRY_AFTER_SECONDS, error)


def reset() -> None:
    """Forget the client and any 'Redis is down' state (tests, settings changes)."""
    global _client, _down_until
    _client, _down_until = None, 0.0


def normalise_query(query: str) -> str:
    return " ".join(query.split()).casefold()


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def embedding_key(space_key: str, text: str) -> str:
    return f"{settings.SEARCH_CACHE_PREFIX}emb:{space_key}:{_digest(normalise_query(text))}"


def results_key(*, chatbot_id: int, content_version: int, space_id: int, parameters: dict) -> str:
    blob = json.dumps(parameters, sort_keys=True, default=str)
    return f"{settings.SEARCH_CACHE_PREFIX}res:{chatbot_id}:{content_version}:{space_id}:{_digest(blob)}"


def plan_key(*, chatbot_id: int, content_version: int, space_id: int, filters_digest: str) -> str:
    return f"{settings.SEARCH_CACHE_PREFIX}plan:{chatbot_id}:{content_version}:{space_id}:{filters_digest}"


def get_many_vectors(keys: list[str]) -> list[np.ndarray | None]:
    client = _redis()
    if client is None or not keys:
        return [None] * len(keys)
    try:
        raw = client.mget(keys)
    except redis.RedisError as error:
        _failed(error)
        return [None] * len(keys)
    out = [np.frombuffer(value, dtype=np.float32) if value else None for value in raw]
    for value in out:
        CACHE_EVENTS.labels("embedding", "hit" if value is not None else "miss").inc()
    return out


def set_vectors(items: dict[str, np.ndarray]) -> None:
    client = _redis()
    if client is None or not items:
        return
    try:
        with client.pipeline(transaction=False) as pipe:
            for key, vector in items.items():
                pipe.set(key, np.asarray(vector, dtype=np.float32).tobytes(), ex=settings.SEARCH_EMBEDDING_CACHE_TTL)
            pipe.execute()
    except redis.RedisError as error:
        _failed(error)


def get_json(key: str, cache: str, *, count_miss: bool = True):
    client = _redis()
    if client is None:
        CACHE_EVENTS.labels(cache, "bypass").inc()
        return None
    try:
        raw = client.get(key)
    except redis.RedisError as error:
        _failed(error)
        return None
    if raw is not None or count_miss:
        CACHE_EVENTS.labels(cache, "hit" if raw is not None else "miss").inc()
    return json.loads(raw) if raw is not None else None


def set_json(key: str, value, ttl: int) -> None:
    client = _redis()
    if client is None:
        return
    try:
        client.set(key, json.dumps(value, default=str), ex=ttl)
    except redis.RedisError as error:
        _failed(error)


def get_hash_fields(key: str, fields: list[str], cache: str) -> list:
    client = _redis()
    if client is None or not fields:
        return [None] * len(fields)
    try:
        values = client.hmget(key, fields)
    except redis.RedisError as error:
        _failed(error)
        return [None] * len(fields)
    for value in values:
        CACHE_EVENTS.labels(cache, "hit" if value is not None else "miss").inc()
    return values


def set_hash_fields(key: str, mapping: dict, ttl: int) -> None:
    client = _redis()
    if client is None or not mapping:
        return
    try:
        with client.pipeline(transaction=False) as pipe:
            pipe.hset(key, mapping=mapping)
            pipe.expire(key, ttl)
            pipe.execute()
    except redis.RedisError as error:
        _failed(error)


def text_stats_key(*, chatbot_id: int, content_version: int) -> str:
    return f"{settings.SEARCH_CACHE_PREFIX}text:{chatbot_id}:{content_version}"
