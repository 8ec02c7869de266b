"""Redis caches for search: query embeddings and whole result lists.

Keys carry the chatbot's ``content_version`` (bumped by ingestion and deletes), so a chatbot's
cached results stop being read the moment its content changes; old entries expire by TTL.
Redis trouble never fails a search: an error turns Redis off for a few seconds
(``tenants/redis_client.py``) and the search runs uncached.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
from django.conf import settings

from search.metrics import CACHE_EVENTS
from tenants import redis_client
from tenants.redis_client import RedisError


def _failed(error: Exception) -> None:
    CACHE_EVENTS.labels("redis", "error").inc()
    redis_client.failed(error, what="search cache: searching uncached")


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
    client = redis_client.client()
    if client is None or not keys:
        return [None] * len(keys)
    try:
        raw = client.mget(keys)
    except RedisError as error:
        _failed(error)
        return [None] * len(keys)
    out = [np.frombuffer(value, dtype=np.float32) if value else None for value in raw]
    for value in out:
        CACHE_EVENTS.labels("embedding", "hit" if value is not None else "miss").inc()
    return out


def set_vectors(items: dict[str, np.ndarray]) -> None:
    client = redis_client.client()
    if client is None or not items:
        return
    try:
        with client.pipeline(transaction=False) as pipe:
            for key, vector in items.items():
                pipe.set(key, np.asarray(vector, dtype=np.float32).tobytes(), ex=settings.SEARCH_EMBEDDING_CACHE_TTL)
            pipe.execute()
    except RedisError as error:
        _failed(error)


def get_json(key: str, cache: str, *, count_miss: bool = True):
    client = redis_client.client()
    if client is None:
        CACHE_EVENTS.labels(cache, "bypass").inc()
        return None
    try:
        raw = client.get(key)
    except RedisError as error:
        _failed(error)
        return None
    if raw is not None or count_miss:
        CACHE_EVENTS.labels(cache, "hit" if raw is not None else "miss").inc()
    return json.loads(raw) if raw is not None else None


def set_json(key: str, value, ttl: int) -> None:
    client = redis_client.client()
    if client is None:
        return
    try:
        client.set(key, json.dumps(value, default=str), ex=ttl)
    except RedisError as error:
        _failed(error)


def get_hash_fields(key: str, fields: list[str], cache: str) -> list:
    client = redis_client.client()
    if client is None or not fields:
        return [None] * len(fields)
    try:
        values = client.hmget(key, fields)
    except RedisError as error:
        _failed(error)
        return [None] * len(fields)
    for value in values:
        CACHE_EVENTS.labels(cache, "hit" if value is not None else "miss").inc()
    return values


def set_hash_fields(key: str, mapping: dict, ttl: int) -> None:
    client = redis_client.client()
    if client is None or not mapping:
        return
    try:
        with client.pipeline(transaction=False) as pipe:
            pipe.hset(key, mapping=mapping)
            pipe.expire(key, ttl)
            pipe.execute()
    except RedisError as error:
        _failed(error)


def text_stats_key(*, chatbot_id: int, content_version: int) -> str:
    return f"{settings.SEARCH_CACHE_PREFIX}text:{chatbot_id}:{content_version}"
