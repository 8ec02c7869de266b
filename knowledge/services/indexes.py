"""Per-chatbot HNSW indexes: built when a chatbot outgrows exact search."""

from __future__ import annotations

import logging
import time

from django.conf import settings

from knowledge import vectors
from knowledge.models import (
    EmbeddingSpace,
)
from tenants.scoping import cross_tenant_context, scope_connection

logger = logging.getLogger(__name__)


def vector_index_wanted(*, chatbot_id: int) -> bool:
    """Whether the chatbot has crossed the size for its own vector index without having one yet."""
    existing = vectors.chatbot_indexes()
    return any(
        count > settings.VECTOR_CHATBOT_INDEX_MIN
        and vectors.chatbot_index_name(space_id=space_id, chatbot_id=bot_id) not in existing
        for (space_id, bot_id), count in vectors.vector_counts(chatbot_id=chatbot_id).items()
    )


def vector_indexes_optimize(*, chatbot_id: int | None = None) -> dict:
    """Give every chatbot with more than ``VECTOR_CHATBOT_INDEX_MIN`` vectors in a space its own
    partial HNSW index there (smaller chatbots are searched exactly), rebuild indexes a crashed
    build left invalid, and drop indexes of chatbots that shrank below half the threshold or are
    gone. Run by beat, and for one chatbot after each document it ingests. Returns what it did."""
    with cross_tenant_context("vector-index-upkeep"):
        return _vector_indexes_optimize(chatbot_id=chatbot_id)


def _vector_indexes_optimize(*, chatbot_id: int | None) -> dict:
    threshold = settings.VECTOR_CHATBOT_INDEX_MIN
    done: dict = {"created": [], "dropped": [], "rebuilt": []}
    connection = scope_connection()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(hashtext('knowledge.vector_indexes_optimize'))")
        if not cursor.fetchone()[0]:
            return {**done, "skipped": "another optimisation is running"}
    try:
        counts = vectors.vector_counts(chatbot_id=chatbot_id)
        existing = vectors.chatbot_indexes()
        spaces = {space.pk: space for space in EmbeddingSpace.objects.filter(pk__in={s for s, _ in counts})}
        wanted = {}
        for (space_id, bot_id), count in counts.items():
            name = vectors.chatbot_index_name(space_id=space_id, chatbot_id=bot_id)
            if count > threshold or (name in existing and count >= threshold // 2):
                wanted[name] = (spaces[space_id], bot_id)
        for name, valid in existing.items():
            mine = chatbot_id is None or name.endswith(f"_c{chatbot_id}")
            if mine and (name not in wanted or not valid):
                vectors.chatbot_index_drop(name)
                (done["rebuilt"] if name in wanted else done["dropped"]).append(name)
        for name, (space, bot_id) in wanted.items():
            if name not in existing or not existing[name]:
                began = time.monotonic()
                vectors.chatbot_index_create(space=space, chatbot_id=bot_id)
                logger.info("vector index %s built in %.1f s", name, time.monotonic() - began)
                if name not in done["rebuilt"]:
                    done["created"].append(name)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(hashtext('knowledge.vector_indexes_optimize'))")
    return done
